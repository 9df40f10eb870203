"""The request log: a sample of what the model server was asked and what it answered.

JSON lines files ``requests-<UTC yyyymmddTHHMMSS>-<pid>-<n>.jsonl`` in one folder, one line
per logged request (log format 2), its values by column, N of them (the request's rows)::

    {"v": 2, "time": "2026-12-07T19:30:00.123Z", "request_id": "...", "model_sha256": "<64 hex>",
     "rows": N, "features": {"name": [N values as received], ...},
     "prediction": [N labels or numbers], "probabilities": {"class": [N p], ...} | null}

:class:`RequestLogWriter` (in the server; no pydantic, no pandas) samples requests, queues
them without ever blocking (a full queue drops and counts), and a background thread writes
them (one ``orjson.dumps`` per request), flushed per batch, rotated by size, oldest files
deleted beyond a total. A process killed mid-write leaves at most a torn last line, which
:func:`read_request_log` skips.

:func:`read_request_log` (06_monitor) reads a folder into a DataFrame, one row per predicted
row, built by column. The folder is hostile input: sizes, line lengths, rows and features per
line are bounded, every line is checked (every list N long, values of the allowed types), and
a bad one is refused naming its file and line.
"""

from __future__ import annotations

import collections
import math
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ArtifactError
from ._layout import MAX_FEATURES, MAX_NAME_CHARS

LOG_VERSION = 2
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024
#: rows waiting for the writer, at most (beyond: dropped and counted)
DEFAULT_QUEUE_ROWS = 50_000
#: the writer writes what is queued this often (or sooner, when the queue is half full)
WRITE_EVERY = 0.2
#: the writer writes its lines once they hold this many bytes (and at the end of a batch)
WRITE_BYTES = 1024 * 1024
#: the writer hands the GIL back to the event loop after this much work (seconds)
HAND_OVER_EVERY = 0.001
#: a line (one request) is at most this long: longer requests are dropped (and counted) by the writer, never
#: written torn, and refused by the reader. The scale of the server's body limit (``max_body_bytes``, 10 MiB by
#: default): a request the server takes is written unless its values grow in JSON (or with many classes)
MAX_LINE_BYTES = 16 * 1024 * 1024
#: rows of one line (one request) at most: a request of more is dropped by the writer, refused by the reader
MAX_LINE_ROWS = 1_000_000
#: what :func:`read_request_log` reads at most by default (every file of the folder together)
DEFAULT_MAX_READ_BYTES = 1024 * 1024 * 1024
MAX_CLASSES = 10_000
#: a request id: the OIP ``id`` or ``x-request-id`` a client sends, or a generated uuid4 hex
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FILE_NAME = re.compile(r"requests-(\d{8}T\d{6})-(\d{1,10})-(\d{1,10})\.jsonl")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"v", "time", "request_id", "model_sha256", "rows", "features", "prediction", "probabilities"})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float})


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: Any) -> bool:
    return type(value) is str and REQUEST_ID.fullmatch(value) is not None


def log_files(folder: Path) -> list[Path]:
    """The log files of ``folder``, oldest first (by the time in their name, then their number)."""
    return _sorted_log_files(Path(folder).iterdir())


def replica_log_files(folder: Path) -> list[Path]:
    """The log files of ``folder`` and of its subfolders one level down (a log collected from
    the pods: one subfolder per replica, whose files may share names: the pid is 1 in every
    pod), oldest first. A subfolder that is a symbolic link is not followed."""
    folder = Path(folder)
    paths = list(folder.iterdir())
    for sub in sorted(paths):
        if sub.is_dir() and not sub.is_symlink():
            paths.extend(sub.iterdir())
    return _sorted_log_files(paths)


def _sorted_log_files(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        match = FILE_NAME.fullmatch(path.name)
        if match:
            found.append(((match[1], int(match[3]), int(match[2]), str(path)), path))
    return [path for _, path in sorted(found)]


# --- writing (the server) ---------------------------------------------------------------------

class RequestLogWriter:
    """Writes a sample of the requests to ``folder`` from a background thread.

    ``offer`` is called on the request path: it decides the sample (whole requests), and
    queues the request's arrays as they are (JSON is made by the writer thread); it never
    blocks, and a queue holding ``queue_rows`` rows drops what comes (``dropped``).
    ``features`` is a dict (name -> the column of values) or the server's validated batch
    (``columns``, ``numeric``: its rows x k matrix of the numeric columns, or None), named by
    ``names`` (the batch's columns in order) with ``numeric`` the positions of the matrix's
    columns: the writer thread makes the columns of a batch (the request path only queues it).
    ``booleans`` names the columns whose 1.0/0.0 are written as ``true``/``false`` (the server
    holds booleans as numbers). ``written``, ``dropped`` and
    ``sampled_out`` count rows (a request whose line would be longer than ``MAX_LINE_BYTES`` or
    than a file, or of more than ``MAX_LINE_ROWS`` rows, is dropped whole).
    """

    def __init__(self, folder: str | os.PathLike, *, sample: float, model_sha256: str,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 queue_rows: int = DEFAULT_QUEUE_ROWS, booleans: Iterable[str] = (),
                 classes: Sequence[Any] | None = None, seed: int | None = None, names: Sequence[str] = (),
                 numeric: Sequence[int] = ()):
        if not 0 <= sample <= 1:
            raise ValueError(f"sample must be between 0 and 1. Got {sample} instead.")
        if not 1024 <= max_file_bytes <= max_total_bytes:
            raise ValueError(f"max_file_bytes must be at least 1024 and at most max_total_bytes ({max_total_bytes}). "
                             f"Got {max_file_bytes} instead.")
        if _SHA256.fullmatch(model_sha256 or "") is None:
            raise ValueError(f"model_sha256 must be 64 lower-case hex digits. Got {model_sha256!r} instead.")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.model_sha256 = model_sha256
        self.max_file_bytes, self.max_total_bytes, self.queue_rows = max_file_bytes, max_total_bytes, queue_rows
        self.booleans = frozenset(booleans)
        self.names, self.numeric = list(names), list(numeric)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.written = self.dropped = self.sampled_out = 0
        self._random = random.Random(seed).random
        self._queue: collections.deque = collections.deque()
        self._queued_rows = 0
        self._wake = threading.Condition()
        self._closed = False
        self._flushing = False
        self._file = None
        self._file_bytes = 0      # the current file's bytes, its lines not written yet included
        self._lines: list[bytes] = []
        self._lines_rows = self._lines_bytes = 0
        self._files_opened = 0
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    # -- the request path ----------------------------------------------------------------------
    def offer(self, request_id: str, features: dict[str, Any], predictions: Any, probabilities: Any = None,
              rows: int | None = None) -> bool:
        """Queue one request (``features``: name -> the column of values, one per row;
        ``predictions`` one per row; ``probabilities`` rows x classes or None). Returns whether
        it was queued; never blocks."""
        rows = len(predictions) if rows is None else rows
        return self.wants(rows) and self.queue(request_id, features, predictions, probabilities, rows)

    def wants(self, rows: int) -> bool:
        """The sampling decision for a request of ``rows`` rows (counted when it is left out):
        taken before anything is made for the log."""
        if self.sample < 1 and (self.sample == 0 or self._random() >= self.sample):
            self.sampled_out += rows
            return False
        return True

    def queue(self, request_id: str, features: dict[str, Any], predictions: Any, probabilities: Any,
              rows: int) -> bool:
        """Queue a request :meth:`wants` took; False (and counted) when the queue is full."""
        with self._wake:
            if self._closed or self._queued_rows + rows > self.queue_rows:
                self.dropped += rows
                return False
            self._queue.append((time.time(), request_id, features, predictions, probabilities, rows))
            self._queued_rows += rows
            if self._queued_rows * 2 > self.queue_rows:   # else the writer wakes on its own (WRITE_EVERY)
                self._wake.notify()
        return True

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                # woken by a half-full queue, a flush or close; else every WRITE_EVERY seconds:
                # a wake-up per request would hand the GIL back and forth with the event loop
                self._wake.wait_for(lambda: self._closed or self._flushing or self._queued_rows * 2 > self.queue_rows,
                                    WRITE_EVERY)
                batch = list(self._queue)
                self._queue.clear()
                if not batch and self._closed:
                    break
            try:
                self._write(batch)
            except OSError:  # a full or vanished disk: what was taken is lost, and counted
                self.dropped += sum(item[-1] for item in batch)
                self._close_file()
            finally:
                with self._wake:
                    self._queued_rows -= sum(item[-1] for item in batch)
                    self._wake.notify_all()
        self._close_file()

    def _write(self, batch: list) -> None:
        import orjson

        dumps, numpy = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        limit = min(MAX_LINE_BYTES, self.max_file_bytes)
        handover = time.perf_counter() + HAND_OVER_EVERY
        for stamp, request_id, features, predictions, probabilities, rows in batch:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"
            shares = None
            if probabilities is not None and self.classes is not None:
                by_class = _by_column(probabilities)
                shares = dict(zip(self.classes, by_class))
            try:
                line = dumps({"v": LOG_VERSION, "time": when, "request_id": request_id,
                              "model_sha256": self.model_sha256, "rows": rows,
                              "features": self._features(features),
                              "prediction": _json_column(predictions), "probabilities": shares},
                             option=numpy) + b"\n"
            except TypeError:   # orjson.JSONEncodeError: a value it cannot write; the thread goes on
                line = b""
            if not line or len(line) > limit or rows > MAX_LINE_ROWS:   # never a torn or unreadable line: dropped
                self.dropped += rows
            else:
                self._append(line, rows)
            if time.perf_counter() >= handover:   # hand the GIL to the event loop after ~1 ms of work (not
                time.sleep(0)                      # per request: each hand-over may cost it a forced switch)
                handover = time.perf_counter() + HAND_OVER_EVERY
        self._write_lines()

    def _features(self, features: Any) -> dict[str, Any]:
        """name -> the column as written, from a dict or from the server's batch (its numeric
        matrix's columns made at once)."""
        if type(features) is dict:
            return {name: self._values(name, column) for name, column in features.items()}
        made = {}
        matrix = features.numeric
        if matrix is not None and self.numeric and matrix.shape[1] == len(self.numeric):
            if len(self.numeric) == len(self.names):   # every column numeric: the matrix's, in order
                return dict(zip(self.names, _by_column(matrix)))
            made = dict(zip(self.numeric, _by_column(matrix)))
        return {name: made[i] if i in made else self._values(name, column)
                for i, (name, column) in enumerate(zip(self.names, features.columns))}

    def _values(self, name: str, column: Any) -> Any:
        if name in self.booleans:   # the server holds booleans as 1.0/0.0 (NaN: missing): written true/false/null
            return [None if v is None or v != v else bool(v) for v in _plain_list(column)]
        return _json_column(column)

    def _append(self, line: bytes, rows: int) -> None:
        """Keep a line for the current file (written by :meth:`_write_lines`: one system call
        for a batch's lines, not one per 8 KiB, each of which hands the GIL back and forth)."""
        if self._file is None or self._file_bytes + len(line) > self.max_file_bytes:
            self._write_lines()
            self._rotate()
        self._lines.append(line)
        self._lines_rows += rows
        self._lines_bytes += len(line)
        self._file_bytes += len(line)
        if self._lines_bytes >= WRITE_BYTES:
            self._write_lines()

    def _write_lines(self) -> None:
        if self._lines:
            lines, rows = self._lines, self._lines_rows
            self._lines, self._lines_rows, self._lines_bytes = [], 0, 0
            self._file.write(b"".join(lines))
            self._file.flush()
            self.written += rows

    def _rotate(self) -> None:
        """Close the current file, delete the oldest beyond the total, open the next one."""
        self._close_file()
        self._files_opened += 1
        name = f"requests-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{self._files_opened}.jsonl"
        room = self.max_total_bytes - self.max_file_bytes  # what the others may take: the new one fills the rest
        files = log_files(self.folder)
        sizes = {path: _size(path) for path in files}
        total = sum(sizes.values())
        for path in files:
            if total <= room:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= sizes[path]
        self._file = open(self.folder / name, "ab")
        self._file_bytes = 0

    def _close_file(self) -> None:
        self._lines, self._lines_rows, self._lines_bytes = [], 0, 0   # (lines not written: a failed disk)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is written (tests, shutdown); False on timeout."""
        with self._wake:
            self._flushing = True
            self._wake.notify_all()
            done = self._wake.wait_for(lambda: self._queued_rows == 0, timeout)
            self._flushing = False
            return done

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout)


def _plain_list(values: Any) -> list:
    """A column as a list of Python values (NaN becomes null when written)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _json_column(values: Any) -> Any:
    """A column as orjson writes it: a numeric numpy array as it is, made contiguous (the
    server's numeric columns are strided views of its matrix; OPT_SERIALIZE_NUMPY writes NaN
    as null), anything else (text, objects) as a list of Python values."""
    kind = getattr(getattr(values, "dtype", None), "kind", None)
    if kind in ("f", "i", "u", "b") and values.ndim == 1:
        import numpy as np

        return np.ascontiguousarray(values)
    return _plain_list(values)


#: a table of at most this many values is made into lists (fewer calls); beyond, contiguous
#: arrays (orjson writes their numbers faster than the lists' Python floats are made)
_AS_LISTS = 512


def _by_column(table: Any) -> list:
    """The columns of a rows x classes table (contiguous, for orjson)."""
    import numpy as np

    table = np.asarray(table)
    if table.dtype.kind in ("f", "i", "u"):
        if table.size <= _AS_LISTS and table.dtype.itemsize == 8:   # one call for a few rows (an array per
            return table.T.tolist()      # column costs more than its values); float32 as orjson writes it
        return list(np.ascontiguousarray(table.T))
    return [list(column) for column in zip(*_plain_list(table))]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- reading (06_monitor) ---------------------------------------------------------------------

def read_request_log(folder: str | os.PathLike, *, model_sha256: str | None = None,
                     features: Sequence[str] | None = None, max_bytes: int = DEFAULT_MAX_READ_BYTES):
    """The rows of the request log in ``folder`` (and its subfolders one level down: the
    replicas of a collected log, :func:`replica_log_files`) as a DataFrame.

    Columns: ``request_id``, ``row``, ``time`` (UTC), ``model_sha256``, one per feature (in
    the order of ``features`` when given), ``prediction``, ``proba_<class>``. A torn last line
    of a file (a writer killed mid-line) is skipped and counted in ``frame.attrs["torn_lines"]``;
    any other bad line is an :class:`~mlops_kit.errors.ArtifactError` naming the file and line.
    Rows of a model other than ``model_sha256`` are refused (without it: every row must come
    from one model). An empty log is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"The request log must be a folder. Got {'a file' if folder.exists() else 'nothing'} "
                            f"at {folder} instead.", path=folder,
                            hint="serve with --log-requests DIR --log-sample F (or serve.monitor.sample) first.")
    if model_sha256 is not None and _SHA256.fullmatch(model_sha256) is None:
        raise ValueError(f"model_sha256 must be 64 lower-case hex digits. Got {model_sha256!r} instead.")
    files = replica_log_files(folder)
    total = 0
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise ArtifactError(f"{path} must be a regular file of the request log. Got "
                                f"{'a symbolic link' if path.is_symlink() else 'something else'} instead.", path=path)
        total += path.stat().st_size
        if total > max_bytes:
            raise ArtifactError(f"The request log in {folder} must be at most {max_bytes} bytes. Got more instead "
                                f"(at {path.name}).", path=path, hint="read a copy with fewer files, or raise max_bytes.")
    records: list[dict] = []
    torn = 0
    seen_sha = model_sha256
    for path in files:
        lines, torn_here = _read_file(path, max_bytes)
        torn += torn_here
        for number, record in lines:
            if seen_sha is None:
                seen_sha = record["model_sha256"]
            elif record["model_sha256"] != seen_sha:
                if model_sha256 is not None:
                    raise ArtifactError(f"{path}:{number} must be a request to model {model_sha256} (the model "
                                        f"monitored). Got a request to model {record['model_sha256']} instead: "
                                        "the log is of another model.", path=path)
                raise ArtifactError(f"{path}:{number} must be a request to the same model as the lines before "
                                    f"({seen_sha}). Got model {record['model_sha256']} instead.", path=path,
                                    hint="pass the model's sha256 to keep to one model's log.")
            records.append(record)
    if not records:
        raise ArtifactError(f"The request log in {folder} must hold at least one row. Got "
                            f"{'no log file' if not files else 'no complete line'} instead.", path=folder,
                            hint="send requests to a server started with a sample rate above 0.")
    return _frame(records, features, torn, [str(p.relative_to(folder)) for p in files])


def _frame(records: list[dict], features: Sequence[str] | None, torn: int, files: list[str]) -> Any:
    """The DataFrame of checked lines, one row per predicted row, built by column."""
    import numpy as np
    import pandas as pd

    counts = np.array([r["rows"] for r in records], dtype=np.int64)
    ends = np.cumsum(counts)
    names = list(features) if features is not None else list(dict.fromkeys(
        name for record in records for name in record["features"]))
    classes = list(dict.fromkeys(c for record in records if record["probabilities"] for c in record["probabilities"]))
    table: dict[str, Any] = {
        "request_id": np.repeat(np.array([r["request_id"] for r in records], dtype=object), counts),
        "row": np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - counts, counts),
        "time": pd.to_datetime([r["time"] for r in records], utc=True, format="ISO8601").repeat(counts),
        "model_sha256": np.repeat(np.array([r["model_sha256"] for r in records], dtype=object), counts),
    }
    for name in names:
        table[name] = _column(_joined([r["features"].get(name) for r in records], counts, None))
    table["prediction"] = _column(_joined([r["prediction"] for r in records], counts, None))
    for label in classes:
        shares = _joined([(r["probabilities"] or {}).get(label) for r in records], counts, math.nan)
        table[f"proba_{label}"] = np.array(shares, dtype=np.float64)
    frame = pd.DataFrame(table)
    frame.attrs["torn_lines"] = torn
    frame.attrs["files"] = files   # relative to the folder: POD/NAME for a collected log
    return frame


def _joined(columns: list, counts: Any, missing: Any) -> list:
    """The lines' lists one after the other (a line without the column: ``missing`` rows)."""
    joined: list = []
    for column, count in zip(columns, counts.tolist()):
        joined.extend(column if column is not None else [missing] * count)
    return joined


def _column(values: list) -> Any:
    """Numbers (null: NaN) as float64; anything else as sent, in an object column (null: None)."""
    import numpy as np
    import pandas as pd

    if set(map(type, values)) <= {int, float, type(None)}:
        return pd.Series(np.array(values, dtype=np.float64))
    return pd.Series(values, dtype=object)


def _read_file(path: Path, max_bytes: int) -> tuple[list[tuple[int, dict]], int]:
    """The lines of one file (with their numbers), and 1 when its last line is torn."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes)
    lines = data.split(b"\n")
    torn = 1 if lines[-1] else 0  # no newline at the end: the writer was killed mid-line
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if len(line) > MAX_LINE_BYTES:
            raise ArtifactError(f"{path}:{number} must be at most {MAX_LINE_BYTES} bytes. Got {len(line)} instead.",
                                path=path)
        records.append((number, _parse_line(path, number, line)))
    return records, torn


def _parse_line(path: Path, number: int, line: bytes) -> dict:
    """One line, checked: its keys, and every list of values as long as the request's rows and
    of the allowed types (checked by column: a set of the types, the extremes)."""
    import orjson

    where = f"{path}:{number}"

    def refuse(what: str, got: Any) -> ArtifactError:
        shown = repr(got)
        return ArtifactError(f"{where} must be {what}. Got {shown[:80] + '...' if len(shown) > 80 else shown} "
                             "instead.", path=path)

    try:   # orjson refuses NaN, Infinity, numbers beyond a double and nesting beyond 1024
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise refuse("a JSON object of the request log (one line per request)", f"not JSON: {exc}") from None
    if type(record) is not dict:
        raise refuse("a JSON object of the request log", record)
    if "v" in record and record["v"] != LOG_VERSION:
        raise ArtifactError(f"{where}: the log format version must be {LOG_VERSION} (key v). Got "
                            f"{str(record['v'])[:20]} instead.", path=path,
                            hint="the log was written by another version of the kit's server: write it again "
                                 "with this version's server.")
    if record.keys() != _KEYS:
        raise refuse(f"an object with exactly the keys {sorted(_KEYS)}", sorted(record)[:10])
    if type(record["v"]) is not int:
        raise refuse(f"the log format version {LOG_VERSION} (key v)", record["v"])
    if not valid_request_id(record["request_id"]):
        raise refuse("a request id of 1 to 128 characters among A-Z a-z 0-9 . _ : - (key request_id)",
                     record["request_id"])
    rows = record["rows"]
    if type(rows) is not int or not 1 <= rows <= MAX_LINE_ROWS:
        raise refuse(f"a number of rows between 1 and {MAX_LINE_ROWS} (key rows)", rows)
    if type(record["model_sha256"]) is not str or _SHA256.fullmatch(record["model_sha256"]) is None:
        raise refuse("64 lower-case hex digits (key model_sha256)", record["model_sha256"])
    if type(record["time"]) is not str or len(record["time"]) > 40 or not _is_time(record["time"]):
        raise refuse("an ISO 8601 time (key time)", record["time"])

    def check_list(values: Any, key: str, allowed: frozenset, what: str) -> set:
        if type(values) is not list or len(values) != rows:
            got = f"a list of {len(values)}" if type(values) is list else type(values).__name__
            raise refuse(f"a list of {rows} {what} (one per row: key rows is {rows}) ({key})", got)
        kinds = set(map(type, values))
        if not kinds <= allowed:
            raise refuse(f"a list of {what} ({key})", sorted(k.__name__ for k in kinds - allowed))
        return kinds

    values = record["features"]
    if type(values) is not dict or len(values) > MAX_FEATURES:
        raise refuse(f"an object of at most {MAX_FEATURES} features (key features)",
                     f"{len(values)} features" if type(values) is dict else type(values).__name__)
    for name, column in values.items():
        if len(name) > MAX_NAME_CHARS:
            raise refuse(f"feature names of at most {MAX_NAME_CHARS} characters (key features)", name)
        check_list(column, f"feature {name!r}", _SCALARS, "strings, numbers, booleans or nulls")
    check_list(record["prediction"], "key prediction", _SCALARS - {type(None)}, "labels or numbers")
    shares = record["probabilities"]
    if shares is not None:
        if type(shares) is not dict or len(shares) > MAX_CLASSES:
            raise refuse(f"null or an object of at most {MAX_CLASSES} classes (key probabilities)",
                         f"{len(shares)} classes" if type(shares) is dict else type(shares).__name__)
        for label, column in shares.items():
            if len(label) > MAX_NAME_CHARS:
                raise refuse(f"class names of at most {MAX_NAME_CHARS} characters (key probabilities)", label)
            check_list(column, f"class {label!r} of key probabilities", _NUMBERS, "probabilities")
            if not 0 <= min(column) <= max(column) <= 1:
                raise refuse(f"probabilities between 0 and 1 (class {label!r} of key probabilities)",
                             [min(column), max(column)])
    return record


#: The times a line may carry: what the reader's ``pd.to_datetime(format="ISO8601")`` reads
#: (``datetime.fromisoformat`` alone also takes an offset with seconds, ``+00:00:00``, which
#: pandas refuses later, while the frame is built: a traceback instead of the line named).
_TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def _is_time(text: str) -> bool:
    from datetime import datetime

    if not _TIME_PATTERN.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        return False
