"""The request log (mlops_kit.monitor.requestlog): the writer's sample, rotation and bounds,
and the reader's refusals. The server writing it for real: tests/test_serving_monitor.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mlops_kit.errors import ArtifactError
from mlops_kit.monitor import requestlog
from mlops_kit.monitor.requestlog import RequestLogWriter, log_files, read_request_log

SHA = "a" * 64
OTHER_SHA = "b" * 64


def _writer(folder, **overrides) -> RequestLogWriter:
    options = dict(sample=1.0, model_sha256=SHA, booleans=["flag"], classes=["no", "yes"], seed=0)
    return RequestLogWriter(folder, **{**options, **overrides})


def _request(rows: int, start: float = 0.0) -> dict:
    """A request as the server holds it: numbers as float64 (NaN missing; strided views of a
    row-major matrix), booleans as 1.0/0.0, categories as text (NaN missing)."""
    city = np.empty(rows, dtype=object)
    city[:] = [("paris", "lyon", np.nan)[i % 3] for i in range(rows)]
    matrix = np.stack([np.arange(rows, dtype=np.float64) + start, np.zeros(rows)], axis=1)
    return {"features": {"x": matrix[:, 0], "city": city,
                         "flag": np.array([1.0, 0.0, np.nan] * rows)[:rows]},
            "predictions": np.array(["yes", "no"] * rows, dtype=object)[:rows],
            "probabilities": np.tile([[0.25, 0.75]], (rows, 1))}


def _write(folder, requests, **overrides) -> RequestLogWriter:
    writer = _writer(folder, **overrides)
    for request_id, rows in requests:
        writer.offer(request_id, **_request(rows))
    writer.close()
    return writer


def test_rows_round_trip_one_line_per_request(tmp_path):
    writer = _write(tmp_path, [("first", 1), ("second-2", 100)])
    assert (writer.written, writer.dropped, writer.sampled_out) == (101, 0, 0)
    frame = read_request_log(tmp_path, model_sha256=SHA, features=["flag", "x", "city"])
    assert list(frame.columns) == ["request_id", "row", "time", "model_sha256", "flag", "x", "city", "prediction",
                                   "proba_no", "proba_yes"]
    assert len(frame) == 101 and frame.attrs["torn_lines"] == 0
    second = frame[frame.request_id == "second-2"]
    assert second.row.tolist() == list(range(100))
    assert second.x.tolist() == [float(i) for i in range(100)]
    assert second.city.tolist()[:3] == ["paris", "lyon", None]          # missing stays missing
    assert second.flag.tolist()[:3] == [True, False, None]              # booleans as sent
    assert second.prediction.tolist()[:2] == ["yes", "no"]
    assert second.proba_yes.eq(0.75).all() and str(frame.time.dt.tz) == "UTC"
    first, line = (json.loads(text) for text in (tmp_path / frame.attrs["files"][0]).read_text().splitlines())
    assert set(line) == {"v", "time", "request_id", "model_sha256", "rows", "features", "prediction",
                         "probabilities"} and line["v"] == 2 and (first["rows"], line["rows"]) == (1, 100)
    assert line["features"]["flag"][:3] == [True, False, None] and line["features"]["city"][:3] == ["paris", "lyon",
                                                                                                   None]
    assert line["probabilities"] == {"no": [0.25] * 100, "yes": [0.75] * 100}
    dtypes = frame.dtypes.astype(str).to_dict()
    assert {name: dtypes[name] for name in ("row", "x", "flag", "city", "prediction", "proba_no", "proba_yes")} == {
        "row": "int64", "x": "float64", "flag": "object", "city": "object", "prediction": "object",
        "proba_no": "float64", "proba_yes": "float64"}


@pytest.mark.parametrize("rows", [1, 300])          # a few values made into lists, many into arrays
@pytest.mark.parametrize("every_column_numeric", [False, True])
def test_the_servers_batch_is_written_as_its_columns(tmp_path, rows, every_column_numeric):
    """The server queues its validated batch (the numeric matrix, the other columns), the
    writer thread makes the columns: each line as written from a dict of the columns, values
    exact (NaN: null; float32 probabilities as float32 writes them, not widened)."""
    matrix = np.stack([np.arange(rows, dtype=np.float64) / 3, np.full(rows, 1e300)], axis=1)
    matrix[0, 1] = np.nan
    request = _request(rows)
    request["probabilities"] = np.tile(np.array([[0.1, 0.9]], dtype=np.float32), (rows, 1))
    names, numeric = (["x", "y"], [0, 1]) if every_column_numeric else (["city", "x", "flag", "y"], [1, 3])
    other = iter([request["features"]["city"], request["features"]["flag"]])
    columns = [matrix[:, numeric.index(i)] if i in numeric else next(other) for i in range(len(names))]
    batch = type("Batch", (), {"columns": columns, "numeric": matrix, "rows": rows})()
    lines = []
    for folder, features, extra in (("batch", batch, {"names": names, "numeric": numeric}),
                                    ("dict", dict(zip(names, columns)), {})):
        writer = _writer(tmp_path / folder, **extra)
        writer.offer("r", features, request["predictions"], request["probabilities"], rows=rows)
        writer.close()
        (path,) = log_files(tmp_path / folder)
        lines.append({**json.loads(path.read_bytes()), "time": None})
    assert lines[0] == lines[1] and list(lines[0]["features"]) == names
    assert lines[0]["features"]["x"] == [i / 3 for i in range(rows)]
    assert lines[0]["features"]["y"] == [None] + [1e300] * (rows - 1)
    assert lines[0]["probabilities"] == {"no": [0.1] * rows, "yes": [0.9] * rows}


def test_a_request_longer_than_a_file_is_dropped_and_counted(tmp_path):
    writer = _write(tmp_path, [("small", 2), ("big", 200)], max_file_bytes=1024, max_total_bytes=4096)
    assert (writer.written, writer.dropped) == (2, 200)                 # a file never holds more than its bound
    assert all(p.stat().st_size <= 1024 for p in log_files(tmp_path))


@pytest.mark.parametrize("bound", ["bytes", "rows"])
def test_a_request_longer_than_a_line_is_dropped_and_counted_never_torn(tmp_path, monkeypatch, bound):
    monkeypatch.setattr(requestlog, *(("MAX_LINE_BYTES", 2048) if bound == "bytes" else ("MAX_LINE_ROWS", 3)))
    writer = _write(tmp_path, [("small", 2), ("big", 200), ("after", 3)])
    assert (writer.written, writer.dropped) == (5, 200)
    frame = read_request_log(tmp_path)
    assert set(frame.request_id) == {"small", "after"} and frame.attrs["torn_lines"] == 0


@pytest.mark.security
def test_a_line_of_more_rows_than_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(requestlog, "MAX_LINE_ROWS", 3)
    path = tmp_path / "requests-20261207T100000-1-1.jsonl"
    line = _crafted(rows=4, features={"x": [1, 2, 3, 4]}, prediction=["a"] * 4, probabilities=None)
    path.write_bytes(line + b"\n")
    with pytest.raises(ArtifactError, match=rf"{path.name}:1 must be a number of rows between 1 and 3 \(key rows\)"):
        read_request_log(tmp_path)


def test_sampling_counts_what_it_leaves_out(tmp_path):
    writer = _write(tmp_path / "none", [("r", 3)] * 10, sample=0.0)
    assert (writer.written, writer.sampled_out) == (0, 30)
    assert not log_files(tmp_path / "none")
    writer = _write(tmp_path / "half", [(f"r{i}", 2) for i in range(400)], sample=0.5)
    assert writer.written + writer.sampled_out == 800 and 300 <= writer.written <= 500
    assert writer.written % 2 == 0  # whole requests are sampled, never a part of one


def test_a_value_the_writer_cannot_write_drops_its_request_and_the_writer_goes_on(tmp_path):
    writer = _writer(tmp_path)
    writer.offer("odd", **{**_request(2), "predictions": np.array([object(), object()], dtype=object)})
    writer.offer("fine", **_request(3))
    writer.close()
    assert (writer.written, writer.dropped) == (3, 2)
    assert set(read_request_log(tmp_path).request_id) == {"fine"}


def test_a_full_queue_drops_and_counts_never_blocks(tmp_path):
    writer = _writer(tmp_path, queue_rows=50)
    assert writer.offer("big", **_request(51)) is False          # more than the queue holds
    assert writer.offer("fits", **_request(50)) is True
    writer.close()
    assert (writer.written, writer.dropped) == (50, 51)
    assert writer.offer("late", **_request(1)) is False           # closed: dropped, counted
    assert writer.dropped == 52


@pytest.mark.parametrize("write_bytes", [1, requestlog.WRITE_BYTES])   # each line at once, or a batch's at once
def test_files_rotate_by_size_and_the_total_is_bounded(tmp_path, monkeypatch, write_bytes):
    monkeypatch.setattr(requestlog, "WRITE_BYTES", write_bytes)
    writer = _write(tmp_path, [(f"r{i}", 10) for i in range(300)], max_file_bytes=4096, max_total_bytes=16384)
    files = log_files(tmp_path)
    sizes = [p.stat().st_size for p in files]
    assert len(files) >= 3 and all(size <= 4096 for size in sizes) and sum(sizes) <= 16384
    assert all(requestlog.FILE_NAME.fullmatch(p.name) and f"-{os.getpid()}-" in p.name for p in files)
    frame = read_request_log(tmp_path, model_sha256=SHA)
    assert frame.request_id.iloc[-1] == "r299"                   # the newest kept, the oldest deleted
    assert "r0" not in set(frame.request_id) and writer.written == 3000


def test_the_lines_waiting_to_be_written_are_bounded(tmp_path, monkeypatch):
    """A batch's lines are written together, but never more than about WRITE_BYTES are held."""
    monkeypatch.setattr(requestlog, "WRITE_BYTES", 4096)
    held = []

    class Writer(RequestLogWriter):
        def _write_lines(self):
            held.append(self._lines_bytes)
            super()._write_lines()

    writer = Writer(tmp_path, sample=1.0, model_sha256=SHA, classes=["no", "yes"])
    for i in range(300):
        writer.offer(f"r{i}", **_request(10))
    writer.close()
    assert writer.written == 3000 and len(read_request_log(tmp_path)) == 3000
    assert len(held) > 10 and max(held) < 4096 + 2048     # (a line of 10 rows: under 2 KiB)


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
    _write(tmp_path, [("a", 5)])
    path = log_files(tmp_path)[0]
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:37])   # the writer killed mid-line
    frame = read_request_log(tmp_path, model_sha256=SHA)
    assert len(frame) == 5 and frame.attrs["torn_lines"] == 1


@pytest.mark.parametrize("where", ["empty folder", "no folder", "torn only"])
def test_an_empty_log_is_a_clear_error(tmp_path, where):
    folder = tmp_path / "log"
    if where != "no folder":
        folder.mkdir()
    if where == "torn only":
        (folder / "requests-20261207T100000-1-1.jsonl").write_bytes(b'{"v": 1, "ti')
    with pytest.raises(ArtifactError, match="must (hold at least one row|be a folder)"):
        read_request_log(folder)


def test_a_log_of_another_model_is_refused(tmp_path):
    _write(tmp_path, [("a", 2)])
    with pytest.raises(ArtifactError, match=f"must be a request to model {OTHER_SHA}.*another model"):
        read_request_log(tmp_path, model_sha256=OTHER_SHA)
    _write(tmp_path, [("b", 2)], model_sha256=OTHER_SHA)           # a second model's rows in the same folder
    with pytest.raises(ArtifactError, match="same model as the lines before"):
        read_request_log(tmp_path)


def _good_line(**changes) -> dict:
    line = {"v": 2, "time": "2026-12-07T10:00:00.000Z", "request_id": "r1", "model_sha256": SHA, "rows": 2,
            "features": {"x": [1.0, None], "city": ["paris", "lyon"]}, "prediction": ["yes", "no"],
            "probabilities": {"yes": [0.5, 1], "no": [0.5, 0]}}
    line.update(changes)
    return line


def _crafted(**changes) -> bytes:
    return json.dumps(_good_line(**changes)).encode()


CRAFTED = {
    "not JSON": b"{not json",
    "an array": b"[1, 2]",
    "NaN constant": _crafted().replace(b'"x": [1.0', b'"x": [NaN'),
    "an infinite number": _crafted().replace(b'"x": [1.0', b'"x": [1e999'),
    "an extra key": _crafted(extra=1),
    "a missing key": json.dumps({k: v for k, v in _good_line().items() if k != "rows"}).encode(),
    "a path as request id": _crafted(request_id="../../etc/passwd"),
    "a long request id": _crafted(request_id="r" * 129),
    "no rows": _crafted(rows=0),
    "rows beyond the bound": _crafted(rows=requestlog.MAX_LINE_ROWS + 1),
    "boolean rows": _crafted(rows=True),
    "a short sha": _crafted(model_sha256="abc"),
    "a bad time": _crafted(time="yesterday"),
    "a feature list too short": _crafted(features={"x": [1.0], "city": ["paris", "lyon"]}),
    "a feature list too long": _crafted(features={"x": [1.0, 2.0, 3.0]}),
    "a feature as a scalar": _crafted(features={"x": 1.0}),
    "nested lists": _crafted(features={"x": [[1.0], [2.0]]}),
    "nested objects": _crafted(features={"x": [{"deep": [1]}, 1.0]}),
    "features as a list": _crafted(features=[1, 2]),
    "too many features": _crafted(features={f"f{i}": [1, 2] for i in range(5001)}),
    "a long feature name": _crafted(features={"x" * 1000: [1, 2]}),
    "a null prediction": _crafted(prediction=["yes", None]),
    "predictions too few": _crafted(prediction=["yes"]),
    "a prediction as a scalar": _crafted(prediction="yes"),
    "a probability of 2": _crafted(probabilities={"yes": [0.5, 2]}),
    "a negative probability": _crafted(probabilities={"yes": [-0.5, 0.5]}),
    "a probability as text": _crafted(probabilities={"yes": ["0.5", 0.5]}),
    "a boolean probability": _crafted(probabilities={"yes": [True, 0.5]}),
    "probabilities too few": _crafted(probabilities={"yes": [0.5]}),
    "probabilities as a list": _crafted(probabilities=[0.5, 0.5]),
    "a deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "a line too long": _crafted(features={"x": ["y" * requestlog.MAX_LINE_BYTES, "z"]}),
}


@pytest.mark.security
@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_lines_are_refused_naming_file_and_line(tmp_path, name):
    path = tmp_path / "requests-20261207T100000-1-1.jsonl"
    path.write_bytes(json.dumps(_good_line()).encode() + b"\n" + CRAFTED[name] + b"\n"
                     + json.dumps(_good_line(row=1)).encode() + b"\n")
    with pytest.raises(ArtifactError, match=rf"{path.name}:2 must be"):
        read_request_log(tmp_path)


def test_a_line_of_log_format_1_is_refused_by_its_version(tmp_path):
    """Format 1 (a line per row) never shipped in a release: refused, saying which version it is."""
    v1 = {"v": 1, "time": "2026-12-07T10:00:00.000Z", "request_id": "r1", "row": 0, "model_sha256": SHA,
          "features": {"x": 1.0}, "prediction": "yes", "probabilities": None}
    path = tmp_path / "requests-20261207T100000-1-1.jsonl"
    path.write_text(json.dumps(_good_line()) + "\n" + json.dumps(v1) + "\n")
    with pytest.raises(ArtifactError, match=rf"{path.name}:2: the log format version must be 2 \(key v\)\. "
                                            "Got 1 instead"):
        read_request_log(tmp_path)


@pytest.mark.security
def test_the_folder_is_hostile_input(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / "requests-20261207T100000-1-1.jsonl").write_text(json.dumps(_good_line()) + "\n")
    (folder / "notes.txt").write_text("not a log file: ignored\n")
    assert len(read_request_log(folder)) == 2
    with pytest.raises(ArtifactError, match="must be at most 10 bytes"):   # the total read is bounded
        read_request_log(folder, max_bytes=10)
    (tmp_path / "secret").write_text("{}\n")
    (folder / "requests-20261207T100001-1-2.jsonl").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="must be a regular file of the request log. Got a symbolic link"):
        read_request_log(folder)


def test_request_ids():
    assert requestlog.valid_request_id("order-42:3.b_c") and requestlog.valid_request_id("a" * 128)
    for bad in ("", "a" * 129, "a b", "é", "a/b", "x\n", 42, None):
        assert not requestlog.valid_request_id(bad), bad
    assert requestlog.valid_request_id(requestlog.new_request_id())


def test_the_servers_monitor_modules_import_no_pandas_pydantic_or_scipy():
    """The server's image has no pydantic (and the ONNX image no pandas or scipy)."""
    import subprocess
    import sys

    code = ("import sys, mlops_kit.monitor.requestlog, mlops_kit.monitor._drift; "
            "print(sorted(m for m in ('pandas', 'pydantic', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_profile_is_a_catalog_artifact_of_the_train_stage(model_dir):
    from mlops_kit import artifacts, stages
    from mlops_kit.image._context import MODEL_FILES, ONNX_MODEL_FILES, serving_modules

    assert "monitor_profile.json" in stages.BY_NAME["train"].outputs
    assert "monitor_profile.json" in MODEL_FILES and "monitor_profile.json" in ONNX_MODEL_FILES
    # the image's app holds the server's monitoring modules, and not the pydantic/pandas core
    shipped = set(serving_modules())
    assert {"monitor/live.py", "monitor/requestlog.py", "monitor/_drift.py", "monitor/_layout.py"} <= shipped
    assert "monitor/_profile.py" not in shipped and "monitor/_verdict.py" not in shipped
    profile = artifacts.MONITOR_PROFILE.load(model_dir)
    assert profile.task == "classification" and len(profile.features) == 30 and profile.prediction is not None
