"""A run in a few lines, for CI job pages: Markdown (GitHub's job summary, GitLab's log) and
dotenv (``$GITHUB_OUTPUT``, GitLab's ``artifacts:reports:dotenv``).

A run record is input like any other: names and values from it are escaped (Markdown) or
reduced to a safe alphabet (dotenv), so a hostile record cannot add lines, outputs or HTML.
"""

from __future__ import annotations

import re
from typing import Any

from . import _paths, ledger
from .errors import MlopsKitError

_DOTENV_NAME = re.compile(r"[^A-Z0-9_]")
_DOTENV_VALUE = re.compile(r"[^A-Za-z0-9._:/+@-]")


def summarize(run_id: str | None = None) -> dict[str, Any]:
    """The run ``run_id`` (default: the newest) as ``{"id", "status", "run_dir", "metrics",
    "gate", "gate_checks", "stages", "error"}``; ``gate`` is ``"passed"``, ``"failed"`` or
    ``"not evaluated"``."""
    if run_id is None:
        records = ledger.list_runs()
        if not records:
            raise MlopsKitError(f"No runs in {_paths.runs_dir()}: expected at least one run; found none.",
                                hint="`mlops-kit run` makes one.")
        record = records[0]
    else:
        record = ledger.read_run(run_id)
    metrics = dict(record.get("metrics") or {})
    passed = metrics.pop("gate_passed", None)
    details = ledger.read_metrics(record) or {}
    return {
        "id": record["id"],
        "status": record.get("status", "unknown"),
        "run_dir": _relative_run_dir(record["id"]),
        "metrics": metrics,
        "gate": "not evaluated" if passed is None else ("passed" if passed else "failed"),
        "gate_checks": (details.get("gate") or {}).get("checks", []),
        "stages": {name: info.get("status") for name, info in record.get("stages", {}).items()},
        "error": record.get("error"),
    }


def _relative_run_dir(run_id: str) -> str:
    folder = _paths.runs_dir() / run_id
    try:
        return folder.relative_to(_paths.project_dir()).as_posix()
    except ValueError:
        return folder.as_posix()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    text = " ".join(str(value).split())
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("`", "\\`")):
        text = text.replace(char, escaped)
    return text


def render_markdown(summary: dict[str, Any]) -> str:
    """Run id and status, the stages, the metrics and the quality gate as Markdown tables."""
    lines = [f"### mlops-kit run `{_cell(summary['id'])}`: {_cell(summary['status'])}", "",
             "| stage | status |", "| --- | --- |"]
    lines += [f"| {_cell(name)} | {_cell(status)} |" for name, status in summary["stages"].items()]
    if summary["metrics"]:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in summary["metrics"].items()]
    lines += ["", f"**Quality gate: {summary['gate']}**"]
    if summary["gate_checks"]:
        lines += ["", "| gate check | value | threshold | result |", "| --- | --- | --- | --- |"]
        lines += [f"| {_cell(c.get('metric'))} | {_cell(c.get('value'))} | {_cell(c.get('threshold'))} | "
                  f"{'pass' if c.get('passed') else 'FAIL'} |" for c in summary["gate_checks"]]
    error = summary.get("error")
    if error:
        lines += ["", f"Failed in stage {_cell(error.get('stage'))}: {_cell(error.get('exception'))}: "
                      f"{_cell(error.get('message'))}"]
    lines += ["", f"Folder: `{_cell(summary['run_dir'])}` (executed notebooks, HTML reports, artifacts)"]
    return "\n".join(lines) + "\n"


def render_dotenv(summary: dict[str, Any]) -> str:
    """``MLOPS_RUN_ID=...`` lines: run id, status, folder, gate and each numeric metric."""
    pairs = {"MLOPS_RUN_ID": summary["id"], "MLOPS_RUN_STATUS": summary["status"],
             "MLOPS_RUN_DIR": summary["run_dir"], "MLOPS_GATE": summary["gate"].replace(" ", "_")}
    for name, value in summary["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            pairs["MLOPS_METRIC_" + _DOTENV_NAME.sub("_", str(name).upper())] = repr(float(value))
    return "".join(f"{name}={_DOTENV_VALUE.sub('_', str(value))}\n" for name, value in pairs.items())
