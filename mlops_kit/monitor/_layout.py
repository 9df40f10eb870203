"""The profile's layout and bounds, without pydantic, pandas or scipy: the model server
reads profiles with these (:mod:`.live`), the kit validates them with the same (:mod:`._profile`).

Bins of a feature (the same layout for the reference and for a window):

- numeric: ``len(edges) + 1`` quantile bins (interior ``edges``; the ends are open), then ``missing``;
- categorical and boolean: the ``levels`` counted one by one, ``other`` (levels seen in
  training but pooled), ``unseen`` (never seen in training), then ``missing``.
"""

from __future__ import annotations

PROFILE_VERSION = 1
#: bounds a profile file must respect (a crafted file must not exhaust memory or time)
MAX_EDGES = 99
MAX_LEVELS = 1_000
MAX_KNOWN_LEVELS = 10_000
MAX_FEATURES = 5_000
MAX_NAME_CHARS = 256
MAX_COUNT = 10**15
#: the size of a profile file, at most (every bound above reached stays below it)
MAX_PROFILE_BYTES = 16 * 1024 * 1024
#: the kinds of the schema that are monitored (dates and free text are not)
MONITORED_KINDS = ("numeric", "categorical", "boolean")


def numeric_labels(edges: list[float]) -> list[str]:
    """A name per numeric bin: ``[a, b)`` intervals, then ``missing``."""
    ends = ["-inf", *(f"{e:.6g}" for e in edges), "inf"]
    return [f"[{a}, {b})" for a, b in zip(ends, ends[1:])] + ["missing"]


def categorical_labels(levels: list[str]) -> list[str]:
    """A name per categorical bin: the levels, ``other``, ``unseen``, ``missing``."""
    return [*levels, "other", "unseen", "missing"]


def level_text(value) -> str:
    """The level a categorical value counts as: its text, with an integral float written as
    the integer (a JSON ``1``, a JSON ``1.0`` and a parquet int64 ``1`` are all level ``"1"``:
    the request log's reader and pandas turn integer columns with gaps into floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
