"""Comparing runs: the parameters that differ and the metrics side by side, as a table
and as a plot (a PNG from the CLI, inline in notebooks and panels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ledger
from .errors import MlopsKitError


def compare_runs(run_ids: list[str]) -> dict[str, Any]:
    """``{"runs": [...], "params": {dotted key: [value per run]}, "metrics": {name: [...]}}``;
    ``params`` holds only the keys whose values differ."""
    if len(run_ids) < 2:
        raise MlopsKitError(f"Comparing needs at least two runs. Got {len(run_ids)} instead.")
    records = [ledger.read_run(run_id) for run_id in run_ids]
    flat = [_flatten(r.get("params") or {}) for r in records]
    keys = sorted(set().union(*flat))
    differing = {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}
    metric_names = sorted({m for r in records for m in (r.get("metrics") or {}) if m != "gate_passed"})
    metrics = {m: [(r.get("metrics") or {}).get(m) for r in records] for m in metric_names}
    return {
        "runs": [{"id": r["id"], "status": r["status"], "created": r.get("created"),
                  "champion": r.get("champion", False),
                  "gate_passed": (r.get("metrics") or {}).get("gate_passed")} for r in records],
        "params": differing,
        "metrics": metrics,
    }


def _flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys down to the leaves: ``train.params.C``."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def comparison_frame(result: dict):
    """Parameters that differ, then metrics: one column per run."""
    import pandas as pd

    columns = [r["id"] + (" *" if r["champion"] else "") for r in result["runs"]]
    rows = {f"param {k}": v for k, v in result["params"].items()}
    rows.update({f"metric {k}": v for k, v in result["metrics"].items()})
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def plot_comparison(result: dict, path: str | Path | None = None):
    """Grouped bars: each metric, one bar per run. Saved as PNG when ``path`` is given."""
    from ._plots import pyplot, save_figure

    plt = pyplot()
    names = list(result["metrics"])
    runs = [r["id"] for r in result["runs"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * max(1, len(runs) / 2)), 4))
    width = 0.8 / max(len(runs), 1)
    for index, run_id in enumerate(runs):
        values = [result["metrics"][m][index] or 0 for m in names]
        ax.bar([i + index * width for i in range(len(names))], values, width, label=run_id)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(names))], names, rotation=20)
    ax.set(title="Metrics by run", ylabel="value")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if path is not None:
        save_figure(fig, Path(path))
    return fig
