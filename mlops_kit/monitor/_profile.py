"""The reference profile: the training split reduced to counts in fixed bins, per feature.

A profile is what live traffic is compared with. It is small (bounded: at most
``MAX_EDGES + 1`` numeric bins, ``MAX_LEVELS`` counted levels, ``MAX_KNOWN_LEVELS`` levels
known but pooled), JSON-serialisable, mergeable by adding counts, and validated on load:
a crafted file is refused with an :class:`~mlops_kit.errors.ArtifactError` naming the field.

Bins of a feature (the same layout for the reference and for a window):

- numeric: quantile bins of the training values (``edges`` are the interior edges,
  deduplicated; the ends are open), then ``missing``;
- categorical and boolean: the ``levels`` counted one by one (the most frequent ones, with at
  least ``MIN_LEVEL_ROWS`` training rows),
  ``other`` (levels seen in training but pooled), ``unseen`` (levels never seen in training;
  0 in the reference), then ``missing``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from .. import artifacts
from ..artifacts import DataSchema, Document
from ..data import BOOLEAN_WORDS
from ..errors import DataError

from ._layout import level_text
from ._layout import (MAX_COUNT, MAX_EDGES, MAX_FEATURES, MAX_KNOWN_LEVELS, MAX_LEVELS, MAX_NAME_CHARS,  # noqa: F401
                      MONITORED_KINDS, PROFILE_VERSION, categorical_labels, numeric_labels)

#: numeric features: bins from this many quantiles by default
DEFAULT_BINS = 10
#: categorical features: the most frequent levels counted one by one by default
DEFAULT_LEVELS = 50
#: a categorical level is counted on its own only with this many training rows (else: ``other``)
MIN_LEVEL_ROWS = 20

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Level = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class NumericBins(Document):
    """Quantile bins of a numeric feature and its training range and spread."""

    edges: list[Finite] = Field(max_length=MAX_EDGES)
    min: Finite
    max: Finite
    mean: Finite
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ordered(self) -> "NumericBins":
        edges = self.edges
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"edges must be strictly increasing. Got {edges[:5]}... instead")
        if self.min > self.max:
            raise ValueError(f"min must be at most max. Got min {self.min} > max {self.max} instead")
        if edges and (edges[0] < self.min or edges[-1] > self.max):
            raise ValueError(f"edges must lie within [min, max] = [{self.min}, {self.max}]. "
                             f"Got [{edges[0]}, {edges[-1]}] instead")
        return self


class CategoricalLevels(Document):
    """The levels of a categorical (or boolean) feature seen in training."""

    levels: list[Level] = Field(max_length=MAX_LEVELS)
    #: seen in training, counted together in ``other``
    other_levels: list[Level] = Field(default_factory=list, max_length=MAX_KNOWN_LEVELS)
    #: every training level is listed (else a level not listed may be known: unseen is not told)
    complete: bool = True
    #: levels seen exactly once in training (Good-Turing: the chance of an unseen level)
    singletons: Count = 0

    @model_validator(mode="after")
    def _unique(self) -> "CategoricalLevels":
        known = self.levels + self.other_levels
        if len(set(known)) != len(known):
            raise ValueError("levels and other_levels must be distinct. Got a level twice instead")
        return self


class FeatureProfile(Document):
    """One feature's reference counts (see the module docstring for the layout of ``counts``)."""

    name: Name
    kind: Literal["numeric", "categorical", "boolean"]
    counts: list[Count] = Field(max_length=MAX_LEVELS + 3)
    numeric: Optional[NumericBins] = None
    categorical: Optional[CategoricalLevels] = None

    @model_validator(mode="after")
    def _consistent(self) -> "FeatureProfile":
        if (self.kind == "numeric") != (self.numeric is not None) or \
                (self.kind != "numeric") != (self.categorical is not None):
            raise ValueError(f"a {self.kind} feature must carry "
                             f"{'numeric' if self.kind == 'numeric' else 'categorical'} bins only")
        if len(self.counts) != self.n_bins:
            raise ValueError(f"counts must hold {self.n_bins} numbers (one per bin). "
                             f"Got {len(self.counts)} instead")
        if self.numeric is None and self.counts[-2] != 0:
            raise ValueError(f"the reference count of unseen levels must be 0. Got {self.counts[-2]} instead")
        return self

    @property
    def n_bins(self) -> int:
        if self.numeric is not None:
            return len(self.numeric.edges) + 2
        return len(self.categorical.levels) + 3

    @property
    def labels(self) -> list[str]:
        """A name per bin, in the order of ``counts``."""
        if self.numeric is not None:
            return numeric_labels(self.numeric.edges)
        return categorical_labels(self.categorical.levels)

    @property
    def rows(self) -> int:
        return sum(self.counts)


class Profile(Document):
    """``monitor_profile.json``: the reference every window is compared with."""

    version: Literal[1] = PROFILE_VERSION
    task: Optional[Literal["classification", "regression"]] = None
    rows: Count
    features: list[FeatureProfile] = Field(max_length=MAX_FEATURES)
    #: the model's predictions on the training split, binned the same way
    prediction: Optional[FeatureProfile] = None
    #: features of the schema that are not monitored, with the reason
    skipped: dict[Name, Annotated[str, Field(max_length=MAX_NAME_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_FEATURES)

    @model_validator(mode="after")
    def _totals(self) -> "Profile":
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique. Got a name twice instead")
        for entry in self.features + ([self.prediction] if self.prediction else []):
            if entry.rows != self.rows:
                raise ValueError(f"the counts of {entry.name!r} must add up to rows ({self.rows}). "
                                 f"Got {entry.rows} instead")
        return self

    def feature(self, name: str) -> FeatureProfile:
        for entry in self.features:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def save(self, path: str | Path) -> Path:
        """Write the profile atomically (validated first)."""
        return artifacts.write_document(Path(path), Profile, self)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file: bounded in size; any broken field is named in an
    :class:`~mlops_kit.errors.ArtifactError`."""
    return artifacts.read_document(Path(path), Profile)


# --- building ---------------------------------------------------------------------------------

def build_profile(train: pd.DataFrame, schema: DataSchema | dict, *, predictions: Any = None,
                  bins: int = DEFAULT_BINS, max_levels: int = DEFAULT_LEVELS) -> Profile:
    """The reference profile of the training split ``train`` for the features of ``schema``.

    ``predictions`` (optional, one per row of ``train``): the model's answers on the training
    split, profiled as categorical (classification: the predicted classes) or numeric
    (regression: the predicted values).
    """
    schema = artifacts.validate_document(schema, DataSchema, source="schema")
    if not 1 <= bins <= MAX_EDGES + 1:
        raise ValueError(f"bins must be between 1 and {MAX_EDGES + 1}. Got {bins} instead.")
    if not 1 <= max_levels <= MAX_LEVELS:
        raise ValueError(f"max_levels must be between 1 and {MAX_LEVELS}. Got {max_levels} instead.")
    features, skipped = [], {}
    for feature in schema.features:
        if feature.kind not in MONITORED_KINDS:
            skipped[feature.name] = f"{feature.kind} features are not monitored"
            continue
        if feature.name not in train.columns:
            raise DataError(f"The training split must have the column {feature.name!r} (a feature of the "
                            f"schema). Got the columns {list(train.columns)[:10]} instead.", column=feature.name)
        entry = profile_column(feature.name, train[feature.name], feature.kind, bins=bins, max_levels=max_levels)
        if entry is None:
            skipped[feature.name] = "no value in the training split"
        else:
            features.append(entry)
    prediction = None
    if predictions is not None:
        values = pd.Series(np.asarray(predictions))
        if len(values) != len(train):
            raise DataError(f"predictions must hold one value per training row ({len(train)}). "
                            f"Got {len(values)} instead.", column="prediction")
        kind = "categorical" if schema.task == "classification" else "numeric"
        prediction = profile_column("prediction", values, kind, bins=bins, max_levels=max_levels)
    return Profile(task=schema.task, rows=len(train), features=features, prediction=prediction, skipped=skipped)


def profile_column(name: str, series: pd.Series, kind: str, *, bins: int = DEFAULT_BINS,
                   max_levels: int = DEFAULT_LEVELS) -> FeatureProfile | None:
    """One column's profile (None for a numeric column without any value)."""
    if kind == "numeric":
        return _numeric_profile(name, series, bins)
    return _categorical_profile(name, series, kind, max_levels)


def _numeric_profile(name: str, series: pd.Series, bins: int) -> FeatureProfile | None:
    values = as_numbers(series)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return None
    low, high = float(present.min()), float(present.max())
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles[(quantiles > low) & (quantiles <= high)])  # no empty first bin
    numeric = NumericBins(edges=edges.tolist(), min=low, max=high, mean=float(present.mean()),
                          std=float(present.std()))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    return FeatureProfile(name=name, kind="numeric", numeric=numeric,
                          counts=[*counts.tolist(), int(values.size - present.size)])


def _categorical_profile(name: str, series: pd.Series, kind: str, max_levels: int) -> FeatureProfile:
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    labels = level_labels(uniques, kind)
    per_unique = np.bincount(codes[codes >= 0], minlength=len(uniques))
    counts = pd.Series(per_unique).groupby(labels).sum()
    if kind == "boolean":  # values that are no boolean are left out (counted as missing)
        counts = counts[counts.index != ""].reindex(["false", "true"], fill_value=0)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    # a boolean's two levels are fixed in advance; a categorical's are chosen by their counts, and
    # a level chosen for being seen a few times is seen more often in training than it occurs
    # (the winner's curse: a big window would call that drift), so rare levels are pooled
    floor = 0 if kind == "boolean" else MIN_LEVEL_ROWS
    kept = [(level, count) for level, count in ranked[:max_levels] if count >= floor]
    pooled = ranked[len(kept):]
    other_levels = sorted(level for level, _ in pooled)
    levels = CategoricalLevels(levels=[level for level, _ in kept], other_levels=other_levels[:MAX_KNOWN_LEVELS],
                               complete=len(other_levels) <= MAX_KNOWN_LEVELS,
                               singletons=int((counts == 1).sum()))
    missing = int(len(series) - sum(int(c) for _, c in ranked))
    return FeatureProfile(name=name, kind=kind, categorical=levels,
                          counts=[*(int(c) for _, c in kept), int(sum(c for _, c in pooled)), 0, missing])


# --- values as the bins see them --------------------------------------------------------------

def as_numbers(series: pd.Series) -> np.ndarray:
    """float64 values; anything that is no finite number (text, NaN, inf) becomes NaN (missing)."""
    values = pd.to_numeric(series, errors="coerce")
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def level_labels(uniques: Any, kind: str) -> np.ndarray:
    """The level (a string) of each distinct value: its text; for a boolean ``"true"`` or
    ``"false"`` (from ``True``/``1``/``"yes"``... as 01_data reads them), ``""`` for anything else."""
    convert: Callable[[Any], str] = _boolean_label if kind == "boolean" else _text_label
    return np.array([convert(value) for value in list(uniques)], dtype=object)


def _text_label(value: Any) -> str:
    return level_text(value.item() if hasattr(value, "item") else value)


def _boolean_label(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, str):
        word = BOOLEAN_WORDS.get(value.strip().lower())
        return "" if word is None else ("true" if word else "false")
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return "true" if value == 1 else "false" if value == 0 else ""
    return ""
