"""Binning a window of live rows into the profile's bins, vectorised.

Numeric values go to their bin by one ``numpy.searchsorted`` over the interior edges;
categorical values are factorised once (``pandas.factorize``: one hash pass), then only the
distinct values are looked up among the training levels. Counts are all the window keeps,
so windows merge by adding them (replicas, sliding windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ._profile import FeatureProfile, Profile, as_numbers, level_labels


@dataclass
class Counts:
    """One feature's window: counts in the profile's bins, and values outside the training range."""

    counts: np.ndarray
    #: numeric: values below the training minimum or above its maximum (0 for categorical)
    out_of_range: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.counts + other.counts, self.out_of_range + other.out_of_range)


@dataclass
class WindowCounts:
    """A window of live rows, as counts per feature (``prediction``: the model's answers)."""

    rows: int
    features: dict[str, Counts] = field(default_factory=dict)
    prediction: Counts | None = None

    def __add__(self, other: "WindowCounts") -> "WindowCounts":
        if self.features.keys() != other.features.keys():
            raise ValueError("windows must count the same features to be added")
        prediction = (self.prediction + other.prediction
                      if self.prediction is not None and other.prediction is not None else None)
        return WindowCounts(self.rows + other.rows,
                            {name: self.features[name] + other.features[name] for name in self.features},
                            prediction)


def bin_window(profile: Profile, frame: pd.DataFrame, predictions: Any = None) -> WindowCounts:
    """Count the rows of ``frame`` (and the model's ``predictions`` for them) in the profile's bins.

    A feature column absent from ``frame`` is a :class:`~mlops_kit.errors.DataError`.
    """
    absent = [f.name for f in profile.features if f.name not in frame.columns]
    if absent:
        raise DataError(f"The window must have the profile's feature columns. Got none named {absent[:5]} "
                        "instead.", column=absent[0])
    window = WindowCounts(rows=len(frame),
                          features={f.name: bin_values(f, frame[f.name]) for f in profile.features})
    if predictions is not None and profile.prediction is not None:
        values = pd.Series(np.asarray(predictions))
        if len(values) != len(frame):
            raise DataError(f"predictions must hold one value per row of the window ({len(frame)}). "
                            f"Got {len(values)} instead.", column="prediction")
        window.prediction = bin_values(profile.prediction, values)
    return window


def bin_values(entry: FeatureProfile, series: pd.Series) -> Counts:
    """One column's counts in ``entry``'s bins."""
    if entry.numeric is not None:
        return _numeric_counts(entry, series)
    return _categorical_counts(entry, series)


def _numeric_counts(entry: FeatureProfile, series: pd.Series) -> Counts:
    values = as_numbers(series)
    present = values[~np.isnan(values)]
    edges = np.asarray(entry.numeric.edges, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    outside = int(np.count_nonzero(present < entry.numeric.min) + np.count_nonzero(present > entry.numeric.max))
    return Counts(np.append(counts, values.size - present.size).astype(np.int64), outside)


def _categorical_counts(entry: FeatureProfile, series: pd.Series) -> Counts:
    levels = entry.categorical
    bins = {level: i for i, level in enumerate(levels.levels)}
    other, unseen, missing = len(levels.levels), len(levels.levels) + 1, len(levels.levels) + 2
    known = set(levels.other_levels)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    labels = level_labels(uniques, entry.kind)
    # a level not listed is unseen only when the profile lists every training level
    fallback = unseen if levels.complete else other
    bin_of = np.array([bins.get(label, other if label in known else fallback) if label != "" or entry.kind != "boolean"
                       else unseen for label in labels], dtype=np.int64)
    present = codes[codes >= 0]
    counts = np.bincount(bin_of[present], minlength=missing + 1) if present.size else np.zeros(missing + 1, np.int64)
    counts[missing] += codes.size - present.size
    return Counts(counts.astype(np.int64))
