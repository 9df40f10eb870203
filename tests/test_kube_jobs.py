"""execution.mode kubernetes: each stage a Job, against a FAKE Kubernetes API (kmock) whose Job
controller (tests/_jobs.py) runs the pods for REAL in a private containerd (tests/_kubelet.py):
the stage image (this machine's Python environment, read-only; in one test the kit's own stage
image, built for real and imported into containerd), the claim as the runs folder mounted where
the Job says, command, env and memory limit from the rendered Job.

Also: the rendered Jobs against the Kubernetes schema, `run --dry-run`, the parameters."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import REPO
from mlops_kit import runner
from mlops_kit.errors import ManifestError, ParameterError, StageFailed
from mlops_kit.execution import Outcome
from mlops_kit.execution.job import EXIT_BAD_INPUT, EXIT_CELL_FAILED
from mlops_kit.execution.kubernetes import KubernetesExecutor, job_name, render_job, validate_jobs
from mlops_kit.params import RunParams, load_params, resume_params
from mlops_kit.stages import STAGES

NS = "mk-jobs"
CLAIM = "mlops-kit-runs"
IMAGE = "localhost:32000/mlops-kit/stage:test"
STAGE = {s.name: s for s in STAGES}


def kube_params(**execution) -> list[str]:
    values = {"mode": "kubernetes", "namespace": NS, "image": IMAGE, "volume": CLAIM, "memory": "3Gi",
              "timeout": 600, **execution}
    return [f"execution.{k}={v}" for k, v in values.items()]


# --- rendering, schema, dry run, parameters (no cluster) ----------------------------------------

def test_rendered_job_passes_the_kubernetes_schema_and_says_what_the_issue_asks(tmp_path):
    params = load_params(overrides=kube_params(retries=3)).params
    run_dir = tmp_path / "20260101-000000-abcd"
    job = render_job(STAGE["train"], run_dir, {"run_dir": str(run_dir), "model": "ridge"}, params,
                     runs_dir=tmp_path)
    validate_jobs([job], params.deploy.kubernetes_version)
    spec = job["spec"]
    assert spec["backoffLimit"] == 3 and spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In",
                                                               "values": [EXIT_CELL_FAILED, EXIT_BAD_INPUT]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == [str(run_dir / "notebooks" / STAGE["train"].notebook),
                                 json.dumps({"model": "ridge", "run_dir": str(run_dir)}, sort_keys=True)]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "3Gi"}
    assert {"name": "runs", "mountPath": str(tmp_path)} in container["volumeMounts"]
    assert job["metadata"]["name"].startswith(job_name("20260101-000000-abcd", "train") + "-")
    assert job_name("20260101-000000-abcd", "train", "1f2e") == "mlops-kit-20260101-000000-abcd-train-1f2e"
    assert len(job_name("x" * 80, "evaluate", "1f2e")) == 63


def test_schema_check_catches_a_broken_job(tmp_path):
    params = load_params(overrides=kube_params()).params
    job = render_job(STAGE["data"], tmp_path / "r1", {}, params, runs_dir=tmp_path)
    job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["operator"] = ["In"]
    job["spec"]["template"]["spec"]["containers"][0]["memory"] = "1Gi"
    with pytest.raises(ManifestError) as excinfo:
        validate_jobs([job], params.deploy.kubernetes_version)
    assert "Job/" in str(excinfo.value)


def test_a_run_folder_outside_the_volume_is_refused(tmp_path):
    params = load_params(overrides=kube_params()).params
    with pytest.raises(Exception, match="runs folder"):
        render_job(STAGE["data"], tmp_path / "elsewhere" / "r1", {}, params, runs_dir=tmp_path / "runs")


def test_dry_run_prints_one_job_document_per_stage_without_a_cluster(_isolated_runs):
    from click.testing import CliRunner

    from mlops_kit.cli import main

    args = ["run", "--dry-run"] + [a for item in kube_params() for a in ("--set", item)]
    result = CliRunner().invoke(main, args, env={"KUBECONFIG": "/nonexistent"})
    assert result.exit_code == 0, result.output
    jobs = list(yaml.safe_load_all(result.output))
    assert [j["metadata"]["labels"]["mlops-kit/stage"] for j in jobs] == ["data", "train", "evaluate"]
    assert all(j["kind"] == "Job" and j["metadata"]["namespace"] == NS for j in jobs)
    assert not any(_isolated_runs.iterdir())          # no run was created
    local = CliRunner().invoke(main, ["run", "--dry-run"])
    assert local.exit_code != 0 and "execution.mode kubernetes" in str(local.exception) + local.output


def test_a_kubernetes_run_prestarts_no_local_kernel(_isolated_runs, monkeypatch):
    from click.testing import CliRunner

    from mlops_kit.cli import main
    from mlops_kit.execution import local

    def prestart(*args, **kwargs):
        raise RuntimeError("a local kernel was prestarted")

    monkeypatch.setattr(local, "prestart", prestart)
    result = CliRunner().invoke(main, ["run"] + [a for item in kube_params() for a in ("--set", item)],
                                env={"KUBECONFIG": str(_isolated_runs / "no-kubeconfig")})
    assert result.exit_code != 0 and "prestarted" not in str(result.exception)   # it fails at the cluster
    result = CliRunner().invoke(main, ["run", "--stages", "data"])
    assert "prestarted" in str(result.exception)          # a local run still prestarts, before planning


def test_execution_parameters_are_checked():
    with pytest.raises(ParameterError) as excinfo:
        load_params(overrides=["execution.mode=kubernetes", "execution.memory=lots", "execution.volume=No_Claim"])
    problems = {p.key: p for p in excinfo.value.problems}
    assert set(problems) == {"execution.memory", "execution.volume"}
    assert "Kubernetes quantity" in problems["execution.memory"].expected
    assert load_params(overrides=["execution.mode=kubernetes"]).params.execution.image is None   # the kit's own
    assert RunParams().execution.mode == "local"


# --- the kit's stage image (execution.image empty) ------------------------------------------------

def test_the_stage_image_is_named_by_its_content_without_a_build(tmp_path, monkeypatch, project_copy):
    """Same environment and checkout: the same reference; a changed notebook or a changed
    version: another. Naming it builds nothing (the dry run's reference)."""
    from mlops_kit.image import _stage

    monkeypatch.setenv("MLOPS_KIT_CACHE_DIR", str(tmp_path / "cache"))
    ref = _stage.stage_ref()
    assert ref == _stage.stage_ref() and ref.startswith("localhost/mlops-kit/stage:")
    assert _stage.stage_ref(registry="localhost:32000/") == ref.replace("localhost/", "localhost:32000/")
    assert not (tmp_path / "cache").exists()
    _add_failing_cell(project_copy, STAGE["train"].notebook)
    changed = _stage.stage_ref()
    assert changed != ref
    real = _stage._base.pin_requirements
    monkeypatch.setattr(_stage._base, "pin_requirements",
                        lambda names: {**real(names), "papermill": "0.0.1"})
    assert _stage.stage_ref() not in (ref, changed)


def test_the_stage_image_requirements_are_the_installed_distributions_own():
    from importlib import metadata

    from mlops_kit.image import pin_requirements, stage_requirements

    names = stage_requirements()
    declared = [r.split(";")[0] for r in metadata.requires("mlops-kit") if "extra ==" not in r]
    assert len(names) == len(declared) and {"papermill", "ipykernel", "scikit-learn"} <= set(names)
    assert not {"pytest", "kmock", "cosmic-ray"} & set(names)          # the extras are left out
    pins = pin_requirements(names)
    assert pins["papermill"] == metadata.version("papermill") and "jupyter-client" in pins   # and what they need


def test_dry_run_without_an_image_names_the_stage_image_and_builds_nothing(_isolated_runs, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlops_kit.cli import main
    from mlops_kit.image import stage_ref

    monkeypatch.setenv("MLOPS_KIT_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [item for item in kube_params() if not item.startswith("execution.image=")]
    result = CliRunner().invoke(main, ["run", "--dry-run"] + [a for o in overrides for a in ("--set", o)],
                                  env={"KUBECONFIG": "/nonexistent"})
    assert result.exit_code == 0, result.output + result.stderr
    ref = stage_ref()
    assert [j["spec"]["template"]["spec"]["containers"][0]["image"] for j in yaml.safe_load_all(result.stdout)] == [ref] * 3
    assert f"stage image {ref}" in result.stderr
    assert not (tmp_path / "cache").exists()


# --- the fake API with a Job controller whose pods run for real ----------------------------------

kmock = pytest.importorskip("kmock")
import pytest_asyncio  # noqa: E402

import _jobs  # noqa: E402


@pytest.fixture(scope="module")
def containerd():
    from test_image_support import start_containerd

    from _real import need_commands
    from mlops_kit.image import Containerd

    need_commands("runc", "ctr")
    return Containerd(start_containerd())


def stage_image() -> "object":
    import _kubelet

    venv = Path(sys.prefix)
    folders = {"/usr", "/etc", str(Path(sys.base_prefix).resolve()), str(venv), str(REPO)}
    return _kubelet.StageImage(folders=tuple(sorted(folders)),
                               env={"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin"})


@pytest_asyncio.fixture
async def cluster(containerd, tmp_path, _isolated_runs):
    """The fake API, its Job controller running each pod in containerd, and an executor factory."""
    workdir = tmp_path / "pods"
    workdir.mkdir()
    run_pod = _jobs.kubelet_pods(containerd, workdir, claims={CLAIM: _isolated_runs}, images={IMAGE: stage_image()})
    async with _jobs.fake_job_api(NS, CLAIM, run_pod) as controller:
        api = controller.api
        controller.executor = lambda params: KubernetesExecutor(params, api_client=api, poll=0.05)
        yield controller


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.containerd
@pytest.mark.asyncio
async def test_three_stages_in_jobs_match_a_local_run_and_a_local_run_reuses_them(cluster, _isolated_runs):
    loaded = load_params(overrides=kube_params())
    record = await in_thread(runner.run_pipeline, loaded, executor=cluster.executor(loaded.params))
    assert record["status"] == "succeeded"
    assert [len(pods_of(cluster, record["id"], s)) for s in ("data", "train", "evaluate")] == [1, 1, 1]
    assert all(len(ends) == 1 and ends[0].exit_code == 0 for ends in cluster.pods.values())
    run = _isolated_runs / record["id"]
    for stage in ("data", "train", "evaluate"):   # executed in the pod, in place, on the volume
        executed = nbformat.read(run / "notebooks" / STAGE[stage].notebook, as_version=4)
        assert executed.metadata["papermill"]["parameters"]["run_dir"] == str(run)
        assert all(c.metadata.get("papermill", {}).get("status") == "completed" for c in executed.cells)
        assert (run / "reports" / (Path(STAGE[stage].notebook).stem + ".html")).is_file()

    # submit -> first cell of the first stage, the stage image present (report it)
    first = nbformat.read(run / "notebooks" / STAGE["data"].notebook, as_version=4).cells[0]
    started = datetime.fromisoformat(first.metadata["papermill"]["start_time"].replace("Z", "+00:00")).timestamp()
    [submitted] = [t for name, t in cluster.created.items() if name.startswith(job_name(record["id"], "data"))]
    print(f"\nsubmit -> first cell: {started - submitted:.2f} s")

    local = load_params(overrides=["execution.mode=local"])
    fresh = await in_thread(runner.run_pipeline, local, use_cache=False)
    assert fresh["metrics"] == record["metrics"]
    for stage in ("data", "train"):
        assert fresh["stages"][stage]["fingerprint"] == record["stages"][stage]["fingerprint"], stage
    # evaluate's inputs include model.skops, whose bytes differ from one training to the next (here too)
    same = ("notebook", "params", "environment")
    assert ({k: fresh["stages"]["evaluate"]["fingerprint"][k] for k in same}
            == {k: record["stages"]["evaluate"]["fingerprint"][k] for k in same})
    # the data stage's outputs byte for byte (the model card names its run, so train's differ by that)
    assert fresh["stages"]["data"]["outputs"] == record["stages"]["data"]["outputs"]
    reused = await in_thread(runner.run_pipeline, load_params(overrides=["execution.mode=local"]))
    assert {s: reused["stages"][s]["status"] for s in ("data", "train", "evaluate")} == dict.fromkeys(
        ("data", "train", "evaluate"), "cached")


@pytest.mark.containerd
@pytest.mark.slow
@pytest.mark.asyncio
async def test_three_stages_in_the_kits_own_stage_image_match_a_local_run(cluster, containerd, image_env,
                                                                         _isolated_runs):
    """No execution.image: the executor builds the REAL stage image from this environment and
    checkout (or finds it in the cache: .ci/run builds it up front, about two minutes cold),
    imports it into the cluster's containerd as a serving image is shipped, and the test
    kubelet runs each pod from that image's own root file system and ENV. (The other Job tests
    keep the host-folder image: a 1.2 GB image unpacked per test would double their time.)"""
    from mlops_kit.image import stage_ref

    loaded = load_params(overrides=[o for o in kube_params() if not o.startswith("execution.image=")]
                         + [f"package.containerd_socket={containerd.socket}",
                            f"package.containerd_namespace={containerd.namespace}"])
    record = await in_thread(runner.run_pipeline, loaded, executor=cluster.executor(loaded.params))
    assert record["status"] == "succeeded"
    ref = stage_ref()
    assert containerd.image_digest(ref) is not None                 # shipped into the cluster's containerd
    images = {obj.raw["spec"]["template"]["spec"]["containers"][0]["image"]
              for key, obj in cluster.fake.objects.items() if key[0] == _jobs.JOBS}
    assert images == {ref}
    assert all(len(ends) == 1 and ends[0].exit_code == 0 for ends in cluster.pods.values())
    first = nbformat.read(_isolated_runs / record["id"] / "notebooks" / STAGE["data"].notebook, as_version=4).cells[0]
    started = datetime.fromisoformat(first.metadata["papermill"]["start_time"].replace("Z", "+00:00")).timestamp()
    [submitted] = [t for name, t in cluster.created.items() if name.startswith(job_name(record["id"], "data"))]
    print(f"\nsubmit -> first cell, the real stage image: {started - submitted:.2f} s")

    local = await in_thread(runner.run_pipeline, load_params(overrides=["execution.mode=local"]), use_cache=False)
    assert local["metrics"] == record["metrics"]
    for stage in ("data", "train"):       # the same versions in the pod as here: the same fingerprints
        assert local["stages"][stage]["fingerprint"] == record["stages"][stage]["fingerprint"], stage
    assert local["stages"]["data"]["outputs"] == record["stages"]["data"]["outputs"]


def _add_failing_cell(project: Path, notebook: str) -> None:
    path = project / "notebooks" / notebook
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('the stage broke on purpose')"))
    nbformat.write(nb, path)


@pytest.mark.containerd
@pytest.mark.asyncio
async def test_a_failing_cell_fails_the_job_at_once_names_the_cell_and_resume_continues(
        cluster, project_copy, _isolated_runs):
    _add_failing_cell(project_copy, STAGE["train"].notebook)
    loaded = load_params(overrides=kube_params(retries=2) + ["stages=[data, train]"])
    with pytest.raises(StageFailed) as excinfo:
        await in_thread(runner.run_pipeline, loaded, executor=cluster.executor(loaded.params))
    failure = excinfo.value
    assert failure.stage == "train" and failure.exception == "RuntimeError"
    executed = nbformat.read(failure.notebook, as_version=4)           # the executed notebook, on the volume
    assert "broke on purpose" in executed.cells[failure.cell_index].source
    assert "broke on purpose" in failure.detail
    record = next(r for r in _records(_isolated_runs) if r["status"] == "failed")
    assert [[e.exit_code for e in pods] for pods in pods_of(cluster, record["id"], "train")] == [
        [EXIT_CELL_FAILED]]                                            # one pod: FailJob, no retry
    assert record["error"]["cell_index"] == failure.cell_index

    fixed = project_copy / "notebooks" / STAGE["train"].notebook
    nb = nbformat.read(fixed, as_version=4)
    nb.cells.pop()
    nbformat.write(nb, fixed)
    resumed = await in_thread(runner.resume_run, record["id"], executor=cluster.executor(loaded.params))
    assert resumed["status"] == "succeeded"
    assert len(pods_of(cluster, record["id"], "data")) == 1              # the data stage was not run again
    assert [[e.exit_code for e in pods] for pods in pods_of(cluster, record["id"], "train")] == [
        [EXIT_CELL_FAILED], [0]]                                       # a new Job beside the failed one


@pytest.mark.containerd
@pytest.mark.asyncio
async def test_a_stage_over_its_memory_limit_is_retried_then_reported_with_the_limit(cluster, _isolated_runs):
    loaded = load_params(overrides=kube_params(memory="150Mi", retries=1) + ["stages=[data]"])
    with pytest.raises(StageFailed) as excinfo:
        await in_thread(runner.run_pipeline, loaded, executor=cluster.executor(loaded.params))
    failure = excinfo.value
    assert failure.exception == "OOMKilled"
    assert "150Mi" in failure.detail and "execution.memory" in failure.detail
    record = next(r for r in _records(_isolated_runs) if r["status"] == "failed")
    [ends] = pods_of(cluster, record["id"], "data")
    assert [e.reason for e in ends] == ["OOMKilled", "OOMKilled"]      # retried once (retries: 1), then failed

    # --resume with more memory: execution.* may change (where the stage runs), recorded in run.json
    more = ["execution.memory=3Gi"]
    resumed = await in_thread(runner.resume_run, record["id"], overrides=more,
                              executor=cluster.executor(resume_params(_isolated_runs / record["id"], more)))
    assert resumed["status"] == "succeeded"
    assert _records(_isolated_runs)[0]["params"]["execution"]["memory"] == "3Gi"
    assert [[e.reason for e in pods] for pods in pods_of(cluster, record["id"], "data")] == [
        ["OOMKilled", "OOMKilled"], ["Completed"]]


def test_resume_may_change_where_stages_run_never_what_they_compute(tmp_path):
    from mlops_kit import cache

    with pytest.raises(ParameterError) as excinfo:
        resume_params(tmp_path, ["execution.memory=4Gi", "train.model=ridge", "seed=7"])
    assert [p.key for p in excinfo.value.problems] == ["train.model", "seed"]
    assert "execution.*" in excinfo.value.problems[0].expected
    # execution.* is in no fingerprint: a stage run in a Job is the same stage as a local one
    local = load_params().params
    job = load_params(overrides=kube_params(memory="8Gi", cpu="3", retries=5, timeout=60)).params
    for stage in STAGES:
        inputs = dict.fromkeys(stage.inputs, "0" * 64)
        assert (cache.fingerprint(stage, local, inputs, data_file=False)
                == cache.fingerprint(stage, job, inputs, data_file=False)), stage.name


def pods_of(controller, run_id: str, stage: str) -> list[list]:
    """The pod ends of each Job of a run's stage, Jobs in the order created."""
    prefix = job_name(run_id, stage) + "-"
    return [ends for name, ends in controller.pods.items() if name.startswith(prefix)]


def _records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/run.json"))]


# --- outcomes the real pods cannot produce here: scripted pod ends -------------------------------

@pytest_asyncio.fixture
async def scripted(_isolated_runs):
    """The fake API and its Job controller, each pod's end taken from ``controller.script``."""
    script: list[_jobs.PodEnd] = []
    async with _jobs.fake_job_api(NS, CLAIM, lambda job, attempt: script.pop(0)) as controller:
        controller.script = script
        yield controller


def _execute(controller, **execution) -> Outcome:
    params = load_params(overrides=kube_params(**execution)).params
    executor = KubernetesExecutor(params, api_client=controller.api, poll=0.01)
    run_dir = Path(os.environ["MLOPS_KIT_RUNS_DIR"]) / "20260101-000000-abcd"
    from mlops_kit.execution import ExecutionPlan

    executor.start(ExecutionPlan([STAGE["evaluate"]]))
    try:
        return executor.execute(STAGE["evaluate"], run_dir, {"run_dir": str(run_dir)})
    finally:
        executor.stop()


@pytest.mark.asyncio
async def test_a_disruption_is_not_counted_and_an_eviction_is_retried(scripted):
    scripted.script[:] = [_jobs.PodEnd(137, "Error", disrupted=True), _jobs.PodEnd(137, "Error", disrupted=True),
                          _jobs.PodEnd(1, "Evicted"), _jobs.PodEnd(0, "Completed")]
    outcome = await in_thread(_execute, scripted, retries=1)
    assert outcome.status == "succeeded" and not scripted.script


@pytest.mark.asyncio
async def test_evictions_past_the_retries_are_reported(scripted):
    scripted.script[:] = [_jobs.PodEnd(1, "Evicted")] * 3
    outcome = await in_thread(_execute, scripted, retries=2)
    assert outcome.status == "failed" and outcome.exception == "Evicted"
    assert "3 times of 3" in outcome.detail and "2 retries" in outcome.detail


@pytest.mark.asyncio
async def test_an_image_that_cannot_be_pulled_ends_the_stage_with_the_image_named(scripted):

    scripted.script[:] = []
    scripted.run_pod = lambda job, attempt: (time.sleep(2), _jobs.PodEnd(0))[1]
    task = asyncio.create_task(_jobs.first_pod_never_pulls(scripted))
    outcome = await in_thread(_execute, scripted)
    await task
    assert outcome.status == "failed" and outcome.exception == "ErrImageNeverPull"
    assert IMAGE in outcome.detail and "execution.image" in outcome.detail


@pytest.mark.asyncio
async def test_an_interrupted_run_deletes_its_running_job(scripted, monkeypatch):
    """Ctrl-C (or a cancelled panel run) while a stage's Job runs: stop() deletes that Job."""
    from mlops_kit.execution import ExecutionPlan

    def interrupted(self, cluster, job, notebook, started):
        raise KeyboardInterrupt

    monkeypatch.setattr(KubernetesExecutor, "_wait", interrupted)
    scripted.run_pod = lambda job, attempt: (time.sleep(1), _jobs.PodEnd(0))[1]
    params = load_params(overrides=kube_params()).params
    executor = KubernetesExecutor(params, api_client=scripted.api, poll=0.01)
    executor.start(ExecutionPlan([STAGE["evaluate"]]))
    run_dir = Path(os.environ["MLOPS_KIT_RUNS_DIR"]) / "20260101-000000-abcd"
    with pytest.raises(KeyboardInterrupt):
        await in_thread(executor.execute, STAGE["evaluate"], run_dir, {"run_dir": str(run_dir)})
    [key] = [k for k in scripted.fake.objects if k[0] == _jobs.JOBS]
    assert not scripted.fake.objects[key].deleted
    await in_thread(executor.stop)
    assert scripted.fake.objects[key].deleted


@pytest.mark.asyncio
async def test_the_stage_log_is_streamed_once_per_line(scripted):
    import re

    reads = []

    def log(request):     # the log grows: the first read has one line, later reads both
        reads.append(1)
        return kmock.Response(status=200, payload=(b"Executing notebook with kernel: python3\n" + (
            b"Executing Cell 1---------------------------------------\n" if len(reads) > 1 else b"")))

    scripted.fake["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << log
    scripted.run_pod = lambda job, attempt: (time.sleep(0.5), _jobs.PodEnd(0, "Completed"))[1]  # read while running
    lines: list[str] = []
    params = load_params(overrides=kube_params()).params
    executor = KubernetesExecutor(params, api_client=scripted.api, poll=0.01, log=lines.append)
    from mlops_kit.execution import ExecutionPlan

    executor.start(ExecutionPlan([STAGE["evaluate"]]))
    run_dir = Path(os.environ["MLOPS_KIT_RUNS_DIR"]) / "20260101-000000-abcd"
    outcome = await in_thread(executor.execute, STAGE["evaluate"], run_dir, {"run_dir": str(run_dir)})
    executor.stop()
    assert outcome.status == "succeeded"
    assert [line for line in lines if "|" in line] == ["  evaluate  | Executing notebook with kernel: python3",
                                                       "  evaluate  | Executing Cell 1" + "-" * 39]


@pytest.mark.asyncio
async def test_a_missing_claim_is_a_plain_error_before_any_job(scripted):
    from mlops_kit.errors import K8sDeployError
    from mlops_kit.execution import ExecutionPlan

    params = load_params(overrides=kube_params(volume="no-such-claim")).params
    executor = KubernetesExecutor(params, api_client=scripted.api, poll=0.01)
    executor.start(ExecutionPlan([STAGE["evaluate"]]))
    with pytest.raises(K8sDeployError, match="execution.volume must name a PersistentVolumeClaim"):
        await in_thread(executor.ready)
    executor.stop()
    assert not any(k[0] == _jobs.JOBS for k in scripted.fake.objects)


@pytest.mark.asyncio
async def test_an_explicit_image_wins_over_the_kits_stage_image(scripted, monkeypatch):
    import mlops_kit.image
    from mlops_kit.execution import ExecutionPlan

    own = "localhost/mlops-kit/stage:0123456789abcdef"
    built = []
    monkeypatch.setattr(mlops_kit.image, "ensure_stage_image", lambda params, **kwargs: built.append(1) or own)
    for overrides, expected in ((kube_params(), IMAGE),
                                ([o for o in kube_params() if not o.startswith("execution.image=")], own)):
        executor = KubernetesExecutor(load_params(overrides=overrides).params, api_client=scripted.api, poll=0.01)
        executor.start(ExecutionPlan([STAGE["evaluate"]]))
        await in_thread(executor.ready)
        assert executor.image == expected
        executor.stop()
    assert built == [1]                      # built (and shipped) only when execution.image is empty


def test_a_data_file_outside_the_volume_is_refused(tmp_path, mixed_csv):
    from mlops_kit.execution import ExecutionPlan

    params = load_params(overrides=kube_params() + [f"data.source={mixed_csv}"]).params
    executor = KubernetesExecutor(params, api_client=object())
    executor.start(ExecutionPlan([STAGE["data"]]))
    with pytest.raises(ParameterError) as excinfo:
        executor.ready()
    assert excinfo.value.problems[0].key == "data.source"


# --- a real cluster, when there is one -----------------------------------------------------------

@pytest.mark.cluster
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                    reason="no real cluster: set KUBECONFIG to a MicroK8s kubeconfig (docs/microk8s.md)")
def test_a_run_in_jobs_on_a_real_cluster(monkeypatch):
    """On the MicroK8s node itself: MLOPS_KIT_STAGE_IMAGE names a stage image the node holds,
    MLOPS_KIT_STAGE_RUNS_DIR the folder of the claim mlops-kit-runs in namespace
    MLOPS_KIT_STAGE_NAMESPACE (default mlops-kit); README, Beyond one machine."""
    image, runs = os.environ.get("MLOPS_KIT_STAGE_IMAGE"), os.environ.get("MLOPS_KIT_STAGE_RUNS_DIR")
    if not image or not runs:
        pytest.skip("set MLOPS_KIT_STAGE_IMAGE and MLOPS_KIT_STAGE_RUNS_DIR (the claim's folder on this node)")
    monkeypatch.setenv("MLOPS_KIT_RUNS_DIR", runs)
    namespace = os.environ.get("MLOPS_KIT_STAGE_NAMESPACE", "mlops-kit")
    loaded = load_params(overrides=["execution.mode=kubernetes", f"execution.image={image}",
                                    f"execution.namespace={namespace}", "stages=[data, train]"])
    record = runner.run_pipeline(loaded, use_cache=False)
    assert record["status"] == "succeeded"
