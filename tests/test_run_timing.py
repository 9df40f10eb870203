"""Where a run's time goes outside its stages (issue 23, item 1): run.json's ``overhead``,
phases that add up to the wall time with the stages. No timing thresholds: only sums."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from mlops_kit import _timing

MLOPS_KIT = [sys.executable, "-m", "mlops_kit.cli"]
NAMED = {"start-up", "parameters", "preflight", "planning", "kernel start", "report export", "record", "other"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLOPS_KIT, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_timing.time, "perf_counter", clock)
    return clock


def test_a_phase_inside_another_is_counted_once(clock):
    phases = _timing.Phases()
    with phases.measure("planning"):
        clock.now += 1
        with phases.measure("hashing"):
            clock.now += 4
        clock.now += 2
    phases.stages = 10.0
    clock.now += 10 + 0.5  # a stage, then time no phase names
    with phases.measure("planning"):  # a phase measured twice adds up
        clock.now += 3
    assert phases.breakdown() == {"seconds": 10.5, "wall": 20.5, "stages": 10.0,
                                  "phases": {"planning": 6.0, "hashing": 4.0, "other": 0.5}}


def test_a_phase_that_raises_is_counted_and_the_next_is_not_nested(clock):
    phases = _timing.Phases()
    with pytest.raises(ValueError), phases.measure("preflight"):
        clock.now += 2
        raise ValueError
    with phases.measure("record"):
        clock.now += 1
    assert phases.breakdown()["phases"] == {"preflight": 2.0, "record": 1.0, "other": 0.0}


def test_the_start_up_is_the_time_since_the_origin(clock, monkeypatch):
    monkeypatch.setattr(_timing.time, "time", lambda: 1000.0)
    phases = _timing.Phases(origin=997.0)  # the process started 3 s ago
    phases.since_origin("start-up")
    assert phases.breakdown()["phases"]["start-up"] == 3.0
    assert _timing.process_started() is not None  # Linux: read from /proc


def assert_adds_up(record: dict) -> dict:
    overhead = record["overhead"]
    executed = sum(info["seconds"] for info in record["stages"].values()
                   if info.get("status") in ("succeeded", "failed"))
    assert overhead["stages"] == pytest.approx(executed, abs=0.01)
    phases = overhead["phases"]
    assert NAMED <= set(phases), phases
    assert all(seconds >= 0 for seconds in phases.values()), phases
    # rounding: each figure to 1 ms
    assert overhead["stages"] + sum(phases.values()) == pytest.approx(overhead["wall"], abs=0.001 * (len(phases) + 2))
    assert overhead["seconds"] == pytest.approx(overhead["wall"] - overhead["stages"], abs=0.002)
    return overhead


def test_a_run_records_where_its_time_went(_isolated_runs):
    result = cli("run", "--stages", "data")
    assert result.returncode == 0, result.stderr
    (path,) = _isolated_runs.glob("*/run.json")
    record = json.loads(path.read_text())
    overhead = assert_adds_up(record)
    assert overhead["phases"]["start-up"] > 0  # from the process's start, not from the runner's
    shown = cli("runs", "show", record["id"])
    assert shown.returncode == 0, shown.stderr
    assert f"Outside the stages: {overhead['seconds']:.2f} s of {overhead['wall']:.2f} s" in shown.stdout
    assert "kernel start" in shown.stdout


def test_a_failed_run_records_it_too(_isolated_runs):
    result = cli("run", "--set", "evaluate.gate={accuracy: 0.999}")
    assert result.returncode != 0
    (path,) = _isolated_runs.glob("*/run.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed"
    assert_adds_up(record)


def test_a_process_start_is_placed_by_the_clock_since_boot():
    """Not by /proc/stat's boot time, whole seconds: that put the start up to 1 s early."""
    before = __import__("time").time()
    child = subprocess.run([sys.executable, "-c", "from mlops_kit import _timing; print(_timing.process_started())"],
                           capture_output=True, text=True, cwd=REPO, check=True)
    after = __import__("time").time()
    started = float(child.stdout)
    assert before - 0.05 <= started <= after  # 0.05: /proc counts in ticks of 10 ms


def test_package_versions_are_read_once_until_a_folder_of_the_path_changes(tmp_path, monkeypatch):
    """A cached rerun fingerprints every stage: the versions are read once per process (20 ms
    each time), and again when a package is installed or removed (its folder changes)."""
    import os
    from importlib import metadata

    from mlops_kit import cache

    read = []
    installed = {name: "1.0" for name in cache.VERSIONED_PACKAGES}
    monkeypatch.setattr(metadata, "version", lambda name: read.append(name) or installed[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cache, "_VERSIONS", {})
    first = cache.environment_hash("train")
    assert cache.environment_hash("evaluate") and cache.environment_hash("train") == first
    assert len(read) == len(cache.VERSIONED_PACKAGES)
    installed["scikit-learn"] = "2.0"  # an upgrade: its folder's modification time changes
    stat = os.stat(tmp_path)
    os.utime(tmp_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.environment_hash("train") != first


def test_the_executed_notebook_is_written_when_a_code_cell_starts_not_twice_per_cell(tmp_path, monkeypatch):
    """papermill wrote the whole notebook when each cell started and ended (75 writes in a
    default run, between two cells each); the kit's engine writes it when a code cell starts
    (the running cell and every output before it: what a killed kernel leaves) and at the end."""
    import nbformat
    import papermill
    import papermill.engines

    from mlops_kit.execution import local

    source, output = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    new = nbformat.v4
    nbformat.write(new.new_notebook(cells=[new.new_markdown_cell("# a"), new.new_code_cell("x = 1"),
                                           new.new_markdown_cell("b"), new.new_code_cell("print(x)"),
                                           new.new_code_cell("x + 1")]), source)
    written, write = [], papermill.engines.write_ipynb

    def counted(notebook, path):
        written.append([cell.metadata.papermill["status"] for cell in notebook.cells])
        write(notebook, path)

    monkeypatch.setattr(papermill.engines, "write_ipynb", counted)
    papermill.execute_notebook(str(source), str(output), kernel_name="python3", engine_name=local._engine(),
                               progress_bar=False)
    assert len(written) == 1 + 3 + 1  # the start, each code cell's start, the end
    assert written[2] == ["completed", "completed", "completed", "running", "pending"]
    executed = nbformat.read(output, as_version=4)
    assert [cell.metadata.papermill["status"] for cell in executed.cells] == ["completed"] * 5
    assert executed.cells[3].outputs[0]["text"] == "1\n" and executed.cells[4].outputs[0]["data"]["text/plain"] == "2"


def test_starting_the_report_process_never_waits_for_an_export_in_flight(monkeypatch):
    """The runner starts the report process when each stage starts; while the previous stage's
    report is being exported (the process's lock held), that must return at once, not after
    the export (which put the export on the next stage's path: "other" 1.2 s of a run)."""
    import threading

    from mlops_kit import _reports

    process = _reports.ReportProcess()
    started = []
    monkeypatch.setattr(process, "_start", lambda: started.append(True))
    with process._lock:  # an export in flight
        caller = threading.Thread(target=process.start, daemon=True)
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "start() waited for the export"
    assert started == []  # the process exists: the export started it
    process.start()
    assert started == [True]


def test_the_kernels_parent_is_spawned_before_the_cli_is_imported_and_not_for_explain(tmp_path, monkeypatch):
    """`mlops-kit run` spawns the zygote first thing (its imports overlap the CLI's own); a
    command that runs no stage here (--explain) spawns none. Read from the run's timeline."""
    explained = tmp_path / "explain.log"
    monkeypatch.setenv(_timing.TIMELINE_ENV, str(explained))
    assert cli("run", "--explain").returncode == 0
    assert "kernels' parent spawned" not in (explained.read_text() if explained.exists() else "")
    failed = tmp_path / "failed.log"
    monkeypatch.setenv(_timing.TIMELINE_ENV, str(failed))
    result = cli("run", "--set", "data.target=nope")  # a parameter mistake: no stage runs
    assert result.returncode == 2, result.stderr
    events = [line.split(" ", 2)[2] for line in failed.read_text().splitlines()]
    assert events.index("cli: kernels' parent spawned") < events.index("cli: run command")


def test_papermill_is_imported_without_pyarrow_and_pyarrow_fs_still_imports():
    """The CLI imports papermill without its hdfs:// handler's pyarrow.fs (pyarrow and numpy:
    a quarter of a second); pyarrow.fs imported afterwards is the real module."""
    code = ("import sys; from mlops_kit.execution.local import _import_papermill; _import_papermill(); "
            "import papermill; print('pyarrow' in sys.modules, 'numpy' in sys.modules); "
            "import pyarrow.fs; print(pyarrow.fs.LocalFileSystem is not None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True"]
