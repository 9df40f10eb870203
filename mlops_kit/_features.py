"""Functions the trained pipeline calls (through ``FunctionTransformer``): they are part of
the model, so they live here, small and importable wherever a model is loaded (the server,
the image). The model file names them; :mod:`mlops_kit.model_io` trusts exactly these."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The calendar features of a date or datetime column, in this order.
CALENDAR_PARTS = ("year", "month", "day", "day_of_week", "hour")


def calendar_features(X) -> np.ndarray:
    """Year, month, day, day of week and hour of each date column (datetimes or ISO 8601
    strings; missing or unparsable: NaN), as floats."""
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=object))
    blocks = []
    for column in frame.columns:
        values = frame[column]
        if not pd.api.types.is_datetime64_any_dtype(values):
            values = pd.to_datetime(values.astype(object), format="ISO8601", errors="coerce", utc=True)
            values = values.dt.tz_localize(None)
        parts = [getattr(values.dt, part).to_numpy(dtype=float, na_value=np.nan) for part in CALENDAR_PARTS]
        blocks.append(np.column_stack(parts))
    return np.hstack(blocks) if blocks else np.empty((len(frame), 0))


def calendar_names(transformer, names) -> np.ndarray:
    """``feature_names_out`` of :func:`calendar_features`."""
    return np.asarray([f"{name}_{part}" for name in names for part in CALENDAR_PARTS], dtype=object)


def as_text(X) -> list[str]:
    """A text column as a list of strings (missing: empty), for ``HashingVectorizer``."""
    values = X.iloc[:, 0] if isinstance(X, pd.DataFrame) else pd.Series(np.asarray(X, dtype=object).ravel())
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]
