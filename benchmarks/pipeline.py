"""Benchmark: `mlops-kit run` on the default against the same work in one plain process.

    python benchmarks/pipeline.py [--repeat 5] [--warm]

Both run as fresh processes, interleaved (A B A B ...) so that a noisy neighbour hits both
alike; the figure that matters is the ratio of the medians. Also measured: a rerun with
nothing changed, and a rerun after changing only train.params (stage reuse, when the
ledger supports it). Every run is cold: its kernels' parent imports the libraries.

``--warm`` measures the same three again with ``MLOPS_KIT_WARM_MINUTES`` set: each run's
kernels are forked from the kernels' parent that the previous run left (its imports done),
against the same fresh plain process (which imports everything each time); the warm parent
is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _overhead import breakdown_line, newest_overhead

REPO = Path(__file__).resolve().parent.parent
MLOPS_KIT = [sys.executable, "-m", "mlops_kit.cli"]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds


def stages_of_last_run(runs_dir: Path) -> dict:
    newest = max(runs_dir.glob("*/run.json"), key=lambda p: p.parent.name)
    record = json.loads(newest.read_text())
    return {name: info["status"] for name, info in record["stages"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm", action="store_true", help="also with a warm kernels' parent (MLOPS_KIT_WARM_MINUTES)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlops-kit-bench-"))
    env = {**os.environ, "MLOPS_KIT_RUNS_DIR": str(work / "runs"), "MLOPS_KIT_PROJECT_DIR": str(REPO)}
    env.pop("MLOPS_KIT_WARM_MINUTES", None)
    print("cold: each run's kernels' parent imports the libraries")
    measure(args.repeat, work, env)
    if args.warm:
        runtime = Path(tempfile.mkdtemp(prefix="kw-", dir="/tmp"))  # short: a unix socket's path
        warm_env = {**env, "MLOPS_KIT_WARM_MINUTES": "10", "XDG_RUNTIME_DIR": str(runtime),
                    "MLOPS_KIT_RUNS_DIR": str(work / "warm-runs")}
        try:
            timed([*MLOPS_KIT, "run", "--no-cache"], warm_env)  # cold: leaves the warm parent
            print("\nwarm: each run's kernels forked from the parent the previous run left (MLOPS_KIT_WARM_MINUTES), "
                  "against the same plain process, a fresh one each round (it imports everything each time)")
            measure(args.repeat, work, warm_env)
        finally:
            from mlops_kit.execution.local import stop_warm_parents

            stop_warm_parents(runtime / f"mlops-kit-warm-{os.getuid()}")


def measure(repeat: int, work: Path, env: dict) -> None:
    """Full runs and the plain process in turn, then the reruns; prints the figures."""
    runs = Path(env["MLOPS_KIT_RUNS_DIR"])

    pipeline, plain, overheads = [], [], []
    timed([sys.executable, str(REPO / "benchmarks" / "_plain_pipeline.py"), str(work / "warmup")], env)
    for index in range(repeat):
        pipeline.append(timed([*MLOPS_KIT, "run", "--no-cache"] if _has_cache_flag() else [*MLOPS_KIT, "run"], env))
        overheads.append(newest_overhead(runs))
        plain.append(timed([sys.executable, str(REPO / "benchmarks" / "_plain_pipeline.py"),
                            str(work / f"plain-{index}")], env))
    median_pipeline, median_plain = statistics.median(pipeline), statistics.median(plain)
    print(f"mlops-kit run (3 stages, papermill, fresh kernels, reports): median {median_pipeline:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in pipeline)})")
    print(f"plain process, same work:                                   median {median_plain:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in plain)})")
    print(f"ratio pipeline / plain: {median_pipeline / median_plain:.2f}x   (goal: <= 1.25x)")
    print("  full run " + breakdown_line(overheads, pipeline))

    if _has_cache_flag():
        unchanged, changed, unchanged_overheads, changed_overheads = [], [], [], []
        for _ in range(repeat):
            unchanged.append(timed([*MLOPS_KIT, "run"], env))
            reused = stages_of_last_run(runs)
            unchanged_overheads.append(newest_overhead(runs))
            changed.append(timed([*MLOPS_KIT, "run", "--set", f"train.params.C={0.5 + len(changed) / 10}"], env))
            partial = stages_of_last_run(runs)
            changed_overheads.append(newest_overhead(runs))
        print(f"rerun, nothing changed: median {statistics.median(unchanged):.2f} s  stages: {reused}  "
              "(goal: <= 0.5 s)")
        print("  " + breakdown_line(unchanged_overheads, unchanged))
        print(f"rerun, train.params changed: median {statistics.median(changed):.2f} s  stages: {partial}  "
              f"= {statistics.median(changed) / median_pipeline:.2f}x a full run (goal: <= 0.6x)")
        print("  " + breakdown_line(changed_overheads, changed))


def _has_cache_flag() -> bool:
    result = subprocess.run([*MLOPS_KIT, "run", "--help"], capture_output=True, text=True, cwd=REPO)
    return "--no-cache" in result.stdout


if __name__ == "__main__":
    main()
