"""Benchmark: `mlops-kit run` (data, train, evaluate) on large generated tables against a
plain pandas + scikit-learn script doing the same work (read, split, fit, score).

    python benchmarks/scale.py [--rows 100000 300000 1000000] [--models logistic_regression hist_gradient_boosting]
                               [--repeat 3]

The table is tests/_datagen.py's (30 feature columns: numbers, categories one of which has
5,000 levels, a date, an ID, yes/no text, 5 % missing, a 1:20 imbalance), written as CSV.
For each size and model both run as fresh processes, one after the other (``--repeat N``: N
pairs, kit first and plain first in turn, medians printed; one pair's ratio swings by 0.2 or
more on a shared machine); measured: wall
time and the peak resident memory of the whole process tree (the CLI, the kernels' parent,
the kernels), sampled every 50 ms from /proc (PSS, which costs the kernel a walk of every page
table of the tree, every 0.5 s: sampled every 50 ms it slowed the kit's run by a quarter, the
kernels' page faults and the tree walk contending, and the plain script's not at all). Printed: the figures, the ratios kit / plain,
the table's size in memory (as the kit holds it), the kit's seconds per stage (run.json) and
outside them, and seconds per 100k rows (linearity: also the slope between two sizes, the
cost per row once the fixed cost of kernels, imports and reports is set aside).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
PAGE = os.sysconf("SC_PAGE_SIZE")


def _pss(pid: int) -> int:
    """Proportional set size: a page shared by n processes (the forked kernels share their
    parent's imports) counts 1/n in each, so the sum over a tree is the memory it uses."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


#: seconds between two samples of RSS (cheap: /proc/PID/stat) and of PSS (/proc/PID/smaps_rollup)
RSS_EVERY, PSS_EVERY = 0.05, 0.5


def _tree_rss(root: int, pss: bool = True) -> tuple[int, int]:
    """(RSS summed, PSS summed, or 0 when not ``pss``) over the process tree of ``root``."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # ppid
        rss[pid] = int(fields[21]) * PAGE
    total, proportional, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        proportional += _pss(pid) if pss else 0
        stack.extend(children.get(pid, []))
    return total, proportional


def measure(command: list[str], env: dict) -> tuple[float, int, int]:
    """Wall seconds, peak RSS and peak PSS (bytes) of the process tree of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    peak = peak_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        last_pss = 0.0
        while not done.is_set():
            with_pss = time.perf_counter() - last_pss >= PSS_EVERY
            rss, pss = _tree_rss(process.pid, pss=with_pss)
            last_pss = time.perf_counter() if with_pss else last_pss
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            done.wait(RSS_EVERY)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stdout}\n{stderr}")
    return seconds, peak, peak_pss


def stage_seconds(runs: Path) -> dict[str, float]:
    """The newest run's seconds per stage (run.json), for where the kit's time goes."""
    import json

    newest = max(runs.glob("*/run.json"), key=lambda p: p.parent.name)
    record = json.loads(newest.read_text())
    return {name: info.get("seconds") or 0.0 for name, info in record["stages"].items()}


def table_bytes(path: Path) -> tuple[int, int]:
    """The table's bytes in memory as the kit holds it (text with few values as categories),
    and as pandas reads it (``read_csv``, text as Python strings): the plain script's."""
    import pandas as pd

    from mlops_kit import data

    frame = data.load_dataset(str(path), "label").frame
    kit = int(frame.memory_usage(deep=True).sum())
    del frame
    return kit, int(pd.read_csv(path, engine="pyarrow").memory_usage(deep=True).sum())


def _medians(results: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    """Each figure's median over the repetitions."""
    return tuple(statistics.median(figures) for figures in zip(*results))  # type: ignore[return-value]


def main() -> None:
    from _datagen import write_table
    from _overhead import breakdown_line, newest_overhead

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--models", nargs="+", default=["logistic_regression", "hist_gradient_boosting"])
    parser.add_argument("--repeat", type=int, default=1,
                        help="kit/plain pairs per size and model, in alternating order; medians are printed "
                             "(one pair's ratio swings by +-0.2 or more on a shared machine: use 3 or 5)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1. Got {args.repeat} instead.")
    work = Path(tempfile.mkdtemp(prefix="mlops-kit-scale-"))
    env = {**os.environ, "MLOPS_KIT_RUNS_DIR": str(work / "runs"), "MLOPS_KIT_PROJECT_DIR": str(REPO),
           "PYTHONPATH": str(REPO)}
    rows_out = []
    for rows in args.rows:
        path = write_table(rows, work / f"table-{rows}.csv", seed=0)
        in_memory, as_pandas_reads = table_bytes(path)
        for model in args.models:
            kit_command = [sys.executable, "-m", "mlops_kit.cli", "run", "--no-cache", "--set", f"data.source={path}",
                           "--set", "data.target=label", "--set", f"train.model={model}", "--set", "train.cv_folds=0"]
            plain_command = [sys.executable, str(REPO / "benchmarks" / "_plain_scale.py"), str(path), model]
            kits, plains, stage_runs, overheads = [], [], [], []
            for index in range(args.repeat):  # kit first, then plain first, ...: drift weighs on both
                if index % 2 == 0:
                    kits.append(measure(kit_command, env))
                    stage_runs.append(stage_seconds(work / "runs"))
                    overheads.append(newest_overhead(work / "runs"))
                    plains.append(measure(plain_command, env))
                else:
                    plains.append(measure(plain_command, env))
                    kits.append(measure(kit_command, env))
                    stage_runs.append(stage_seconds(work / "runs"))
                    overheads.append(newest_overhead(work / "runs"))
            if args.repeat > 1:
                print(f"{rows:>9,} rows {model:<24} time ratio of each pair: "
                      + ", ".join(f"x{k[0] / p[0]:.2f} ({k[0]:.1f} s / {p[0]:.1f} s)" for k, p in zip(kits, plains)),
                      flush=True)
            kit, plain = _medians(kits), _medians(plains)
            stages = {name: statistics.median(run[name] for run in stage_runs) for name in stage_runs[0]}
            rows_out.append((rows, model, kit, plain, in_memory, path.stat().st_size))
            ratio = statistics.median(k[0] / p[0] for k, p in zip(kits, plains))
            print(f"{rows:>9,} rows {model:<24} {'medians: ' if args.repeat > 1 else ''}kit {kit[0]:7.1f} s {kit[1] / 2**20:7.0f} MiB | plain {plain[0]:7.1f} s "
                  f"{plain[1] / 2**20:7.0f} MiB | time x{ratio:.2f} memory (RSS) x{kit[1] / plain[1]:.2f} "
                  f"(PSS: kit {kit[2] / 2**20:.0f} MiB, plain {plain[2] / 2**20:.0f} MiB, x{kit[2] / plain[2]:.2f}) | "
                  f"table {in_memory / 2**20:.0f} MiB in memory (pandas' read_csv: {as_pandas_reads / 2**20:.0f} MiB; "
                  f"CSV {path.stat().st_size / 2**20:.0f} MiB), "
                  f"kit PSS/table x{kit[2] / in_memory:.2f}\n    kit stages: "
                  + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
                  + f"; outside the stages (start, checks, kernels, reports) {kit[0] - sum(stages.values()):.1f} s"
                  + "\n    " + breakdown_line(overheads, [k[0] for k in kits]),
                  flush=True)
        path.unlink()
    print("\nseconds per 100k rows (kit): " + ", ".join(
        f"{model} {rows:,}: {kit[0] / rows * 1e5:.1f}" for rows, model, kit, *_ in rows_out))
    # linearity: a fixed cost (kernels, imports, reports) plus a cost per row; the slope
    # between two sizes is the cost per row, whatever the fixed part
    for model in args.models:
        sizes = [(rows, kit[0], plain[0]) for rows, name, kit, plain, *_ in rows_out if name == model]
        slopes = [f"{a:,}->{b:,}: kit {(kb - ka) / (b - a) * 1e5:.1f} s, plain {(pb - pa) / (b - a) * 1e5:.1f} s"
                  for (a, ka, pa), (b, kb, pb) in zip(sizes, sizes[1:])]
        if slopes:
            print(f"seconds per 100k more rows, {model}: " + "; ".join(slopes))
    print("goals at every size: time <= 1.25x plain, memory <= 1.5x plain; at 1M rows <= 3x the table in memory")


if __name__ == "__main__":
    main()
