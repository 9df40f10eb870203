"""The run records (``run.json``, ``champion.json``) are read and written in one place, the
ledger, typed by the catalog's models (issue 21, item 0)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO
from mlops_kit import ledger, model_io
from mlops_kit.errors import ArtifactError
from mlops_kit.params import load_run_params


def _run(root, run_id="20260101-000000-aaaa", **record):
    folder = root / run_id
    (folder / "artifacts").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"id": run_id, "created": "2026-01-01T00:00:00Z",
                                                 "status": "succeeded", "stages": {}, **record}))
    return folder


def test_only_the_ledger_opens_the_records():
    """No other module names the record files' paths to read or write them."""
    names = r"_paths\.RUN_RECORD|_paths\.CHAMPION_RECORD|_names\.RUN\b|_names\.CHAMPION\b|artifacts\.RUN\b|" \
            r"artifacts\.CHAMPION\b|catalog\.RUN\b|N\.RUN\b|N\.CHAMPION\b"
    allowed = {"ledger.py", "artifacts.py", "_paths.py"}
    found = []
    for path in sorted((REPO / "mlops_kit").rglob("*.py")):
        if path.name in allowed:
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            # a record's path named in a message (params, the run picker) is not a reader
            named = "recorded_from" in line + lines[number - 2] or "record = Path" in line
            unquoted = re.sub(r"\{(?:_names|_paths)\.\w+\}", "", line)  # a name in an f-string message
            if re.search(names, unquoted) and not named:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_a_record_is_validated_where_it_is_read_and_written(_isolated_runs):
    good = _run(_isolated_runs)
    assert ledger.read_run(good.name)["status"] == "succeeded"
    bad = _run(_isolated_runs, "20260101-000000-bbbb", stages=["data"])
    with pytest.raises(ArtifactError, match=r"run.json is not a valid RunRecord: stages: "):
        ledger.read_run(bad.name)
    (bad / "run.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="must be a JSON document"):
        ledger.read_run(bad.name)
    assert [r["id"] for r in ledger.list_runs()] == [good.name]  # the broken one is passed over
    with pytest.raises(ArtifactError, match="status"):
        ledger.RunFolder(good).update(status=["done"])
    assert ledger.read_run(good.name)["status"] == "succeeded"  # nothing written


def test_the_lookups_of_other_modules_go_through_the_ledger(_isolated_runs):
    folder = _run(_isolated_runs, params={"seed": 7}, stages={"train": {"outputs": {"model.skops": "abc"}}})
    assert ledger.recorded_params(folder) == {"seed": 7}
    assert load_run_params(folder).params.seed == 7
    assert model_io.trained_sha256(folder / "artifacts") == "abc"
    assert ledger.recorded_outputs(folder, "data") == {}
    assert ledger.recorded_params(_isolated_runs / "nothing-here") is None
    (folder / "run.json").write_text(json.dumps({"id": folder.name, "params": ["seed"]}))
    with pytest.raises(ArtifactError, match="params must be a mapping"):
        ledger.recorded_params(folder)
    assert model_io.trained_sha256(folder / "artifacts") is None


def test_the_champion_is_typed_too(_isolated_runs):
    folder = _run(_isolated_runs, metrics={"gate_passed": True})
    entry = ledger.promote(folder.name, who="me", why="best")
    assert ledger.champion() == entry and ledger.champion_id() == folder.name
    (_isolated_runs / "champion.json").write_text(json.dumps({"run": 5}))
    assert ledger.champion() is None
