"""The statistics: drift scores, tests valid at any window size, and what a window can detect.

**Drift of a feature** compares the window's counts with the reference's over the feature's
bins without ``missing`` (missing values are a data-quality matter, tested apart); for a
categorical feature ``other`` and ``unseen`` are one bin (a held-out sample meets rare levels
the training split never had: that alone is no drift, while a new level taking a real share of
the traffic moves that bin). Levels with fewer than ``MIN_LEVEL_ROWS`` training rows are in
``other`` too: a level kept *because* it was seen a few times is over-represented in training
(the winner's curse), which a window far larger than the reference would call drift.

- *score*: the population stability index, ``PSI = sum (q - p) ln(q / p)`` over the bins, with
  half a row added to every bin of both sides (so an empty bin gives a finite value).
- *test*: Pearson's chi-squared **test of homogeneity** on the 2 x k table (reference row,
  window row). The reference is a finite sample, not a known distribution, so the test is a
  two-sample one. Its p-value is not read from the chi-squared distribution (wrong for small
  windows and sparse bins) but computed by **permutation**: under "no drift" the reference and
  window rows are exchangeable, so given the table's column totals the window's counts follow
  the multivariate hypergeometric law; tables are drawn from it and the p-value is the share
  whose statistic reaches the observed one. Sampling stops early once ``h`` tables reach it
  (Besag & Clifford 1991, sequential Monte Carlo p-values): exact for every window size and
  cheap when there is no drift.
- *family-wise threshold*: Bonferroni over every test of the verdict (the features and the
  predictions): each p-value is compared with ``alpha / m``, so on unchanged data the chance
  that any feature is flagged is at most ``alpha`` (5 %), whatever the window's size.
- *min_detectable*: the smallest shift the window would have flagged with 80 % power, from the
  non-central chi-squared approximation of the test: the non-centrality ``lambda`` that gives
  80 % power at ``alpha / m`` over ``df = bins - 1``; with ``n_eff = n N / (n + N)``, a shift is
  detectable when ``n_eff * sum (q - p)^2 / p >= lambda``. Reported as a PSI (for small shifts
  ``PSI ~ sum (q - p)^2 / p``) and, for numeric features, as the mean shift in training standard
  deviations (the reference's piecewise-linear distribution moved along the axis).

**Data quality** (one-sided: only an increase is a problem), Bonferroni over its own tests:

- *missing*: the window's missing share against the reference's: Fisher's exact test (the
  hypergeometric law of the window's missing count given the pooled count).
- *out of range*: under exchangeability the training range misses a ``Beta(2, N - 1)`` share
  of the distribution (``N`` training values), so the count of window values outside it is
  beta-binomial: exact, for continuous features (conservative with ties).
- *unseen*: the chance of a level never seen in training is estimated by Good-Turing
  (levels seen once / ``N``); the count of unseen values is tested as beta-binomial with
  ``Beta(singletons + 1, N - singletons + 1)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# scipy is imported where it is used: the model server (no scipy in the ONNX image) takes the
# scores and the permutation test from here, which need numpy only. Only ``scipy.special`` (16
# MiB): ``scipy.stats`` and ``scipy.optimize`` take 67 MiB more, the report's whole memory at
# 10 k rows; the two laws below are summed here and the roots found by bisection

#: the family-wise false-alarm rate on unchanged data
DEFAULT_ALPHA = 0.05
#: the power at which the smallest detectable shift is stated
POWER = 0.8
#: sequential Monte Carlo: stop once this many permuted tables reach the observed statistic
STOP_AFTER_HITS = 20
FIRST_BATCH = 200


# --- scores -----------------------------------------------------------------------------------

def drift_bins(counts: np.ndarray, numeric: bool) -> np.ndarray:
    """The bins a drift test compares: without ``missing``; categorical ``other`` + ``unseen`` as one."""
    counts = np.asarray(counts, dtype=np.int64)
    if numeric:
        return counts[:-1]
    return np.append(counts[:-3], counts[-3] + counts[-2])


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Population stability index over the bins (half a row added to each bin of both sides)."""
    p = (reference + 0.5) / (reference.sum() + 0.5 * reference.size)
    q = (window + 0.5) / (window.sum() + 0.5 * window.size)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2_homogeneity(window: np.ndarray, totals: np.ndarray, n: int, big_n: int) -> np.ndarray:
    """Pearson's statistic of the 2 x k table whose window row is ``window`` (one table per row
    of a 2-D array) and whose column totals are ``totals`` (bins with a total of 0 left out).

    With both row totals fixed, the reference row's deviation is minus the window's, so the
    statistic is ``T^2 / (n N) * sum (w - n c / T)^2 / c``.
    """
    keep = totals > 0
    c = totals[keep].astype(np.float64)
    big_t = n + big_n
    deviation = np.asarray(window, dtype=np.float64)[..., keep] - n * c / big_t
    return big_t * big_t / (n * big_n) * np.sum(deviation * deviation / c, axis=-1)


def permutation_p_value(reference: np.ndarray, window: np.ndarray, *, rng: np.random.Generator,
                        max_draws: int) -> float:
    """The permutation p-value of the chi-squared test of homogeneity (module docstring).

    Draws tables in growing batches; stops when ``STOP_AFTER_HITS`` reach the observed
    statistic (p = hits / draws) or after ``max_draws`` (p = (hits + 1) / (draws + 1)).
    """
    n, big_n = int(window.sum()), int(reference.sum())
    totals = reference + window
    if n == 0 or big_n == 0 or np.count_nonzero(totals) < 2:
        return 1.0
    observed = chi2_homogeneity(window, totals, n, big_n) * (1 - 1e-9)  # ties count as reaching it
    hits = draws = 0
    batch = FIRST_BATCH
    while draws < max_draws:
        size = min(batch, max_draws - draws)
        tables = rng.multivariate_hypergeometric(totals, n, size=size, method="marginals")
        reached = chi2_homogeneity(tables, totals, n, big_n) >= observed
        cumulative = hits + np.cumsum(reached)
        if cumulative[-1] >= STOP_AFTER_HITS:
            stop = int(np.argmax(cumulative >= STOP_AFTER_HITS)) + 1
            return STOP_AFTER_HITS / (draws + stop)
        hits, draws, batch = int(cumulative[-1]), draws + size, batch * 2
    return (hits + 1) / (draws + 1)


def draws_needed(alpha: float, tests: int) -> int:
    """Enough permuted tables to resolve p-values well below ``alpha / tests``."""
    return int(max(1_000, math.ceil(20 * tests / alpha)))


# --- what a window can detect -----------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def noncentrality_for_power(df: int, level: float, power: float = POWER) -> float:
    """The non-centrality at which a chi-squared test (``df``, ``level``) has the given power
    (cached: a verdict asks it for a few distinct ``df`` only)."""
    from scipy import special

    critical = special.chdtri(df, level)      # the chi-squared's upper quantile
    # the power rises with the non-centrality: 1 - ncx2.cdf(critical) = power
    return _root(lambda lam: (1.0 - special.chndtr(critical, df, lam)) - power, 1e-9, 1e6, 1e-9)


def min_detectable_w2(reference: np.ndarray, n: int, level: float) -> float | None:
    """The smallest ``sum (q - p)^2 / p`` (about the PSI) detectable with 80 % power, or None."""
    big_n = int(reference.sum())
    df = int(np.count_nonzero(reference)) - 1
    if n == 0 or big_n == 0 or df < 1:
        return None
    n_eff = n * big_n / (n + big_n)
    return noncentrality_for_power(df, level) / n_eff


def min_detectable_mean_shift(reference: np.ndarray, edges: list[float], low: float, high: float,
                              std: float, w2: float | None) -> float | None:
    """The mean shift (in training standard deviations) whose bin masses reach ``w2``.

    The reference distribution is taken as piecewise linear between its bin edges (outer
    bins: the training minimum and maximum); shifting it by ``d * std`` moves mass between
    bins; the smallest ``d`` with ``sum (q - p)^2 / p >= w2`` is found by bisection.
    """
    if w2 is None or std <= 0 or high <= low:
        return None
    p = reference / reference.sum()
    if edges and high <= edges[-1]:  # the last bin holds the maximum alone: spread it over a bin's width
        high = edges[-1] + (edges[-1] - (edges[-2] if len(edges) > 1 else low))
    knots = np.array([low, *edges, high], dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    cuts = np.array(edges, dtype=np.float64)

    def divergence(d: float) -> float:
        shifted = np.interp(cuts - d * std, knots, cdf)
        q = np.diff(np.concatenate([[0.0], shifted, [1.0]]))
        keep = p > 0
        return float(np.sum((q[keep] - p[keep]) ** 2 / p[keep]))

    top = (high - low) / std
    if divergence(top) < w2:  # not even a shift across the whole range would be seen
        return None
    if divergence(0.0) >= w2:
        return 0.0
    return _root(lambda d: divergence(d) - w2, 0.0, top, 1e-4)


def _root(f, low: float, high: float, tolerance: float) -> float:
    """The root of an increasing ``f`` between ``low`` (f < 0) and ``high`` (f >= 0), by
    bisection to within ``tolerance`` (absolute, or relative above 1)."""
    for _ in range(200):
        if high - low <= tolerance * max(1.0, abs(low)):
            break
        middle = (low + high) / 2
        if f(middle) < 0:
            low = middle
        else:
            high = middle
    return float((low + high) / 2)


# --- data quality -----------------------------------------------------------------------------

def missing_p_value(reference_missing: int, reference_rows: int, missing: int, rows: int) -> float:
    """One-sided Fisher's exact test: is the window's missing share higher than the reference's?"""
    if missing == 0 or rows == 0:
        return 1.0
    return hypergeom_sf(missing - 1, reference_rows + rows, reference_missing + missing, rows)


def out_of_range_p_value(reference_present: int, outside: int, present: int) -> float:
    """Window values outside the training range: beta-binomial with ``Beta(2, N - 1)``."""
    if outside == 0 or reference_present < 2:
        return 1.0
    return betabinom_sf(outside - 1, present, 2, reference_present - 1)


def unseen_p_value(reference_present: int, singletons: int, unseen: int, present: int) -> float:
    """Values of levels never seen in training: beta-binomial around Good-Turing's estimate."""
    if unseen == 0:
        return 1.0
    return betabinom_sf(unseen - 1, present, singletons + 1, reference_present - singletons + 1)


# --- two discrete laws' upper tails (scipy.stats' hypergeom.sf and betabinom.sf) -------------

def hypergeom_sf(k: int, total: int, successes: int, draws: int) -> float:
    """P(X > k), X the successes among ``draws`` drawn without replacement from ``total`` of
    which ``successes`` are."""
    from scipy.special import gammaln

    low, high = max(0, draws - (total - successes)), min(successes, draws)

    def log_pmf(x: np.ndarray) -> np.ndarray:
        return (_log_choose(gammaln, successes, x) + _log_choose(gammaln, total - successes, draws - x)
                - _log_choose(gammaln, total, draws))

    return _upper_tail(log_pmf, k, low, high)


def betabinom_sf(k: int, n: int, a: float, b: float) -> float:
    """P(X > k), X beta-binomial: ``n`` trials, success chance drawn from ``Beta(a, b)``."""
    from scipy.special import betaln, gammaln

    def log_pmf(x: np.ndarray) -> np.ndarray:
        return _log_choose(gammaln, n, x) + betaln(x + a, n - x + b) - betaln(a, b)

    return _upper_tail(log_pmf, k, 0, n)


def _log_choose(gammaln, n, x):
    return gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1)


#: terms summed at a time, and the share of the sum below which the rest of a tail is left out
_TAIL_CHUNK = 4096
_NEGLIGIBLE = 1e-18


def _upper_tail(log_pmf, k: int, low: int, high: int) -> float:
    """``sum pmf(x) for x > k`` of a log-concave law on ``low..high``: summed from where the
    terms fall (past the mode: upwards from ``k + 1``; before it: ``1 - `` the sum downwards
    from ``k``), a chunk at a time, stopping once the terms are negligible (they only fall)."""
    if k < low:
        return 1.0
    if k >= high:
        return 0.0
    start = np.array([k, k + 1], dtype=np.float64)
    before, after = log_pmf(start)
    if after <= before:                          # past the mode: the tail itself
        return float(min(1.0, _sum_falling(log_pmf, k + 1, high, 1)))
    return float(min(1.0, max(0.0, 1.0 - _sum_falling(log_pmf, k, low, -1))))


def _sum_falling(log_pmf, first: int, last: int, step: int) -> float:
    total = 0.0
    at = first
    while (at - last) * step <= 0:
        end = at + step * _TAIL_CHUNK
        end = min(end, last + 1) if step > 0 else max(end, last - 1)
        terms = np.exp(log_pmf(np.arange(at, end, step, dtype=np.float64)))
        total += float(terms.sum())
        if terms[-1] <= total * _NEGLIGIBLE:
            break
        at = end
    return total
