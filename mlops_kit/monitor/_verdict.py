"""The verdict on a window: drift per feature and of the predictions, data quality, one exit code.

Exit codes (documented constants; 1 and 2 are the CLI's error and parameter-error codes):

- ``EXIT_HEALTHY`` 0: nothing moved;
- ``EXIT_DRIFT`` 3: a feature's or the predictions' distribution moved;
- ``EXIT_QUALITY`` 4: missing values, unseen levels or values outside the training range rose
  (takes precedence over drift: broken inputs explain drift, not the other way round);
- ``EXIT_PERFORMANCE`` 5: reserved for the live metrics below the quality gate (late labels).

Drift (the features and the predictions) and data quality are two families of tests, each
held at ``alpha`` by Bonferroni: on unchanged data a drift verdict comes in at most ``alpha`` of
windows, and a verdict other than healthy in at most ``2 alpha``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import pandas as pd

from ..artifacts import Document
from . import _drift
from ._bins import Counts, WindowCounts, bin_window
from ._profile import FeatureProfile, Profile

EXIT_HEALTHY = 0
EXIT_DRIFT = 3
EXIT_QUALITY = 4
EXIT_PERFORMANCE = 5  # reserved: performance below the gate, once late labels are joined
EXIT_CODES = {"healthy": EXIT_HEALTHY, "drift": EXIT_DRIFT, "quality": EXIT_QUALITY,
              "performance": EXIT_PERFORMANCE}


class MinDetectable(Document):
    """The smallest shift the window would have flagged with 80 % power."""

    psi: Optional[float] = None
    #: numeric features: a shift of the mean, in training standard deviations
    mean_shift_sd: Optional[float] = None


class DriftEntry(Document):
    """One feature's (or the predictions') drift as a report shows it."""

    method: str
    #: the PSI over the drift bins
    score: float
    p_value: float
    #: the p-value at or below which the feature is flagged (alpha / tests: Bonferroni)
    threshold: float
    drift: bool
    min_detectable: MinDetectable


class FeatureDrift(DriftEntry):
    """:class:`DriftEntry` with the rows of the window it was judged on."""

    rows: int


class QualityCheck(Document):
    share: float
    reference_share: Optional[float] = None
    p_value: float
    threshold: float
    flagged: bool


class FeatureQuality(Document):
    missing: QualityCheck
    unseen: Optional[QualityCheck] = None
    out_of_range: Optional[QualityCheck] = None

    @property
    def flagged(self) -> bool:
        return any(c is not None and c.flagged for c in (self.missing, self.unseen, self.out_of_range))


class Window(Document):
    rows: int
    reference_rows: int
    alpha: float
    #: tests in the drift family (features + predictions) and in the quality family
    drift_tests: int
    quality_tests: int


class Verdict(Document):
    window: Window
    features: dict[str, FeatureDrift]
    prediction: Optional[FeatureDrift] = None
    quality: dict[str, FeatureQuality]
    performance: None = None
    verdict: Literal["healthy", "drift", "quality", "performance"]
    exit_code: int
    #: the features (and ``prediction``) whose distribution moved, the largest score first
    drifted: list[str]
    #: the features with a data-quality problem
    quality_issues: list[str]


METHOD = "chi2 homogeneity (permutation) + PSI"


def check_window(profile: Profile, frame: pd.DataFrame, predictions: Any = None, *,
                 alpha: float = _drift.DEFAULT_ALPHA, seed: int = 0) -> Verdict:
    """The verdict on a window of live rows (a DataFrame) and the model's predictions for them."""
    return assess(profile, bin_window(profile, frame, predictions), alpha=alpha, seed=seed)


def assess(profile: Profile, window: WindowCounts, *, alpha: float = _drift.DEFAULT_ALPHA,
           seed: int = 0) -> Verdict:
    """The verdict on a window's counts (see the statistics in :mod:`._drift`).

    ``seed`` makes the permutation p-values reproducible.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1. Got {alpha} instead.")
    rng = np.random.default_rng(seed)
    judged = profile.prediction is not None and window.prediction is not None
    tests = len(profile.features) + judged
    level = alpha / max(1, tests)  # Bonferroni over the features and the predictions
    draws = _drift.draws_needed(alpha, tests)
    drifts = {entry.name: feature_drift(entry, window.features[entry.name], level, rng=rng, draws=draws)
              for entry in profile.features}
    prediction = (feature_drift(profile.prediction, window.prediction, level, rng=rng, draws=draws)
                  if judged else None)
    quality_tests = sum(1 + (e.numeric is not None) + (e.categorical is not None and e.categorical.complete)
                        for e in profile.features)
    quality_level = alpha / max(1, quality_tests)
    quality = {entry.name: feature_quality(entry, window.features[entry.name], quality_level)
               for entry in profile.features}
    moved = {name: d for name, d in drifts.items() if d.drift}
    if prediction is not None and prediction.drift:
        moved["prediction"] = prediction  # the predictions, when a feature has that name too
    issues = [name for name, q in quality.items() if q.flagged]
    verdict = "quality" if issues else "drift" if moved else "healthy"
    return Verdict(
        window=Window(rows=window.rows, reference_rows=profile.rows, alpha=alpha, drift_tests=tests,
                      quality_tests=quality_tests),
        features=drifts, prediction=prediction, quality=quality, verdict=verdict, exit_code=EXIT_CODES[verdict],
        drifted=sorted(moved, key=lambda name: -moved[name].score), quality_issues=issues)


def feature_drift(entry: FeatureProfile, window: Counts, level: float, *, rng: np.random.Generator,
                  draws: int) -> FeatureDrift:
    """One feature's drift: PSI, permutation p-value, Bonferroni level, smallest detectable shift."""
    numeric = entry.numeric is not None
    reference = _drift.drift_bins(np.asarray(entry.counts), numeric)
    observed = _drift.drift_bins(window.counts, numeric)
    p_value = _drift.permutation_p_value(reference, observed, rng=rng, max_draws=draws)
    w2 = _drift.min_detectable_w2(reference, int(observed.sum()), level)
    shift = (_drift.min_detectable_mean_shift(reference, entry.numeric.edges, entry.numeric.min, entry.numeric.max,
                                              entry.numeric.std, w2) if numeric else None)
    return FeatureDrift(method=METHOD, score=_drift.psi(reference, observed), p_value=p_value, threshold=level,
                        drift=p_value <= level, min_detectable=MinDetectable(psi=w2, mean_shift_sd=shift),
                        rows=int(observed.sum()))


def feature_quality(entry: FeatureProfile, window: Counts, level: float) -> FeatureQuality:
    """Missing values, unseen levels and values outside the training range, each tested one-sided."""
    counts = window.counts
    rows, missing = int(counts.sum()), int(counts[-1])
    reference_missing = entry.counts[-1]
    present, reference_present = rows - missing, entry.rows - reference_missing
    checks: dict[str, QualityCheck] = {"missing": _check(
        missing, rows, reference_missing / max(1, entry.rows),
        _drift.missing_p_value(reference_missing, entry.rows, missing, rows), level)}
    if entry.numeric is not None:
        checks["out_of_range"] = _check(
            window.out_of_range, present, 0.0,
            _drift.out_of_range_p_value(reference_present, window.out_of_range, present), level)
    elif entry.categorical.complete:
        unseen = int(counts[-2])
        checks["unseen"] = _check(
            unseen, present, 0.0,
            _drift.unseen_p_value(reference_present, entry.categorical.singletons, unseen, present), level)
    return FeatureQuality(**checks)


def _check(count: int, rows: int, reference_share: float, p_value: float, level: float) -> QualityCheck:
    return QualityCheck(share=count / rows if rows else 0.0, reference_share=reference_share, p_value=p_value,
                        threshold=level, flagged=p_value <= level)
