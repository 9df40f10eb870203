"""The request log: a sample of what the model server was asked and what it answered.

JSON lines files ``requests-<UTC yyyymmddTHHMMSS>-<pid>-<n>.jsonl`` in one folder, one line
per predicted row (a request of 100 rows: 100 lines sharing its ``request_id``, ``row`` 0..99)::

    {"v": 1, "time": "2026-12-07T19:30:00.123Z", "request_id": "...", "row": 0,
     "model_sha256": "<64 hex>", "features": {"name": value as received, ...},
     "prediction": label or number, "probabilities": {"class": p, ...} | null}

:class:`RequestLogWriter` (in the server; no pydantic, no pandas) samples requests, queues
them without ever blocking (a full queue drops and counts), and a background thread writes
them, flushed per batch, rotated by size, oldest files deleted beyond a total. A process
killed mid-write leaves at most a torn last line, which :func:`read_request_log` skips.

:func:`read_request_log` (06_monitor) reads a folder into a DataFrame. The folder is hostile
input: sizes, line lengths and features per line are bounded, every line is checked, and a
bad one is refused naming its file and line.
"""

from __future__ import annotations

import collections
import json
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

LOG_VERSION = 1
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024
#: rows waiting for the writer, at most (beyond: dropped and counted)
DEFAULT_QUEUE_ROWS = 50_000
#: the writer writes what is queued this often (or sooner, when the queue is half full)
WRITE_EVERY = 0.2
#: a line (one row) is at most this long: longer rows are dropped by the writer, refused by the reader
MAX_LINE_BYTES = 1024 * 1024
#: what :func:`read_request_log` reads at most by default (every file of the folder together)
DEFAULT_MAX_READ_BYTES = 1024 * 1024 * 1024
MAX_CLASSES = 10_000
MAX_ROW = 10_000_000
#: a request id: the OIP ``id`` or ``x-request-id`` a client sends, or a generated uuid4 hex
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FILE_NAME = re.compile(r"requests-(\d{8}T\d{6})-(\d{1,10})-(\d{1,10})\.jsonl")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"v", "time", "request_id", "row", "model_sha256", "features", "prediction", "probabilities"})


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: Any) -> bool:
    return type(value) is str and REQUEST_ID.fullmatch(value) is not None


def log_files(folder: Path) -> list[Path]:
    """The log files of ``folder``, oldest first (by the time in their name, then their number)."""
    found = []
    for path in Path(folder).iterdir():
        match = FILE_NAME.fullmatch(path.name)
        if match:
            found.append(((match[1], int(match[3]), int(match[2])), path))
    return [path for _, path in sorted(found)]


# --- writing (the server) ---------------------------------------------------------------------

class RequestLogWriter:
    """Writes a sample of the requests to ``folder`` from a background thread.

    ``offer`` is called on the request path: it decides the sample (whole requests), and
    queues the request's arrays as they are (JSON is made by the writer thread); it never
    blocks, and a queue holding ``queue_rows`` rows drops what comes (``dropped``).
    ``features`` names the columns in order; ``booleans`` those whose 1.0/0.0 are written as
    ``true``/``false`` (the server holds booleans as numbers).
    """

    def __init__(self, folder: str | os.PathLike, *, sample: float, model_sha256: str,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 queue_rows: int = DEFAULT_QUEUE_ROWS, booleans: Iterable[str] = (),
                 classes: Sequence[Any] | None = None, seed: int | None = None):
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
        self.classes = None if classes is None else [str(c) for c in classes]
        self.written = self.dropped = self.sampled_out = 0
        self._random = random.Random(seed).random
        self._queue: collections.deque = collections.deque()
        self._queued_rows = 0
        self._wake = threading.Condition()
        self._closed = False
        self._flushing = False
        self._file = None
        self._file_bytes = 0
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
        if self.sample < 1 and (self.sample == 0 or self._random() >= self.sample):
            self.sampled_out += rows
            return False
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

        dumps = orjson.dumps
        for stamp, request_id, features, predictions, probabilities, rows in batch:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"
            names = list(features)
            values = zip(*(self._values(name, column) for name, column in features.items())) if names else [()] * rows
            answers = _plain_list(predictions)
            shares = (_plain_list(probabilities) if probabilities is not None and self.classes is not None
                      else [None] * rows)
            classes = self.classes
            # the keys of every line, made once per request (the request id is validated: no escaping)
            head = dumps({"v": LOG_VERSION, "time": when, "request_id": request_id})[:-1] + b',"row":'
            sha = b',"model_sha256":"' + self.model_sha256.encode() + b'","features":'
            lines = []
            for row, (row_values, answer, share) in enumerate(zip(values, answers, shares)):
                line = b"".join((head, str(row).encode(), sha, dumps(dict(zip(names, row_values))), b',"prediction":',
                                 dumps(answer), b',"probabilities":',
                                 dumps(None if share is None else dict(zip(classes, share))), b"}\n"))
                if len(line) > MAX_LINE_BYTES:
                    self.dropped += 1
                    continue
                lines.append(line)
            self._append(lines)
            time.sleep(0)   # hand the GIL to the event loop between requests: it never waits a switch interval
        if self._file is not None:
            self._file.flush()

    def _values(self, name: str, column: Any) -> list:
        values = _plain_list(column)
        if name in self.booleans:
            return [None if v is None or v != v else bool(v) for v in values]
        return values

    def _append(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._file is None or self._file_bytes + len(line) > self.max_file_bytes:
                self._rotate()
            self._file.write(line)
            self._file_bytes += len(line)
            self.written += 1

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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- reading (06_monitor) ---------------------------------------------------------------------

def read_request_log(folder: str | os.PathLike, *, model_sha256: str | None = None,
                     features: Sequence[str] | None = None, max_bytes: int = DEFAULT_MAX_READ_BYTES):
    """The rows of the request log in ``folder`` as a DataFrame.

    Columns: ``request_id``, ``row``, ``time`` (UTC), ``model_sha256``, one per feature (in
    the order of ``features`` when given), ``prediction``, ``proba_<class>``. A torn last line
    of a file (a writer killed mid-line) is skipped and counted in ``frame.attrs["torn_lines"]``;
    any other bad line is an :class:`~mlops_kit.errors.ArtifactError` naming the file and line.
    Rows of a model other than ``model_sha256`` are refused (without it: every row must come
    from one model). An empty log is an error.
    """
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"The request log must be a folder. Got {'a file' if folder.exists() else 'nothing'} "
                            f"at {folder} instead.", path=folder,
                            hint="serve with --log-requests DIR --log-sample F (or serve.monitor.sample) first.")
    if model_sha256 is not None and _SHA256.fullmatch(model_sha256) is None:
        raise ValueError(f"model_sha256 must be 64 lower-case hex digits. Got {model_sha256!r} instead.")
    files = log_files(folder)
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
        rows, torn_here = _read_file(path, max_bytes)
        torn += torn_here
        for number, record in rows:
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
    names = list(features) if features is not None else list(dict.fromkeys(
        name for record in records for name in record["features"]))
    classes = list(dict.fromkeys(c for record in records if record["probabilities"] for c in record["probabilities"]))
    table: dict[str, Any] = {
        "request_id": [r["request_id"] for r in records],
        "row": pd.array([r["row"] for r in records], dtype="int64"),
        "time": pd.to_datetime([r["time"] for r in records], utc=True, format="ISO8601"),
        "model_sha256": [r["model_sha256"] for r in records],
    }
    for name in names:
        table[name] = _column([r["features"].get(name) for r in records])
    table["prediction"] = _column([r["prediction"] for r in records])
    for label in classes:
        table[f"proba_{label}"] = [(r["probabilities"] or {}).get(label, math.nan) for r in records]
    frame = pd.DataFrame(table)
    frame.attrs["torn_lines"] = torn
    frame.attrs["files"] = [p.name for p in files]
    return frame


def _column(values: list) -> Any:
    """Numbers (null: NaN) as float64; anything else as sent, in an object column (null: None)."""
    import pandas as pd

    if all(type(v) in (int, float) or v is None for v in values):
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    return pd.Series(values, dtype=object)


def _read_file(path: Path, max_bytes: int) -> tuple[list[tuple[int, dict]], int]:
    """The rows of one file (with their line numbers), and 1 when its last line is torn."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes)
    lines = data.split(b"\n")
    torn = 1 if lines[-1] else 0  # no newline at the end: the writer was killed mid-line
    rows = []
    for number, line in enumerate(lines[:-1], start=1):
        if len(line) > MAX_LINE_BYTES:
            raise ArtifactError(f"{path}:{number} must be at most {MAX_LINE_BYTES} bytes. Got {len(line)} instead.",
                                path=path)
        rows.append((number, _parse_line(path, number, line)))
    return rows, torn


def _parse_line(path: Path, number: int, line: bytes) -> dict:
    where = f"{path}:{number}"

    def refuse(what: str, got: Any) -> ArtifactError:
        shown = repr(got)
        return ArtifactError(f"{where} must be {what}. Got {shown[:80] + '...' if len(shown) > 80 else shown} "
                             "instead.", path=path)

    try:
        record = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise refuse("a JSON object of the request log (one line per row)", line[:80].decode("utf-8", "replace")) \
            from None
    if type(record) is not dict:
        raise refuse("a JSON object of the request log", record)
    if record.keys() != _KEYS:
        raise refuse(f"an object with exactly the keys {sorted(_KEYS)}", sorted(record)[:10])
    if record["v"] != LOG_VERSION or type(record["v"]) is not int:
        raise refuse(f"a line of log version {LOG_VERSION} (key v)", record["v"])
    if not valid_request_id(record["request_id"]):
        raise refuse("a request id of 1 to 128 characters among A-Z a-z 0-9 . _ : - (key request_id)",
                     record["request_id"])
    if type(record["row"]) is not int or not 0 <= record["row"] <= MAX_ROW:
        raise refuse(f"a row number between 0 and {MAX_ROW} (key row)", record["row"])
    if type(record["model_sha256"]) is not str or _SHA256.fullmatch(record["model_sha256"]) is None:
        raise refuse("64 lower-case hex digits (key model_sha256)", record["model_sha256"])
    if type(record["time"]) is not str or len(record["time"]) > 40 or not _is_time(record["time"]):
        raise refuse("an ISO 8601 time (key time)", record["time"])
    values = record["features"]
    if type(values) is not dict or len(values) > MAX_FEATURES:
        raise refuse(f"an object of at most {MAX_FEATURES} feature values (key features)", type(values).__name__)
    for name, value in values.items():
        if len(name) > MAX_NAME_CHARS:
            raise refuse(f"feature names of at most {MAX_NAME_CHARS} characters (key features)", name)
        if not _scalar(value):
            raise refuse(f"a string, number, boolean or null (feature {name!r})", value)
    if not _scalar(record["prediction"]) or record["prediction"] is None:
        raise refuse("a label or a number (key prediction)", record["prediction"])
    shares = record["probabilities"]
    if shares is not None:
        if type(shares) is not dict or len(shares) > MAX_CLASSES:
            raise refuse(f"null or an object of at most {MAX_CLASSES} class probabilities (key probabilities)",
                         type(shares).__name__)
        for label, share in shares.items():
            if len(label) > MAX_NAME_CHARS or type(share) not in (int, float) or not 0 <= share <= 1:
                raise refuse("probabilities between 0 and 1 by class (key probabilities)", {label: share})
    return record


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _scalar(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= MAX_LINE_BYTES
    return value is None or kind is bool or kind is int or (kind is float and math.isfinite(value))


def _is_time(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        return False
