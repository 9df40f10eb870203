"""The monitor's core at scale: profile 1 M rows x 30 features, then judge a 1 M-row window.

    .venv/bin/python benchmarks/monitor_core.py [ROWS]

The table: 20 numeric features (normal, 5 % missing), 8 categorical ones as a client sends
them (text, object dtype; 3 to 5,000 levels) and 2 booleans (yes/no text). The window is a
second draw with two features shifted. Prints the time of each step, then the peak memory it
allocates (Python ``tracemalloc`` in a second, traced run: numpy and pandas buffers included),
and the process' peak RSS.
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd

from mlops_kit import monitor

LEVELS = (3, 5, 10, 20, 40, 100, 1_000, 5_000)


def make_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for j in range(20):
        values = rng.normal(size=n)
        values[rng.random(n) < 0.05] = np.nan
        columns[f"x{j}"] = values
    for i, levels in enumerate(LEVELS):
        names = np.array([f"c{i}_{k}" for k in range(levels)], dtype=object)
        columns[f"c{i}"] = names[rng.zipf(1.5, n) % levels]
    for i in range(2):
        columns[f"b{i}"] = np.where(rng.random(n) < 0.3, "yes", "no").astype(object)
    return pd.DataFrame(columns)


def schema_of(frame: pd.DataFrame) -> dict:
    kinds = {name: "numeric" if name.startswith("x") else "boolean" if name.startswith("b") else "categorical"
             for name in frame.columns}
    return {"version": 2, "task": "classification", "target": "label", "target_dtype": "int64", "rows": len(frame),
            "features": [{"name": n, "kind": k, "dtype": str(frame[n].dtype), "nullable": True}
                         for n, k in kinds.items()]}


def measured(label: str, step):
    """Time ``step`` untraced, then run it again under tracemalloc for its peak allocation."""
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label:<34} {seconds:7.2f} s   peak allocated {peak / 2**20:7.0f} MiB")
    return result


def main(rows: int = 1_000_000) -> None:
    train = make_frame(rows, seed=0)
    window = make_frame(rows, seed=1)
    window["x0"] += 0.1
    window["c3"] = window["c3"].where(np.arange(rows) % 10 != 0, "c3_new")
    predictions_train = np.where(train["x1"].fillna(0) > 1, "yes", "no")
    predictions_window = np.where(window["x1"].fillna(0) > 1, "yes", "no")
    print(f"{rows:,} rows x {train.shape[1]} features (reference and window each)")
    profile = measured("profile (build_profile)",
                       lambda: monitor.build_profile(train, schema_of(train), predictions=predictions_train))
    counts = measured("bin the window (bin_window)", lambda: monitor.bin_window(profile, window, predictions_window))
    verdict = measured("verdict on the counts (assess)", lambda: monitor.assess(profile, counts))
    print(f"profile JSON {len(profile.model_dump_json()) / 1024:.0f} KiB; verdict {verdict.verdict!r}, "
          f"drifted {verdict.drifted}, quality {verdict.quality_issues}")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          "(the two generated tables included)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
