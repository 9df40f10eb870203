"""The request log reader's guards at their edges (the mutation targets ``request-log-reader``
and ``request-log-lines``, docs/mutation.md): the folder, its files, the total it reads, the
line length, one model, torn lines, each at its bound and just past it. Crafted files only (no
writer thread): test_request_log.py has the writer and the crafted lines end to end."""

from __future__ import annotations

import json

import pytest

from mlops_kit.errors import ArtifactError
from mlops_kit.monitor import requestlog
from mlops_kit.monitor.requestlog import read_request_log

from test_request_log import OTHER_SHA, SHA, _good_line

pytestmark = pytest.mark.security

FIRST = "requests-20261207T100000-1-1.jsonl"
SECOND = "requests-20261207T100001-1-2.jsonl"


def line(**changes) -> bytes:
    return json.dumps(_good_line(**changes)).encode() + b"\n"


def folder_with(tmp_path, *files: tuple[str, bytes]):
    folder = tmp_path / "log"
    folder.mkdir(parents=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    return folder


def message(folder, **options) -> str:
    with pytest.raises(ArtifactError) as info:
        read_request_log(folder, **options)
    return str(info.value)


def test_the_bounds_are_the_documented_ones():
    """docs/security.md: at most 1 GiB read in all, a line at most 16 MiB."""
    assert (requestlog.DEFAULT_MAX_READ_BYTES, requestlog.MAX_LINE_BYTES) == (1024 ** 3, 16 * 1024 ** 2)
    assert (requestlog.MAX_LINE_ROWS, requestlog.MAX_CLASSES) == (1_000_000, 10_000)


def test_the_folder_must_be_a_folder(tmp_path):
    assert message(tmp_path / "none").startswith(f"The request log must be a folder. Got nothing at {tmp_path / 'none'}")
    (tmp_path / "file").write_text("")
    assert message(tmp_path / "file").startswith(f"The request log must be a folder. Got a file at {tmp_path / 'file'}")


@pytest.mark.parametrize("sha", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, ""])
def test_the_model_sha256_asked_for_must_be_one(tmp_path, sha):
    folder = folder_with(tmp_path, (FIRST, line()))
    with pytest.raises(ValueError, match="model_sha256 must be 64 lower-case hex digits"):
        read_request_log(folder, model_sha256=sha)


def test_a_log_of_the_model_asked_for_is_read(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line() + line(request_id="r2")), (SECOND, line(request_id="r3")))
    frame = read_request_log(folder, model_sha256=SHA)
    assert list(frame["request_id"]) == ["r1", "r1", "r2", "r2", "r3", "r3"]
    assert frame.attrs == {"torn_lines": 0, "files": [FIRST, SECOND]}


def test_the_total_bound_is_inclusive_and_counts_every_file(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line()), (SECOND, line(request_id="r2")))
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert len(read_request_log(folder, max_bytes=total)) == 4
    assert message(folder, max_bytes=total - 1).startswith(
        f"The request log in {folder} must be at most {total - 1} bytes. Got more instead (at {SECOND}).")
    first = (folder / FIRST).stat().st_size
    assert f"(at {FIRST})" in message(folder, max_bytes=first - 1)


def test_a_symbolic_link_or_a_folder_among_the_files_is_refused(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line()))
    (folder / SECOND).mkdir()
    assert message(folder) == f"{folder / SECOND} must be a regular file of the request log. Got something else instead."
    (folder / SECOND).rmdir()
    (tmp_path / "elsewhere.jsonl").write_bytes(line())
    (folder / SECOND).symlink_to(tmp_path / "elsewhere.jsonl")   # a regular file behind it: still refused
    assert message(folder) == (f"{folder / SECOND} must be a regular file of the request log. Got a symbolic link "
                               "instead.")


def test_the_line_bound_is_inclusive(tmp_path, monkeypatch):
    good = line()
    folder = folder_with(tmp_path, (FIRST, good + line(request_id="r2")))
    monkeypatch.setattr(requestlog, "MAX_LINE_BYTES", len(good) - 1)   # without its newline: exactly the bound
    assert len(read_request_log(folder)) == 4
    monkeypatch.setattr(requestlog, "MAX_LINE_BYTES", len(good) - 2)
    assert message(folder) == f"{folder / FIRST}:1 must be at most {len(good) - 2} bytes. Got {len(good) - 1} instead."


def test_lines_are_numbered_from_one_in_each_file(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line() + line()), (SECOND, line() + b"{}\n"))
    assert message(folder).startswith(f"{folder / SECOND}:2 must be an object with exactly the keys")


def test_torn_last_lines_are_counted_in_every_file_and_only_last_ones(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line() + line()[:20]), (SECOND, line() + line()[:-1]))
    frame = read_request_log(folder)
    assert frame.attrs["torn_lines"] == 2 and len(frame) == 4
    folder = folder_with(tmp_path / "b", (FIRST, line()[:20] + b"\n" + line()))
    assert message(folder).startswith(f"{folder / FIRST}:1 must be a JSON object of the request log")


def test_a_log_of_torn_lines_only_or_no_file_holds_no_row(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line()[:30]), ("other.jsonl", line()))
    assert message(folder).startswith(f"The request log in {folder} must hold at least one row. Got no complete line")
    empty = folder_with(tmp_path / "b")
    assert message(empty).startswith(f"The request log in {empty} must hold at least one row. Got no log file")


def test_one_model_per_log_the_first_lines_or_the_one_asked_for(tmp_path):
    folder = folder_with(tmp_path, (FIRST, line() + line()), (SECOND, line(model_sha256=OTHER_SHA)))
    assert message(folder).startswith(f"{folder / SECOND}:1 must be a request to the same model as the lines "
                                      f"before ({SHA}). Got model {OTHER_SHA} instead.")
    assert message(folder, model_sha256=OTHER_SHA) == (
        f"{folder / FIRST}:1 must be a request to model {OTHER_SHA} (the model monitored). Got a request to model "
        f"{SHA} instead: the log is of another model.")
    alone = folder_with(tmp_path / "b", (FIRST, line(model_sha256=OTHER_SHA)))
    assert set(read_request_log(alone, model_sha256=OTHER_SHA)["model_sha256"]) == {OTHER_SHA}


# --- each line's checks at their bounds (target request-log-lines) ---------------------------------

def read_one(tmp_path, **changes):
    return read_request_log(folder_with(tmp_path, (FIRST, line(**changes))))


def refused_line(tmp_path, **changes) -> str:
    return message(folder_with(tmp_path, (FIRST, line(**changes))))


def test_rows_from_one_to_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(requestlog, "MAX_LINE_ROWS", 3)
    three = dict(rows=3, features={"x": [1, 2, 3]}, prediction=["a", "b", "c"], probabilities=None)
    assert len(read_one(tmp_path / "a", **three)) == 3
    one = dict(rows=1, features={"x": [1]}, prediction=["a"], probabilities=None)
    assert len(read_one(tmp_path / "b", **one)) == 1
    four = dict(rows=4, features={"x": [1, 2, 3, 4]}, prediction=["a", "b", "c", "d"], probabilities=None)
    assert "must be a number of rows between 1 and 3 (key rows). Got 4 instead" in refused_line(tmp_path / "c", **four)
    assert "Got 0 instead" in refused_line(tmp_path / "d", rows=0)
    assert "Got 2.0 instead" in refused_line(tmp_path / "e", rows=2.0)


def test_the_time_is_at_most_40_characters(tmp_path):
    forty = "2026-12-07T10:00:00.00000000000000+00:00"
    assert len(forty) == 40 and len(read_one(tmp_path / "a", time=forty)) == 2
    assert "must be an ISO 8601 time (key time)" in refused_line(tmp_path / "b", time=forty[:20] + "0" + forty[20:])
    assert "must be an ISO 8601 time (key time)" in refused_line(tmp_path / "c", time=20261207)


@pytest.mark.security
@pytest.mark.parametrize("when", ["2026-12-07T10:00:00+00:00:00", "2026-12-07 10:00:00Z", "2026-12-07",
                                  "20261207T100000", "2026-12-07T24:00:00Z", "2026-12-07T10:00:00+24:00"])
def test_a_time_the_frame_could_not_read_is_refused_with_its_line(tmp_path, when):
    """Each is refused by the line's check, naming the key, not by pandas later with a traceback
    (the first: datetime.fromisoformat accepts an offset with seconds, pandas does not)."""
    assert "must be an ISO 8601 time (key time)" in refused_line(tmp_path / "a", time=when)


def test_features_and_names_at_their_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(requestlog, "MAX_FEATURES", 2)
    assert len(read_one(tmp_path / "a")) == 2           # the good line has two features
    three = {"x": [1, 2], "y": [1, 2], "z": [1, 2]}
    assert "must be an object of at most 2 features (key features). Got '3 features' instead" in refused_line(
        tmp_path / "b", features=three)
    assert "Got 'list' instead" in refused_line(tmp_path / "c", features=[1, 2])
    longest = "n" * requestlog.MAX_NAME_CHARS
    assert read_one(tmp_path / "d", features={longest: [1, 2]}).columns.tolist().count(longest) == 1
    assert "feature names of at most" in refused_line(tmp_path / "e", features={longest + "n": [1, 2]})


def test_classes_and_their_names_at_their_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(requestlog, "MAX_CLASSES", 2)
    assert "proba_yes" in read_one(tmp_path / "a").columns          # two classes
    three = {"a": [0, 1], "b": [0, 1], "c": [0, 1]}
    assert "null or an object of at most 2 classes (key probabilities). Got '3 classes' instead" in refused_line(
        tmp_path / "b", probabilities=three)
    assert "Got 'list' instead" in refused_line(tmp_path / "c", probabilities=[0.5, 0.5])
    longest = "c" * requestlog.MAX_NAME_CHARS
    assert f"proba_{longest}" in read_one(tmp_path / "d", probabilities={longest: [0, 1]}).columns
    assert "class names of at most" in refused_line(tmp_path / "e", probabilities={longest + "c": [0, 1]})
    assert read_one(tmp_path / "f", probabilities=None)["prediction"].tolist() == ["yes", "no"]


@pytest.mark.parametrize("values, accepted", [([0, 1], True), ([0.0, 1.0], True), ([1, 0], True), ([0.5, 0.5], True),
                                              ([-0.001, 0.5], False), ([0.5, 1.001], False)])
def test_probabilities_from_0_to_1(tmp_path, values, accepted):
    if accepted:
        assert read_one(tmp_path, probabilities={"yes": values})["proba_yes"].tolist() == values
    else:
        assert "must be probabilities between 0 and 1 (class 'yes' of key probabilities)" in refused_line(
            tmp_path, probabilities={"yes": values})


@pytest.mark.parametrize("change, words", [
    ({"v": 2.0}, "must be the log format version 2 (key v). Got 2.0 instead"),
    ({"v": True}, "the log format version must be 2 (key v). Got True instead"),
    ({"v": 3}, "the log format version must be 2 (key v). Got 3 instead"),        # a later version too
    ({"prediction": ["yes", None]}, "must be a list of labels or numbers (key prediction). Got ['NoneType'] instead"),
    ({"features": {"x": [1, [2]]}}, "must be a list of strings, numbers, booleans or nulls (feature 'x'). "
                                    "Got ['list'] instead"),
    ({"features": {"x": [1]}}, "must be a list of 2 strings, numbers, booleans or nulls (one per row: key rows is 2) "
                               "(feature 'x'). Got 'a list of 1' instead"),
    ({"features": {"x": "ab"}}, "(feature 'x'). Got 'str' instead"),
    ({"request_id": 7}, "must be a request id of 1 to 128 characters"),
    ({"model_sha256": 7}, "must be 64 lower-case hex digits (key model_sha256). Got 7 instead"),
], ids=["v-float", "v-bool", "v-later", "prediction-null", "feature-list", "feature-short", "feature-text", "id-number",
        "sha-number"])
def test_each_line_check_names_what_it_expected(tmp_path, change, words):
    assert words in refused_line(tmp_path, **change)


def test_a_line_of_300_rows_is_read(tmp_path):
    """300 rows: the counts compared are integers made at run time (beyond CPython's cached ones)."""
    rows = int("300")
    frame = read_one(tmp_path, rows=rows, features={"x": list(range(rows))}, prediction=["a"] * rows,
                     probabilities={"a": [1.0] * rows})
    assert len(frame) == 300 and frame["row"].tolist() == list(range(300))


def test_a_long_version_is_shown_cut_at_20_characters(tmp_path):
    assert "the log format version must be 2 (key v). Got abcdefghijklmnopqrst instead." in refused_line(
        tmp_path, v="abcdefghijklmnopqrstuvwxyz")


def test_the_keys_found_are_shown_ten_at_most(tmp_path):
    extra = dict.fromkeys("ABCDEFGHIJKL", 1)     # sorted before the line's own keys
    assert f"Got {list('ABCDEFGHIJ')!r} instead." in refused_line(tmp_path, **extra)


def test_a_line_without_a_version_is_refused_by_its_keys(tmp_path):
    record = _good_line()
    del record["v"]
    folder = folder_with(tmp_path, (FIRST, json.dumps(record).encode() + b"\n"))
    assert "must be an object with exactly the keys" in message(folder)


def test_a_long_value_is_shown_cut_at_80_characters(tmp_path):
    assert f"Got {repr('r' * 200)[:80]}... instead." in refused_line(tmp_path, request_id="r" * 200)
    eighty, more = "r" * 77 + " ", "r" * 78 + " "     # a space: not a request id; shown as 80 and 81 characters
    assert f"Got {eighty!r} instead." in refused_line(tmp_path / "b", request_id=eighty)
    assert f"Got {more!r:.80}... instead." in refused_line(tmp_path / "c", request_id=more)
