"""A seeded, messy table for tests and benchmarks (``benchmarks/scale.py``).

``make_table(n)``: ``n`` rows of 30 feature columns and a label:

- ``customer_id``: an ID (unique per row; the kit drops it);
- ``signup``: an ISO date (the kit makes calendar features of it);
- ``x0`` .. ``x17``: 18 numeric columns (3 carry the signal);
- ``zip``: a categorical column with 5,000 levels (grouped, or target-encoded);
- ``c1`` .. ``c8``: 8 categorical columns with 3 to 40 levels;
- ``member``: yes/no text (a boolean);
- ``label``: 1 for about one row in 21 (a 1:20 imbalance), else 0.

About 5 % of the values of every feature column but the ID are missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_NUMERIC = 18
ZIP_LEVELS = 5_000
CATEGORICAL_LEVELS = (3, 4, 5, 8, 10, 12, 20, 40)
MISSING = 0.05
POSITIVE_SHARE = 1 / 21


def make_table(n: int, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {"customer_id": rng.permutation(n) + 100_000}
    days = rng.integers(0, 3 * 365, n)
    signup = np.datetime64("2021-01-01") + days.astype("timedelta64[D]")
    numeric = rng.normal(size=(n, N_NUMERIC)).astype(np.float64)
    zip_codes = rng.zipf(1.3, n) % ZIP_LEVELS
    zip_effect = rng.normal(0, 1.0, ZIP_LEVELS)
    categorical = [rng.integers(0, levels, n) for levels in CATEGORICAL_LEVELS]
    member = rng.random(n) < 0.3
    score = (1.5 * numeric[:, 0] - 1.0 * numeric[:, 1] + 0.8 * numeric[:, 2] + zip_effect[zip_codes]
             + 0.7 * (categorical[0] == 1) + 0.8 * member + 0.3 * ((days // 30) % 12 >= 10)
             + rng.normal(0, 0.5, n))
    threshold = np.quantile(score, 1 - POSITIVE_SHARE)
    columns["signup"] = pd.Series(signup).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    for j in range(N_NUMERIC):
        columns[f"x{j}"] = numeric[:, j]
    columns["zip"] = np.char.add("z", zip_codes.astype(str)).astype(object)
    for i, (levels, codes) in enumerate(zip(CATEGORICAL_LEVELS, categorical), 1):
        names = np.array([f"c{i}_{k}" for k in range(levels)], dtype=object)
        columns[f"c{i}"] = names[codes]
    columns["member"] = np.where(member, "yes", "no").astype(object)
    frame = pd.DataFrame(columns)
    for name in frame.columns[1:]:
        holes = rng.random(n) < MISSING
        if frame[name].dtype == object:
            frame.loc[holes, name] = None
        else:
            frame.loc[holes, name] = np.nan
    frame["label"] = (score > threshold).astype(np.int64)
    return frame


def write_table(n: int, path: str | Path, *, seed: int = 0) -> Path:
    """The table as CSV or parquet (by the file's suffix), written with pyarrow."""
    import pyarrow as pa

    path = Path(path)
    table = pa.Table.from_pandas(make_table(n, seed=seed), preserve_index=False)
    if path.suffix == ".csv":
        from pyarrow import csv
        csv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq
        pq.write_table(table, path)
    return path


if __name__ == "__main__":  # pragma: no cover - python tests/_datagen.py ROWS PATH
    import sys

    print(write_table(int(sys.argv[1]), sys.argv[2]))
