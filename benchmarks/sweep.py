"""Benchmark: a local sweep of 8 trials (--jobs 2) against the same 8 runs one after another.

    python benchmarks/sweep.py [--repeat 3] [--trials 8] [--jobs 2]

Same work on both sides: one data run is made first; the sweep's data stage is reused from
it (the cache), and each sequential run is `mlops-kit run --stages train,evaluate
--reuse-from DATA --set train.params.C=...`, a fresh process each. Every round uses C values
of its own, so no trial is reused from an earlier one. Rounds are interleaved (sweep,
sequential, sweep, ...) and the figure is the ratio of the medians (goal: <= 0.6x).

Per-trial overhead beyond its fit: each trial's recorded ``overhead.seconds`` (its run's
wall time outside its stages' notebooks: planning, hashing, record, kernel start, waiting for
its reports), the median over trials (goal: <= 1 s). The first ``jobs`` trials also wait for
the sweep's one kernel parent to import pandas and scikit-learn ("kernel start"): a cost of
the sweep, not of a trial, reported apart.
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

REPO = Path(__file__).resolve().parent.parent
MLOPS_KIT = [sys.executable, "-m", "mlops_kit.cli"]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds


def values(round_: int, trials: int) -> list[float]:
    return [round(0.05 * (k + 1) + 0.001 * round_, 4) for k in range(trials)]


def newest_sweep(runs: Path) -> dict:
    return json.loads(max(runs.glob("sweeps/*/sweep.json"), key=lambda p: p.parent.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlops-kit-bench-sweep-"))
    runs = work / "runs"
    env = {**os.environ, "MLOPS_KIT_RUNS_DIR": str(runs), "MLOPS_KIT_PROJECT_DIR": str(REPO)}
    timed([*MLOPS_KIT, "run", "--stages", "data"], env)
    (data_run,) = [p.parent.name for p in runs.glob("*/run.json")]

    swept, sequential, recorded, first_kernel = [], [], [], []
    for index in range(args.repeat):
        grid = "train.params.C=[" + ", ".join(map(str, values(2 * index, args.trials))) + "]"
        wall = timed([*MLOPS_KIT, "sweep", "--grid", grid, "--jobs", str(args.jobs), "--no-report"], env)
        swept.append(wall)
        sweep = newest_sweep(runs)
        assert all(t["status"] == "succeeded" for t in sweep["trials"]), sweep
        trial_records = [json.loads((runs / t["run"] / "run.json").read_text()) for t in sweep["trials"]]
        kernel = [r["overhead"]["phases"].get("kernel start", 0.0) for r in trial_records]
        first_kernel.append(max(kernel[:args.jobs]))  # the trials started first wait for the imports
        recorded.extend(r["overhead"]["seconds"] - (k if position < args.jobs else 0.0)
                        for position, (r, k) in enumerate(zip(trial_records, kernel)))

        started = time.perf_counter()
        for c in values(2 * index + 1, args.trials):
            timed([*MLOPS_KIT, "run", "--stages", "train,evaluate", "--reuse-from", data_run,
                   "--set", f"train.params.C={c}"], env)
        sequential.append(time.perf_counter() - started)
        print(f"round {index + 1}: sweep {wall:.2f} s, sequential {sequential[-1]:.2f} s", flush=True)

    sweep_median, sequential_median = statistics.median(swept), statistics.median(sequential)
    print(f"sweep of {args.trials} trials, --jobs {args.jobs}: median {sweep_median:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in swept)})")
    print(f"the same {args.trials} runs one after another:  median {sequential_median:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in sequential)})")
    print(f"ratio sweep / sequential: {sweep_median / sequential_median:.2f}x   (goal: <= 0.6x)")
    print(f"per-trial overhead beyond its stages: median {statistics.median(recorded):.2f} s, "
          f"90th percentile {statistics.quantiles(recorded, n=10)[-1]:.2f} s   (goal: <= 1 s)")
    print(f"once per sweep, the first trials waiting for the kernel parent's imports: median "
          f"{statistics.median(first_kernel):.2f} s ({', '.join(f'{t:.2f}' for t in first_kernel)})")
    print(f"(runs in {work})")


if __name__ == "__main__":
    main()
