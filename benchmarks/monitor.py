"""Benchmark: the monitor's report core against Evidently's data-drift preset, on the same data.

    .venv/bin/python benchmarks/monitor.py [--rows 10000 100000 1000000] [--rounds 3] [--timeout 900]

Evidently lives only in the benchmark's own environment (never in the kit's), made once with

    python3 -m venv .bench-venv && .bench-venv/bin/pip install evidently==0.7.23 'pandas<2.3'

(``--evidently-python PATH`` names another interpreter that has it).

The data: benchmarks/monitor_core.py's table (20 numeric features with 5 % missing, 8
categorical ones of 3 to 5,000 levels as text, 2 yes/no booleans) plus the model's predicted
class, a reference and a current table of ``rows`` rows each, the current one with two features
shifted. It is generated once per size and written as plain numpy arrays (no pickle), which
each measured process loads into a DataFrame (strings as object columns, as a client's JSON
gives them).

Measured, each in a fresh process: the kit — ``monitor.build_profile`` of the reference
(with its predictions) then ``monitor.check_window`` of the current table (binning, PSI, the
permutation-calibrated tests, data quality, the verdict); Evidently — ``Report([DataDriftPreset()])
.run(current, reference)`` with the columns' types declared, and the snapshot's results
(``dict()``; no HTML). Time: wall clock around that work alone (imports and loading excluded).
Memory: the process' peak RSS (``ru_maxrss``) during that work, the tool's modules and the two
tables included ("loaded": the RSS once the tool is imported and the tables are loaded; the
high-water mark is reset there, so loading's transient copies do not count). Rounds alternate which tool goes first; medians
are printed. A run that exceeds ``--timeout`` is reported as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
BENCH_PYTHON = REPO / ".bench-venv" / "bin" / "python"
PREDICTION = "prediction"
SHIFTED = ("x0", "c3")


# --- the data (driver side: the kit's environment) ---------------------------------------

def write_data(rows: int, folder: Path) -> Path:
    """Reference and current tables as .npz of plain arrays (strings as fixed-width unicode)."""
    sys.path.insert(0, str(HERE))
    from monitor_core import make_frame

    path = folder / f"monitor-{rows}.npz"
    if path.exists():
        return path
    arrays: dict[str, np.ndarray] = {}
    for part, seed in (("reference", 0), ("current", 1)):
        frame = make_frame(rows, seed=seed)
        if part == "current":  # as monitor_core: x0 moved by 0.1 sd, a new category in 10 % of c3
            frame["x0"] += 0.1
            frame["c3"] = frame["c3"].where(np.arange(rows) % 10 != 0, "c3_new")
        frame[PREDICTION] = np.where(frame["x1"].fillna(0) > 1, "yes", "no")
        for name in frame.columns:
            values = frame[name].to_numpy()
            arrays[f"{part}/{name}"] = values.astype(str) if values.dtype == object else values
    np.savez(path, **arrays)
    return path


def load_data(path: str):
    import pandas as pd

    frames: dict[str, dict] = {"reference": {}, "current": {}}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            part, name = key.split("/", 1)
            values = data[key]
            frames[part][name] = values.astype(object) if values.dtype.kind == "U" else values
    return pd.DataFrame(frames["reference"]), pd.DataFrame(frames["current"])


def kinds(columns) -> dict[str, str]:
    return {n: "numeric" if n.startswith("x") else "boolean" if n.startswith("b") else "categorical"
            for n in columns if n != PREDICTION}


# --- the measured work (each in a fresh process) -------------------------------------------

def run_kit(reference, current) -> list[str]:
    from mlops_kit import monitor  # imported before the clock starts (see worker)

    schema = {"version": 2, "task": "classification", "target": "label", "target_dtype": "int64",
              "rows": len(reference),
              "features": [{"name": n, "kind": k, "dtype": str(reference[n].dtype), "nullable": True}
                           for n, k in kinds(reference.columns).items()]}
    features = [n for n in reference.columns if n != PREDICTION]
    profile = monitor.build_profile(reference[features], schema, predictions=reference[PREDICTION].to_numpy())
    verdict = monitor.check_window(profile, current[features], predictions=current[PREDICTION].to_numpy())
    return sorted(verdict.drifted)


def run_evidently(reference, current) -> list[str]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    types = kinds(reference.columns)
    definition = DataDefinition(numerical_columns=[n for n, k in types.items() if k == "numeric"],
                                categorical_columns=[n for n, k in types.items() if k != "numeric"] + [PREDICTION])
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                               Dataset.from_pandas(reference, data_definition=definition))
    results = snapshot.dict()
    (count,) = [m["value"]["count"] for m in results["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount")]
    drifted = []
    for metric in results["metrics"]:  # ValueDrift(column=..): value = the score; its test says drift
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            score, threshold = metric["value"], config.get("threshold")
            method = str(config.get("method", ""))
            # p-value tests drift below the threshold; distances at or above it
            moved = score < threshold if "p_value" in method else score >= threshold
            if moved:
                drifted.append(config["column"])
    assert len(drifted) == count, (drifted, count)  # read as Evidently counts them
    return sorted(drifted)


def worker(tool: str, path: str) -> None:
    if tool == "kit":  # the modules the work uses, imported before the clock as Evidently's are
        import scipy.special  # noqa: F401 - imported by the drift tests' power function on first use

        from mlops_kit import monitor
        monitor.build_profile, monitor.check_window  # noqa: B018 - the package's lazy modules, loaded
    else:
        import evidently.presets  # noqa: F401
    reference, current = load_data(path)
    gc.collect()
    loaded = _rss_kib()
    # the peak from here on: loading's transient copies must not hide the work's own peak
    # (writing 5 to clear_refs resets the high-water mark that ru_maxrss reports; Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    drifted = (run_kit if tool == "kit" else run_evidently)(reference, current)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "loaded_mib": loaded / 1024,
                      "drifted": drifted}))


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


# --- the driver ----------------------------------------------------------------------------

def measure(tool: str, path: Path, python: Path, timeout: float) -> dict | None:
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    try:
        done = subprocess.run([str(python), __file__, "--worker", tool, str(path)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise SystemExit(f"{tool} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measured process")
    parser.add_argument("--evidently-python", type=Path, default=BENCH_PYTHON)
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not args.evidently_python.exists():
        raise SystemExit(f"No Python with Evidently at {args.evidently_python}: make it with\n"
                         f"  python3 -m venv .bench-venv && .bench-venv/bin/pip install evidently==0.7.23 'pandas<2.3'")
    pythons = {"kit": Path(sys.executable), "evidently": args.evidently_python}
    print(f"{'rows':>9} {'tool':<10} {'seconds':>9} {'peak MiB':>9} {'loaded MiB':>10}  drifted (of 30 + prediction)")
    with tempfile.TemporaryDirectory(prefix="mlops-kit-bench-monitor-") as tmp:
        for rows in args.rows:
            path = write_data(rows, Path(tmp))
            runs: dict[str, list[dict | None]] = {"kit": [], "evidently": []}
            for round_ in range(args.rounds):
                for tool in (("kit", "evidently") if round_ % 2 == 0 else ("evidently", "kit")):
                    runs[tool].append(measure(tool, path, pythons[tool], args.timeout))
            medians = {}
            for tool, results in runs.items():
                done = [r for r in results if r is not None]
                if len(done) < len(results):
                    print(f"{rows:>9,} {tool:<10} > {args.timeout:.0f} s in {len(results) - len(done)} of "
                          f"{len(results)} rounds")
                if not done:
                    continue
                medians[tool] = {k: statistics.median(r[k] for r in done) for k in ("seconds", "peak_mib", "loaded_mib")}
                m = medians[tool]
                print(f"{rows:>9,} {tool:<10} {m['seconds']:9.2f} {m['peak_mib']:9.0f} {m['loaded_mib']:10.0f}  "
                      f"{', '.join(done[0]['drifted']) or '-'}  ({len(done)} rounds)")
            if len(medians) == 2:
                kit, ev = medians["kit"], medians["evidently"]
                print(f"{rows:>9,} {'ratio':<10} {ev['seconds'] / kit['seconds']:8.1f}x faster, peak memory "
                      f"{kit['peak_mib'] / ev['peak_mib']:.2f}x Evidently's (above the loaded tables: "
                      f"{(kit['peak_mib'] - kit['loaded_mib']) / max(ev['peak_mib'] - ev['loaded_mib'], 1):.2f}x)")
            os.unlink(path)


if __name__ == "__main__":
    main()
