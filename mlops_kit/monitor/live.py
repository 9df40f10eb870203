"""Live drift in the model server: the profile read without pydantic, every request counted
in its bins with numpy, drift judged when ``/metrics`` is scraped.

The server's image holds neither pydantic nor pandas (nor scipy, for an ONNX model), so this
module reads ``monitor_profile.json`` itself, bounded like :mod:`._profile` (size, lengths,
finite numbers, increasing edges, counts adding up), and bins the server's validated batch
(:class:`~mlops_kit.serving._validation.Batch`: numbers as float64, booleans as 1.0/0.0, categories
as text, missing as NaN) in the same bins as :mod:`._bins` does a DataFrame.

On the request path, :meth:`LiveMonitor.observe` keeps the request's arrays with the current
chunk; when the chunk holds ``window / 10`` rows it is binned at once, a few numpy calls
whatever the number of numeric features or of requests in it: their bins by one comparison of
the chunk's matrix with the edges (one plane per edge rank, padded with +inf, laid out row
after row like the matrix) summed over the planes; each categorical feature's by a dict lookup
per value (the levels' bins precomputed), numeric classes of the predictions by a search in
the sorted classes.
Every value becomes a flat bin index (the features and the predictions laid end to end),
written into buffers the monitor keeps (fresh pages for arrays of a thousand rows cost more than
the binning), and each chunk's rows are counted by one ``bincount``. The sliding
window is the last chunks holding at least ``window`` rows (at most a chunk more). The drift of the window (PSI, and the
core's permutation test with its Bonferroni level) is computed by :meth:`LiveMonitor.judge`
on a snapshot, off the request path.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from . import _drift
from ._layout import level_text
from ._layout import (MAX_COUNT, MAX_EDGES, MAX_FEATURES, MAX_KNOWN_LEVELS, MAX_LEVELS, MAX_NAME_CHARS,
                      MAX_PROFILE_BYTES, PROFILE_VERSION, categorical_labels, numeric_labels)

DEFAULT_WINDOW = 1000
#: the label of the predictions in the drift gauges
PREDICTION = "__prediction__"
#: the edges laid out for this many values at most (rows x numeric features x edge ranks; a
#: chunk of more rows is binned in slices of rows): 4 MiB of float64
_TILED_VALUES = 1 << 19
#: rows of one slice at most (beyond, a longer slice gains nothing)
_TILE_ROWS = 256
#: the requests waiting are binned together once they hold this many rows (or a chunk, when more):
#: the dozen numpy calls of a binning paid once for them all (each chunk's counts kept apart)
BIN_ROWS = 1024


@dataclass
class LiveFeature:
    """One feature's bins as the server counts them."""

    name: str
    kind: str
    reference: np.ndarray                   # the training counts, in the layout of :mod:`._layout`
    edges: np.ndarray | None = None         # numeric: interior edges
    levels: list[str] = field(default_factory=list)      # categorical: the levels counted one by one
    bins: dict[str, int] = field(default_factory=dict)   # categorical: level (counted or pooled) -> bin
    fallback: int = 0                       # categorical: the bin of a level not in ``bins``
    offset: int = 0                         # where its bins start in the monitor's flat counts

    @property
    def numeric(self) -> bool:
        return self.edges is not None

    @property
    def labels(self) -> list[str]:
        if self.edges is not None:
            return numeric_labels(self.edges.tolist())
        return categorical_labels(self.levels)

    @property
    def n_bins(self) -> int:
        return int(self.reference.size)

    @property
    def missing(self) -> int:
        return self.n_bins - 1


@dataclass
class LiveProfile:
    rows: int
    features: list[LiveFeature]
    prediction: LiveFeature | None


# --- reading the profile ----------------------------------------------------------------------

def read_profile(path: str | Path) -> LiveProfile:
    """``monitor_profile.json`` checked without pydantic; ArtifactError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} must exist (the monitoring profile 02_train writes). Got no file there "
                            "instead.", path=path, hint="train the model again (02_train writes the profile).")
    with open(path, "rb") as fh:
        data = fh.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise ArtifactError(f"{path} must be at most {MAX_PROFILE_BYTES} bytes. Got more instead.", path=path)
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} must be JSON. Got invalid JSON instead ({str(exc)[:100]}).", path=path) from None

    def refuse(where: str, expected: str, got: Any) -> ArtifactError:
        shown = repr(got)
        return ArtifactError(f"{path} is not a valid monitoring profile: {where} must be {expected}. Got "
                             f"{shown[:80] + '...' if len(shown) > 80 else shown} instead.", path=path)

    if type(document) is not dict:
        raise refuse("the document", "an object", type(document).__name__)
    if document.get("version") != PROFILE_VERSION:
        raise refuse("version", str(PROFILE_VERSION), document.get("version"))
    rows = document.get("rows")
    if not _count(rows):
        raise refuse("rows", f"an integer between 0 and {MAX_COUNT}", rows)
    entries = document.get("features")
    if type(entries) is not list or len(entries) > MAX_FEATURES:
        raise refuse("features", f"a list of at most {MAX_FEATURES} features", type(entries).__name__)
    features = [_feature(entry, f"features.{i}", rows, refuse) for i, entry in enumerate(entries)]
    if len({f.name for f in features}) != len(features):
        raise refuse("features", "features of distinct names", "a name twice")
    prediction = document.get("prediction")
    prediction = None if prediction is None else _feature(prediction, "prediction", rows, refuse)
    return LiveProfile(rows, features, prediction)


def _feature(entry: Any, where: str, rows: int, refuse) -> LiveFeature:
    if type(entry) is not dict:
        raise refuse(where, "an object", type(entry).__name__)
    name, kind, counts = entry.get("name"), entry.get("kind"), entry.get("counts")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
        raise refuse(f"{where}.name", f"a name of 1 to {MAX_NAME_CHARS} characters", name)
    if kind not in ("numeric", "categorical", "boolean"):
        raise refuse(f"{where}.kind", "numeric, categorical or boolean", kind)
    if type(counts) is not list or len(counts) > MAX_LEVELS + 3 or not all(map(_count, counts)):
        raise refuse(f"{where}.counts", f"a list of at most {MAX_LEVELS + 3} counts", counts)
    if sum(counts) != rows:
        raise refuse(f"{where}.counts", f"counts adding up to rows ({rows})", sum(counts))
    reference = np.array(counts, dtype=np.int64)
    if kind == "numeric":
        bins = entry.get("numeric")
        if type(bins) is not dict:
            raise refuse(f"{where}.numeric", "an object (a numeric feature's bins)", bins)
        edges, low, high = bins.get("edges"), bins.get("min"), bins.get("max")
        if (type(edges) is not list or len(edges) > MAX_EDGES or not all(map(_finite, edges))
                or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise refuse(f"{where}.numeric.edges", f"at most {MAX_EDGES} finite numbers, strictly increasing", edges)
        if not (_finite(low) and _finite(high) and low <= high and (not edges or low <= edges[0] <= edges[-1] <= high)):
            raise refuse(f"{where}.numeric", "min <= edges <= max, all finite", [low, high])
        if len(counts) != len(edges) + 2:
            raise refuse(f"{where}.counts", f"{len(edges) + 2} counts (one per bin)", len(counts))
        return LiveFeature(name, kind, reference, edges=np.array(edges, dtype=np.float64))
    levels = entry.get("categorical")
    if type(levels) is not dict:
        raise refuse(f"{where}.categorical", "an object (a categorical feature's levels)", levels)
    kept, pooled = levels.get("levels"), levels.get("other_levels", [])
    for key, value, limit in (("levels", kept, MAX_LEVELS), ("other_levels", pooled, MAX_KNOWN_LEVELS)):
        if type(value) is not list or len(value) > limit or not all(
                type(v) is str and len(v) <= MAX_NAME_CHARS for v in value):
            raise refuse(f"{where}.categorical.{key}", f"a list of at most {limit} levels", value)
    if len(set(kept) | set(pooled)) != len(kept) + len(pooled):
        raise refuse(f"{where}.categorical", "distinct levels", "a level twice")
    complete = levels.get("complete", True)
    if type(complete) is not bool:
        raise refuse(f"{where}.categorical.complete", "true or false", complete)
    if len(counts) != len(kept) + 3 or counts[-2] != 0:
        raise refuse(f"{where}.counts", f"{len(kept) + 3} counts, 0 of them unseen", counts)
    other, unseen = len(kept), len(kept) + 1
    bins = {level: i for i, level in enumerate(kept)}
    bins.update({level: other for level in pooled})
    # a level not listed is unseen only when the profile lists every training level
    return LiveFeature(name, kind, reference, levels=list(kept), bins=bins, fallback=unseen if complete else other)


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# --- counting -----------------------------------------------------------------------------------

class _Lookup(dict):
    """level -> bin; a value not listed: missing (NaN, None) or the feature's fallback bin."""

    def __init__(self, bins: dict, fallback: int, missing: int):
        super().__init__(bins)
        self.fallback, self.missing_bin = fallback, missing

    def __missing__(self, value: Any) -> int:
        if value is None or (type(value) is float and value != value):
            return self.missing_bin
        text = level_text(value)
        if text != value and text in self:     # a number or boolean whose text is a level
            return self[text]
        return self.fallback


@dataclass(frozen=True)
class Judgement:
    """The drift of one window: per feature (and ``PREDICTION``) its PSI and verdict."""

    rows: int
    scores: dict[str, float]
    detected: dict[str, bool]
    p_values: dict[str, float]


class LiveMonitor:
    """Counts of every request in the profile's bins: totals (counters) and a sliding window."""

    def __init__(self, profile: LiveProfile, feature_names: list[str], *, window: int = DEFAULT_WINDOW,
                 alpha: float = _drift.DEFAULT_ALPHA, classes: list | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1. Got {window} instead.")
        self.profile = profile
        self.window = window
        self.alpha = alpha
        position = {name: i for i, name in enumerate(feature_names)}
        absent = [f.name for f in profile.features if f.name not in position]
        if absent:
            raise ArtifactError(f"The monitoring profile must describe the model's features. Got {absent[0]!r}, "
                                "which the model does not take, instead.")
        offset = 0
        for entry in [*profile.features, *([profile.prediction] if profile.prediction else [])]:
            entry.offset = offset
            offset += entry.n_bins
        self.size = offset
        numeric = [f for f in profile.features if f.numeric]
        self._numeric = numeric
        self._numeric_list = [position[f.name] for f in numeric]
        # the edges, one plane per edge rank (padded with +inf): a value's bin is the number of
        # its feature's edges it reaches, summed over the planes (numpy adds whole planes). Each
        # plane is repeated for ``_tile_rows`` rows, so that the comparison of a slice of rows
        # with it runs over two contiguous arrays (a broadcast of a row of edges runs numpy's
        # inner loop over one row at a time: 2.5x slower on 30 features)
        depth = max((f.edges.size for f in numeric), default=0)
        planes = np.full((depth, len(numeric)), np.inf)
        for j, f in enumerate(numeric):
            planes[:f.edges.size, j] = f.edges
        self._tile_rows = max(1, min(_TILE_ROWS, _TILED_VALUES // max(1, planes.size)))
        self._tiled = np.tile(planes, (1, self._tile_rows))      # depth x (tile rows * numeric features)
        self._numeric_offsets = np.array([f.offset for f in numeric], dtype=np.intp)
        self._numeric_missing = np.array([f.offset + f.missing for f in numeric], dtype=np.intp)
        # the other features' columns are kept with a request (only those: a request's arrays
        # are freed at its binning, a thousand of them at once), each known by its rank there
        self._kept = [position[f.name] for f in profile.features if not f.numeric]
        self._booleans = []
        self._categorical = []
        for f in profile.features:
            if f.kind == "boolean":   # the server holds booleans as 1.0 / 0.0
                self._booleans.append((self._kept.index(position[f.name]), f.offset + f.bins.get("true", f.fallback),
                                       f.offset + f.bins.get("false", f.fallback), f.offset + f.missing))
            elif not f.numeric:
                self._categorical.append((self._kept.index(position[f.name]), _Lookup(
                    {level: f.offset + b for level, b in f.bins.items()}, f.offset + f.fallback, f.offset + f.missing)))
        self._prediction = None
        self._class_values = None
        if profile.prediction is not None:
            p = profile.prediction
            if p.numeric:
                self._prediction = ("numeric", p)
            else:
                lookup = _Lookup({level: p.offset + b for level, b in p.bins.items()}, p.offset + p.fallback,
                                 p.offset + p.missing)
                for value in classes or ():   # the classes as the model answers them: no str() per row
                    lookup[value] = lookup[str(value)] if str(value) in lookup else p.offset + p.fallback
                self._prediction = ("categorical", lookup)
                numbers = sorted({c for c in classes or () if type(c) in (int, float) and c == c})
                if numbers and len(numbers) == len(classes):   # numeric classes: binned by numpy, no dict per row
                    self._class_values = np.array(numbers, dtype=np.float64)
                    self._class_bins = np.array([lookup[c] for c in numbers], dtype=np.intp)
                    self._class_other, self._class_missing = p.offset + p.fallback, p.offset + p.missing
        self._buffers: dict[str, np.ndarray] = {}     # the binning's arrays, kept (see _scratch)
        # the requests not binned yet: their arrays (numeric matrix, other columns, answers, rows)
        self._pending: list[tuple] = []
        self._pending_rows = 0
        self._chunk = max(1, window // 10)
        self._bin_rows = max(self._chunk, BIN_ROWS)
        # the chunk being filled (binned part): its rows and counts
        self._open_rows = 0
        self._open = np.zeros(self.size, dtype=np.int64)
        self._chunks: collections.deque = collections.deque()
        self._chunks_sum = np.zeros(self.size, dtype=np.int64)
        self._chunks_rows = 0
        self._closed = np.zeros(self.size, dtype=np.int64)
        self.rows = 0
        self._judged: tuple[int, Judgement] | None = None

    # -- the request path ----------------------------------------------------------------------
    def observe(self, batch: Any, predictions: Any) -> None:
        """Count a validated batch and the model's answers for it. The request's arrays are
        kept (no copy: the server makes new ones per request) and binned with the others once
        they hold ``BIN_ROWS`` rows (or a chunk's): a dozen numpy calls for them all, whatever
        the number of features or of requests; each chunk (``window / 10`` rows) counted apart."""
        rows = batch.rows
        if self._numeric and (batch.numeric is None or len(self._numeric_list) != batch.numeric.shape[1]):
            block = np.column_stack([batch.columns[i] for i in self._numeric_list])
        else:
            block = batch.numeric     # every numeric column of the schema, in order: the batch's own matrix
        self._pending.append((block, [batch.columns[i] for i in self._kept] if self._kept else None, predictions,
                              rows))
        self._pending_rows += rows
        self.rows += rows
        if self._pending_rows >= self._bin_rows:
            self._bin_pending()

    def _bin_indexes(self, pending: list) -> np.ndarray:
        """The flat bin index of every value of the pending requests: rows x monitored values,
        written in place into one array (the numeric features first)."""
        one = len(pending) == 1

        def stacked(values: list) -> Any:
            return values[0] if one else np.concatenate(values)

        rows = sum(request[3] for request in pending)
        width = len(self._numeric)
        keys = self._scratch("keys", rows, np.intp, width + len(self._booleans) + len(self._categorical)
                             + (self._prediction is not None))
        if width:
            blocks = [block for block, *_ in pending]
            block = blocks[0] if one else np.concatenate(blocks, out=self._scratch("block", rows, np.float64, width))
            self._numeric_bins(block, keys[:, :width])
        column = width
        for column_index, true_bin, false_bin, missing in self._booleans:
            values = stacked([columns[column_index] for _, columns, *_ in pending])
            keys[:, column] = np.where(values == 1.0, true_bin, np.where(values == 0.0, false_bin, missing))
            column += 1
        for column_index, lookup in self._categorical:
            values = stacked([columns[column_index] for _, columns, *_ in pending])
            keys[:, column] = np.fromiter(map(lookup.__getitem__, values), np.intp, len(values))
            column += 1
        if self._prediction is not None:
            kind, how = self._prediction
            values = stacked([np.asarray(answers) for _, _, answers, _ in pending])
            if kind == "numeric":
                values = values.astype(np.float64, copy=False)
                bins = np.searchsorted(how.edges, values, side="right") + how.offset
                keys[:, column] = np.where(np.isfinite(values), bins, how.offset + how.missing)
            elif self._class_values is not None and values.dtype.kind in "iuf":
                keys[:, column] = self._class_indexes(values)
            else:
                keys[:, column] = np.fromiter(map(how.__getitem__, values.tolist()), np.intp, len(values))
        return keys

    def _class_indexes(self, values: np.ndarray) -> np.ndarray:
        """The flat bin index of numeric predictions among numeric classes (as the dict does:
        a class's bin, NaN missing, anything else the fallback)."""
        known = self._class_values
        at = np.minimum(np.searchsorted(known, values), known.size - 1)
        bins = np.where(known[at] == values, self._class_bins[at], self._class_other)
        if values.dtype.kind == "f":
            bins = np.where(np.isnan(values), self._class_missing, bins)
        return bins

    def _numeric_bins(self, block: np.ndarray, out: np.ndarray) -> None:
        """The flat bin index of every numeric value (rows x numeric features), into ``out``."""
        rows, width = block.shape
        step = self._tile_rows
        flat = block.reshape(1, -1)       # (a copy when the batch's matrix is column-major)
        reached = self._scratch("reached", rows * width, np.uint8)
        reaches = self._scratch("reaches", self._tiled.shape[0], bool, self._tiled.shape[1])
        # at most 99 edges (MAX_EDGES): the count of those reached fits in a byte
        for start in range(0, rows * width, step * width):
            end = min(start + step * width, rows * width)
            plane = reaches[:, :end - start]
            np.greater_equal(flat[:, start:end], self._tiled[:, :end - start], out=plane)
            plane.sum(axis=0, dtype=np.uint8, out=reached[start:end])
        np.add(reached.reshape(rows, width), self._numeric_offsets, out=out)
        missing = np.isnan(block, out=self._scratch("missing", rows, bool, width))
        if missing.any():     # (the server's JSON parsers refuse infinities)
            np.copyto(out, self._numeric_missing, where=missing)

    def _scratch(self, name: str, rows: int, dtype: Any, *width: int) -> np.ndarray:
        """A buffer of ``rows`` (x ``width``) kept from one binning to the next: the fresh pages
        of a new array of this size cost more than the work done on them."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < rows or buffer.dtype != dtype or buffer.shape[1:] != width:
            buffer = self._buffers[name] = np.empty((rows, *width), dtype)
        return buffer[:rows]

    def _bin_pending(self) -> None:
        """Bin the pending requests at once, each chunk's counts apart: a request goes whole into
        the chunk being filled, which closes once it holds ``window / 10`` rows (one bincount
        per chunk over its rows' bin indexes, contiguous in the pending order)."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        keys = self._bin_indexes(pending)
        start = end = 0
        last = len(pending) - 1
        for rank, request in enumerate(pending):
            end += request[3]
            self._open_rows += request[3]
            if self._open_rows >= self._chunk or rank == last:
                counts = np.bincount(keys[start:end].ravel(), minlength=self.size)
                self._open += counts
                self._closed += counts
                start = end
                if self._open_rows >= self._chunk:
                    self._close_chunk()

    def _close_chunk(self) -> None:
        self._chunks.append((self._open_rows, self._open))
        self._chunks_sum += self._open
        self._chunks_rows += self._open_rows
        self._open, self._open_rows = np.zeros(self.size, dtype=np.int64), 0
        while self._chunks and self._chunks_rows - self._chunks[0][0] >= self.window:
            rows, counts = self._chunks.popleft()
            self._chunks_sum -= counts
            self._chunks_rows -= rows

    # -- scraping ------------------------------------------------------------------------------
    def totals(self) -> np.ndarray:
        """Every row counted since the start (the counters); the pending requests binned first."""
        if self._pending:
            self._bin_pending()
        return self._closed.copy()

    def snapshot(self) -> tuple[int, int, np.ndarray]:
        """(rows seen, rows in the window, the window's counts): taken where requests are counted
        (the pending requests binned first)."""
        if self._pending:
            self._bin_pending()
        return self.rows, self._chunks_rows + self._open_rows, self._chunks_sum + self._open

    def judge(self, snapshot: tuple[int, int, np.ndarray], *, seed: int = 0) -> Judgement:
        """The window's drift: per feature the PSI against the profile and whether the core's
        permutation test flags it at ``alpha / tests`` (Bonferroni, as ``monitor.assess``).
        Safe to call in another thread; the last result is kept for an unchanged window."""
        seen, rows, counts = snapshot
        if self._judged is not None and self._judged[0] == seen:
            return self._judged[1]
        entries = [*self.profile.features, *([self.profile.prediction] if self.profile.prediction else [])]
        level = self.alpha / max(1, len(entries))
        draws = _drift.draws_needed(self.alpha, len(entries))
        rng = np.random.default_rng(seed)
        scores, detected, p_values = {}, {}, {}
        for entry in entries:
            name = PREDICTION if entry is self.profile.prediction else entry.name
            reference = _drift.drift_bins(entry.reference, entry.numeric)
            observed = _drift.drift_bins(counts[entry.offset:entry.offset + entry.n_bins], entry.numeric)
            p_value = _drift.permutation_p_value(reference, observed, rng=rng, max_draws=draws) if rows else 1.0
            scores[name] = _drift.psi(reference, observed) if rows else 0.0
            p_values[name] = p_value
            detected[name] = bool(rows) and p_value <= level
        judgement = Judgement(rows, scores, detected, p_values)
        self._judged = (seen, judgement)
        return judgement

    def labels(self) -> list[tuple[str, list[str], int]]:
        """(feature, bin labels, offset) of every feature, the predictions last (``PREDICTION``)."""
        out = [(f.name, f.labels, f.offset) for f in self.profile.features]
        if self.profile.prediction is not None:
            p = self.profile.prediction
            out.append((PREDICTION, p.labels, p.offset))
        return out
