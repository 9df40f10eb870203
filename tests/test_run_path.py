"""``ledger.run_path``, the one resolver of run ids, on its own: each form it refuses, one by
one (test_run_ids.py has the commands that take run ids, end to end)."""

from __future__ import annotations

import json

import pytest

from mlops_kit import ledger
from mlops_kit.errors import InvalidRunId, RunNotFound

pytestmark = pytest.mark.security


@pytest.fixture
def root(tmp_path):
    runs = tmp_path / "runs"
    (runs / "20260101-000000-good").mkdir(parents=True)
    (runs / ".hidden").mkdir()
    (tmp_path / "victim").mkdir()
    return runs


@pytest.mark.parametrize("run_id", [
    ".hidden", ".", "..", ".x", "..x",                       # a leading dot: hidden, or the folder or its parent
    "../victim", "a/../../victim", "a/b", "/etc", "a\\b",    # separators
    "", " x", "x y", "x\n", "-x", "_x", "x" * 129,           # not a plain name
    "r\u00e9sum\u00e9", "x:y", "*",
])
def test_each_form_that_is_not_a_plain_folder_name_is_refused(root, run_id):
    with pytest.raises(InvalidRunId) as info:
        ledger.run_path(run_id, root=root)
    assert info.value.run_id == run_id
    assert "no separators, no leading dot" in info.value.reason
    assert f"must name a run folder inside {root}" in str(info.value)


@pytest.mark.parametrize("run_id", [None, 7, b"x", ["x"]])
def test_a_run_id_that_is_not_text_is_refused(root, run_id):
    with pytest.raises(InvalidRunId):
        ledger.run_path(run_id, root=root)


@pytest.mark.parametrize("run_id", ["20260101-000000-good", "20260101-000000-none", "a", "9", "x" * 128,
                                    "my_run.v2", "A-b_c.d"])
def test_plain_names_are_folders_in_the_runs_folder_existing_or_not(root, run_id):
    assert ledger.run_path(run_id, root=root) == root / run_id


def test_the_scratch_folder_only_where_it_is_asked_for(root):
    with pytest.raises(InvalidRunId, match="the scratch folder of notebooks opened by hand is not a run here"):
        ledger.run_path("scratch", root=root)
    assert ledger.run_path("scratch", root=root, scratch=True) == root / "scratch"


def test_a_run_folder_that_is_a_symbolic_link_is_refused_wherever_it_leads(root):
    (root / "20260101-000000-out").symlink_to(root.parent / "victim")
    (root / "20260101-000000-in").symlink_to(root / "20260101-000000-good")
    (root / "20260101-000000-dangling").symlink_to(root / "nothing")
    for name in ("20260101-000000-out", "20260101-000000-in", "20260101-000000-dangling"):
        with pytest.raises(InvalidRunId, match="is a symbolic link"):
            ledger.run_path(name, root=root)


def test_champion_names_the_promoted_run_only_where_asked_and_its_record_is_checked_too(root):
    assert ledger.run_path("champion", root=root) == root / "champion"   # a run may be called so
    with pytest.raises(RunNotFound) as info:
        ledger.run_path("champion", champion=True, root=root)
    assert not isinstance(info.value, InvalidRunId)
    (root / ledger.CHAMPION_FILE).write_text(json.dumps({"run": "20260101-000000-good"}))
    assert ledger.run_path("champion", champion=True, root=root) == root / "20260101-000000-good"
    for other in ("a-run", "zz-run", "champion2", "Champion"):                 # only the word itself
        assert ledger.run_path(other, champion=True, root=root) == root / other
    (root / ledger.CHAMPION_FILE).write_text(json.dumps({"run": "../victim"}))   # a tampered record
    with pytest.raises(InvalidRunId):
        ledger.run_path("champion", champion=True, root=root)


def test_champion_and_scratch_are_keywords_only(root):
    with pytest.raises(TypeError):
        ledger.run_path("champion", True)
    with pytest.raises(TypeError):
        ledger.run_path("scratch", False, True)


def test_the_words_are_compared_by_value_as_argv_gives_them():
    """A command line's words are new strings, never the interned constants."""
    runs = ledger._paths.runs_dir()
    word = "".join(["cham", "pion"])
    (runs / ledger.CHAMPION_FILE).write_text(json.dumps({"run": "20260101-000000-good"}))
    assert ledger.run_path(word, champion=True) == runs / "20260101-000000-good"
    with pytest.raises(InvalidRunId, match="the scratch folder"):
        ledger.run_path("".join(["scr", "atch"]))
