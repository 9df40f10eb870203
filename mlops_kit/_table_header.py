"""A data file's column names, read with pyarrow alone: the CLI checks ``data.target``
against them before any stage starts, without importing pandas (half a second) in a
process that never needs it."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError


def read_columns(path: str | Path) -> list[str]:
    """The column names of a CSV or parquet file (its header or schema; no rows read)."""
    path = Path(path)
    kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
    try:
        if kind == "CSV":
            import pyarrow.csv as csv

            with csv.open_csv(path) as reader:
                return [str(name) for name in reader.schema.names]
        import pyarrow.parquet as pq
        return list(pq.read_schema(path).names)
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"data.source {str(path)!r} could not be read as {kind}: {first}",
                        source=str(path)) from None
