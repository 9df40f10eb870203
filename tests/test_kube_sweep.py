"""A sweep with execution.mode kubernetes: the data stage a Job, the trials ONE Indexed Job, against
the FAKE Kubernetes API (kmock) whose Job controller (tests/_jobs.py) plays Indexed Jobs and runs
each index's pod for REAL in a private containerd (tests/_kubelet.py): JOB_COMPLETION_INDEX from
the pod's annotation, the claim as the runs folder, the stage image of this machine's Python.

Also: the rendered Indexed Job against the Kubernetes schema, `sweep --dry-run`, the pod's bad
input, and the controller's per-index rules with scripted pod ends."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from mlops_kit import ledger
from mlops_kit.errors import ManifestError
from mlops_kit.execution.job import EXIT_BAD_INPUT, EXIT_CELL_FAILED, EXIT_KERNEL_DIED
from mlops_kit.execution.kubernetes import validate_jobs
from mlops_kit.execution.sweep_job import SweepJobs, main, parse_indexes, render_sweep_job
from mlops_kit.params import load_params

from test_kube_jobs import CLAIM, IMAGE  # noqa: E402 - the stage Jobs' claim and image
from test_kube_jobs import kube_params as _stage_job_params  # noqa: E402

NS = "mk-sweep"


def kube_params(**execution) -> list[str]:
    return _stage_job_params(**{"namespace": NS, **execution})


# --- rendering, schema, dry run (no cluster) ------------------------------------------------------

def test_the_indexed_job_passes_the_schema_and_says_what_the_issue_asks(tmp_path):
    params = load_params(overrides=kube_params(retries=3)).params
    sweep_dir = tmp_path / "sweeps" / "20260101-000000-abcd"
    job = render_sweep_job(sweep_dir, [1, 3], params, parallelism=4, runs_dir=tmp_path)
    validate_jobs([job], params.deploy.kubernetes_version)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 2 and "backoffLimit" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailIndex", "onExitCodes": {"containerName": "stage", "operator": "In",
                                                                 "values": [3, 4]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["python3", "-m", "mlops_kit.execution.sweep_job"]
    assert container["args"] == [str(sweep_dir), "[1, 3]"]           # index 0 -> trial 1, index 1 -> trial 3
    assert {"name": "MLOPS_KIT_PROJECT_DIR", "value": str(sweep_dir / "project")} in container["env"]
    assert {"name": "runs", "mountPath": str(tmp_path)} in container["volumeMounts"]
    assert spec["template"]["metadata"]["labels"]["mlops-kit/sweep"] == sweep_dir.name
    assert len(job["metadata"]["name"]) <= 63


def test_the_schema_check_catches_a_broken_indexed_job(tmp_path):
    params = load_params(overrides=kube_params()).params
    job = render_sweep_job(tmp_path / "sweeps" / "s1", [0, 1], params, parallelism=1, runs_dir=tmp_path)
    job["spec"]["backoffLimitPerIndex"] = "two"
    with pytest.raises(ManifestError, match="backoffLimitPerIndex"):
        validate_jobs([job], params.deploy.kubernetes_version)


def test_sweep_dry_run_prints_the_data_job_and_the_indexed_job_without_a_cluster(_isolated_runs):
    from click.testing import CliRunner

    from mlops_kit.cli import main as cli

    args = ["sweep", "--dry-run", "--grid", "train.params.C=[0.1, 1, 10]", "--jobs", "2"]
    result = CliRunner().invoke(cli, args + [a for item in kube_params() for a in ("--set", item)],
                                env={"KUBECONFIG": "/nonexistent"})
    assert result.exit_code == 0, result.output
    data, trials = yaml.safe_load_all(result.output)
    assert data["metadata"]["labels"]["mlops-kit/stage"] == "data" and "completionMode" not in data["spec"]
    assert trials["spec"]["completionMode"] == "Indexed" and trials["spec"]["completions"] == 3
    assert trials["spec"]["parallelism"] == 2
    assert not any(_isolated_runs.iterdir())          # no run, no sweep was created
    local = CliRunner().invoke(cli, ["sweep", "--dry-run", "--grid", "train.params.C=[0.1, 1]"])
    assert local.exit_code != 0 and "execution.mode kubernetes" in str(local.exception) + local.output


@pytest.mark.security
def test_a_pod_named_a_trial_the_sweep_does_not_have_fails_its_index_with_a_plain_error(_isolated_runs, monkeypatch,
                                                                                       tmp_path):
    sweep = ledger.create_sweep({"grid": {"train.params.C": [1]}, "params": {}, "jobs": 1,
                                 "trials": [{"index": 0, "setting": {"train.params.C": 1}}]})
    sweep.release()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv("MLOPS_KIT_TERMINATION_LOG", str(tmp_path / "termination"))
    assert main([str(sweep.path), "[5]"]) == EXIT_CELL_FAILED
    assert "must be below 1. Got 5 instead" in json.loads((tmp_path / "termination").read_text())["detail"]


def test_indexes_of_a_job_status_are_read():
    assert parse_indexes("0,2-4,7") == {0, 2, 3, 4, 7} and parse_indexes(None) == set() == parse_indexes("")


@pytest.mark.security
@pytest.mark.parametrize("args, index, words", [
    (["/nowhere", "[0, 1]"], "0", "sweep's record must exist"),
    (["{sweep}", "[0, 1]"], "2", "index below 2"),
    (["{sweep}", "[0, 1]"], "", "index below 2"),
    (["{sweep}", "[0, 1]"], "-1", "index below 2"),
    (["{sweep}", '{"a": 1}'], "0", "JSON list of trial indexes"),
    (["{sweep}", "[true]"], "0", "JSON list of trial indexes"),
    (["{sweep}"], "0", "BadJobInput"),
])
def test_a_pod_with_bad_input_fails_its_index_at_once(args, index, words, tmp_path, monkeypatch, capsys):
    (tmp_path / "sweep.json").write_text("{}")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", index)
    monkeypatch.setenv("MLOPS_KIT_TERMINATION_LOG", str(tmp_path / "termination"))
    assert main([a.replace("{sweep}", str(tmp_path)) for a in args]) == EXIT_BAD_INPUT
    said = json.loads((tmp_path / "termination").read_text())
    assert said["exception"] == "BadJobInput" and words in said["exception"] + said["detail"]


@pytest.mark.parametrize("raised, code", [
    ("RuntimeError", EXIT_CELL_FAILED),          # a cell raised: FailIndex, the trial is not retried
    ("DeadKernelError", EXIT_KERNEL_DIED),       # killed (out of memory): counted, retried in its index
    (None, EXIT_CELL_FAILED),                    # a setting refused before its run: FailIndex
])
def test_the_pod_runs_the_trial_of_its_index_and_says_how_it_ended(raised, code, tmp_path, monkeypatch):
    from mlops_kit import sweep as sweeps
    from mlops_kit.errors import ParameterError, ParameterProblem, StageFailed

    ran = []

    def trial(sweep_dir, index):
        ran.append(index)
        if raised is None:
            raise ParameterError([ParameterProblem("sweep", "train.params.C", "a positive float", "-1")])
        raise StageFailed("train", notebook=tmp_path / "02_train.ipynb", cell_index=4, exception=raised,
                          detail="it broke")

    (tmp_path / "sweep.json").write_text("{}")
    monkeypatch.setattr(sweeps, "trial_in_pod", trial)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("MLOPS_KIT_TERMINATION_LOG", str(tmp_path / "termination"))
    assert main([str(tmp_path), "[3, 2]"]) == code
    assert ran == [2]                                 # index 1 of [3, 2]: trial 2
    said = json.loads((tmp_path / "termination").read_text())
    assert ("train.params.C" if raised is None else "Stage 'train' failed in cell 4") in said["detail"]


# --- the fake API and its Indexed Job controller ------------------------------------------------

kmock = pytest.importorskip("kmock")
import pytest_asyncio  # noqa: E402

import _jobs  # noqa: E402
from test_kube_jobs import containerd, stage_image  # noqa: E402,F401 - the fixture, shared


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def _index(job: dict) -> int:
    return int(job["spec"]["template"]["metadata"]["annotations"][_jobs.INDEX_KEY])


@pytest_asyncio.fixture
async def scripted(_isolated_runs):
    """The fake API and its Job controller; index i's pods end as ``controller.script[i]`` says."""
    script: dict[int, list[_jobs.PodEnd]] = {}
    async with _jobs.fake_job_api(NS, CLAIM, lambda job, attempt: script[_index(job)].pop(0)) as controller:
        controller.script = script
        yield controller


def _run_trials(controller, trials: list[int], parallelism: int, cancel=None, **execution) -> dict[int, dict]:
    params = load_params(overrides=kube_params(**execution)).params
    sweep = ledger.create_sweep({"grid": {"train.params.C": [1]}, "params": {}, "jobs": 1,
                                 "trials": [{"index": i, "setting": {"train.params.C": i}} for i in range(4)]})
    ends: dict[int, dict] = {}
    try:
        SweepJobs(params, api_client=controller.api, poll=0.01).run_trials(
            sweep, trials, parallelism, on_start=lambda index: None, on_end=ends.__setitem__, cancel=cancel)
    finally:
        sweep.release()
    return ends


@pytest.mark.asyncio
async def test_each_index_ends_by_its_own_rules_and_a_failed_one_does_not_stop_the_others(scripted):
    said = json.dumps({"cell_index": 4, "exception": "RuntimeError", "detail": "Stage 'train' failed in cell 4"})
    scripted.script.update({
        0: [_jobs.PodEnd(0, "Completed")],
        1: [_jobs.PodEnd(EXIT_CELL_FAILED, "Error", said)],                   # FailIndex: no retry
        2: [_jobs.PodEnd(137, "OOMKilled"), _jobs.PodEnd(137, "OOMKilled")],  # retried once, then failed
        3: [_jobs.PodEnd(137, "Error", disrupted=True), _jobs.PodEnd(1, "Evicted"), _jobs.PodEnd(0, "Completed")],
    })
    ends = await in_thread(_run_trials, scripted, [0, 1, 2, 3], 2, retries=1, memory="150Mi")
    assert {i: e["status"] for i, e in ends.items()} == {0: "succeeded", 1: "failed", 2: "failed", 3: "succeeded"}
    assert ends[1]["error"] == "Stage 'train' failed in cell 4"
    assert "OOMKilled" in ends[2]["error"] and "150Mi" in ends[2]["error"]
    [name] = scripted.indexed
    assert {i: len(p) for i, p in scripted.indexed[name].items()} == {0: 1, 1: 1, 2: 2, 3: 3}
    job = next(o for k, o in scripted.fake.objects.items() if k[0] == _jobs.JOBS)
    assert job.raw["status"]["conditions"][0]["reason"] == "FailedIndexes"   # every index ran all the same
    assert all(not script for script in scripted.script.values())


@pytest.mark.asyncio
async def test_a_resumed_sweeps_job_maps_its_indexes_to_the_trials_it_runs_again(scripted):
    seen = []
    scripted.run_pod = lambda job, attempt: (seen.append((_index(job), job["spec"]["template"]["spec"][
        "containers"][0]["args"][1], job["spec"]["template"]["spec"]["containers"][0]["env"][-1])),
        _jobs.PodEnd(0, "Completed"))[1]
    ends = await in_thread(_run_trials, scripted, [3, 1], 1)
    assert ends == {3: {"status": "succeeded", "error": None}, 1: {"status": "succeeded", "error": None}}
    env = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{_jobs.INDEX_KEY}']"}}}
    assert sorted(seen) == [(0, "[3, 1]", env), (1, "[3, 1]", env)]


# --- end to end: the pods run for real ------------------------------------------------------------

@pytest_asyncio.fixture
async def cluster(containerd, tmp_path, _isolated_runs):  # noqa: F811 - the imported fixture
    workdir = tmp_path / "pods"
    workdir.mkdir()
    run_pod = _jobs.kubelet_pods(containerd, workdir, claims={CLAIM: _isolated_runs}, images={IMAGE: stage_image()})
    async with _jobs.fake_job_api(NS, CLAIM, run_pod) as controller:
        api = controller.api
        controller.executor = lambda params: (lambda: SweepJobs(params, api_client=api, poll=0.1))
        yield controller


def _records(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/run.json")}


@pytest.mark.containerd
@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_indexed_job_sweep_of_four_with_a_failing_trial_then_resume_reruns_only_it(
        cluster, project_copy, _isolated_runs):
    from mlops_kit import sweep as sweeps

    path = project_copy / "notebooks" / "02_train.ipynb"
    notebook = nbformat.read(path, 4)
    notebook.cells.insert(3, nbformat.v4.new_code_cell(
        "if params.get('C') == 13:\n    raise RuntimeError('C=13 breaks on purpose')"))
    nbformat.write(notebook, path)
    loaded = load_params(None, kube_params(), grid=["train.params.C=[0.1, 1, 13, 10]"])
    seen: list[dict] = []
    began = time.perf_counter()
    record = await in_thread(sweeps.run_sweep, loaded, jobs=2, report=False, on_trial=seen.append,
                             executor_factory=cluster.executor(loaded.params))
    print(f"\nsweep of 4 (data Job + Indexed Job, 2 pods at a time): {time.perf_counter() - began:.1f} s")
    assert record["status"] == "partial" and record["jobs"] == 2

    # the data stage: one Job; the trials: ONE Indexed Job of 4, one pod per index
    jobs = sorted(cluster.pods)
    assert len(jobs) == 2 and [name for name in jobs if name in cluster.indexed] == [jobs[1]]
    [trials_job] = cluster.indexed
    assert {i: [e.exit_code for e in ends] for i, ends in cluster.indexed[trials_job].items()} == {
        0: [0], 1: [0], 2: [EXIT_CELL_FAILED], 3: [0]}                # the failing trial: FailIndex, no retry

    ledger_now = _records(_isolated_runs)
    trial_runs = {rid: r for rid, r in ledger_now.items() if r.get("sweep", {}).get("trial") is not None}
    assert len(trial_runs) == 4 and sorted(r["status"] for r in trial_runs.values()).count("succeeded") == 3
    assert sorted(r["params"]["train"]["params"]["C"] for r in trial_runs.values()
                  if r["status"] == "succeeded") == [0.1, 1, 10]
    for rid, run in trial_runs.items():        # borrowed the one data run's outputs, on the volume
        assert run["stages"]["data"]["source_run"] == record["data_run"]
        assert (_isolated_runs / rid / "artifacts" / "train.parquet").stat().st_ino == \
            (_isolated_runs / record["data_run"] / "artifacts" / "train.parquet").stat().st_ino

    # the failed trial, named with its cell, its run kept for resume
    failed = record["trials"][2]
    assert failed["status"] == "failed" and failed["setting"] == {"train.params.C": 13}
    assert "Stage 'train' failed in cell" in failed["error"] and "C=13 breaks on purpose" in failed["error"]
    assert ledger_now[failed["run"]]["status"] == "failed"
    assert [t["status"] for t in record["trials"]] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert {t["index"] for t in seen if t["status"] == "running"} == {0, 1, 2, 3}

    # resume: a new Indexed Job of ONE index, mapped to trial 2, continuing its run
    notebook.cells.pop(3)
    nbformat.write(notebook, path)
    kept = {rid: (_isolated_runs / rid / "run.json").read_bytes() for rid in trial_runs if rid != failed["run"]}
    began = time.perf_counter()
    resumed = await in_thread(sweeps.resume_sweep, record["id"], report=False,
                              executor_factory=cluster.executor(loaded.params))
    print(f"resume of the failed trial (an Indexed Job of 1): {time.perf_counter() - began:.1f} s")
    assert resumed["status"] == "succeeded"
    [again] = [name for name in cluster.indexed if name != trials_job]
    assert {i: [e.exit_code for e in ends] for i, ends in cluster.indexed[again].items()} == {0: [0]}
    assert resumed["trials"][2]["run"] == failed["run"]
    assert [t["attempts"] for t in resumed["trials"]] == [1, 1, 2, 1]
    run = json.loads((_isolated_runs / failed["run"] / "run.json").read_text())
    assert run["status"] == "succeeded" and len(run["resumed"]) == 1
    assert {rid: (_isolated_runs / rid / "run.json").read_bytes() for rid in kept} == kept


@pytest.mark.asyncio
async def test_an_image_that_cannot_be_pulled_ends_every_trial_with_the_image_named(scripted):

    scripted.run_pod = lambda job, attempt: (time.sleep(2), _jobs.PodEnd(0))[1]
    task = asyncio.create_task(_jobs.first_pod_never_pulls(scripted))
    ends = await in_thread(_run_trials, scripted, [0, 1], 1)
    await task
    assert set(ends) == {0, 1} and all(e["status"] == "failed" for e in ends.values())
    assert all("ErrImageNeverPull" in e["error"] and IMAGE in e["error"] for e in ends.values())
    [key] = [k for k in scripted.fake.objects if k[0] == _jobs.JOBS]
    assert scripted.fake.objects[key].deleted                       # nothing left waiting on the cluster


@pytest.mark.asyncio
async def test_an_interrupted_sweep_deletes_its_indexed_job(scripted, monkeypatch):
    """Ctrl-C while the trials' Job runs: the Job is deleted (its pods with it)."""

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(SweepJobs, "_watch", interrupted)
    scripted.run_pod = lambda job, attempt: (time.sleep(1), _jobs.PodEnd(0))[1]
    with pytest.raises(KeyboardInterrupt):
        await in_thread(_run_trials, scripted, [0, 1], 2)
    [key] = [k for k in scripted.fake.objects if k[0] == _jobs.JOBS]
    assert scripted.fake.objects[key].deleted


@pytest.mark.asyncio
async def test_a_cancelled_sweep_deletes_its_indexed_job(scripted):
    """A panel's Cancel (the sweep's cancel event) while the trials' Job runs: RunCancelled, the
    Job deleted."""
    import threading

    from mlops_kit.errors import RunCancelled

    cancel = threading.Event()
    scripted.run_pod = lambda job, attempt: (cancel.set() if _index(job) else None, time.sleep(0.5 * _index(job)),
                                             _jobs.PodEnd(0))[2]
    with pytest.raises(RunCancelled, match="before stage 'trials'"):
        await in_thread(_run_trials, scripted, [0, 1], 1, cancel=cancel)
    [key] = [k for k in scripted.fake.objects if k[0] == _jobs.JOBS]
    assert scripted.fake.objects[key].deleted
