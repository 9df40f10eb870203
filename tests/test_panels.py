"""The panels as plain Python: buttons clicked with ``button.click()``, the I/O boundary
(running the pipeline, the ledger, builders, deployers) faked; everything else is real
(the parameter schema and loader, the widgets)."""

from __future__ import annotations

import html
import re
import threading
from pathlib import Path

import ipywidgets as widgets
import pytest

from conftest import REPO
from mlops_kit import params as params_module
from mlops_kit.errors import MlopsKitError, ParameterError, ParameterProblem, StageFailed
from mlops_kit.panels import PipelinePanel, RunsPanel
from mlops_kit.runner import RunCancelled, RunEvent

PARAMETER_FILES = [REPO / "parameters" / "default.yaml", REPO / "parameters" / "random_forest.yaml"]


def text(html_value: str) -> str:
    """What an HTML widget shows: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


def output_text(output: widgets.Output) -> str:
    return "".join(item.get("text", "") for item in output.outputs)


class FakeRun:
    """Stands in for runner.run_pipeline: emits the events a real run emits."""

    def __init__(self, run_dir: Path, *, fail: Exception | None = None, wait_for_cancel: bool = False):
        self.run_dir = run_dir
        self.fail = fail
        self.wait_for_cancel = wait_for_cancel
        self.calls: list[dict] = []
        self.started = threading.Event()

    def __call__(self, loaded, *, stages, on_event, cancel):
        self.calls.append({"loaded": loaded, "stages": stages})
        run_id = self.run_dir.name
        on_event(RunEvent("run_started", run_id, data={"run_dir": str(self.run_dir), "stages": stages}))
        self.started.set()
        if self.wait_for_cancel:
            assert cancel.wait(30), "the panel never set the cancel event"
            on_event(RunEvent("run_finished", run_id, stage=stages[0], message="interrupted"))
            raise RunCancelled(run_id, stages[0])
        for name in stages:
            on_event(RunEvent("stage_started", run_id, name))
            if self.fail is not None and getattr(self.fail, "stage", None) == name:
                on_event(RunEvent("stage_failed", run_id, name, message=str(self.fail),
                                  data={"cell_index": self.fail.cell_index, "exception": self.fail.exception}))
                on_event(RunEvent("run_finished", run_id, stage=name, message="failed",
                                  data={"record": {"id": run_id, "status": "failed"}}))
                raise self.fail
            (self.run_dir / "notebooks" / f"{name}.ipynb").write_text("{}")
            (self.run_dir / "reports" / f"{name}.html").write_text("<html></html>")
            on_event(RunEvent("stage_finished", run_id, name, message="succeeded", data={"seconds": 1.25}))
        if self.fail is not None:
            raise self.fail
        record = {"id": run_id, "status": "succeeded", "metrics": {"accuracy": 0.97, "gate_passed": True}}
        on_event(RunEvent("run_finished", run_id, message="succeeded", data={"record": record}))
        return record


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = tmp_path / "runs" / "20260101-000000-abcd"
    for sub in ("notebooks", "reports", "artifacts"):
        (folder / sub).mkdir(parents=True)
    return folder


def pipeline_panel(fake_run) -> PipelinePanel:
    return PipelinePanel(parameter_files=lambda: PARAMETER_FILES, run_pipeline=fake_run)


def run_and_wait(panel: PipelinePanel) -> None:
    panel.run_button.click()
    panel.worker.join(30)
    assert not panel.worker.busy


# --- PipelinePanel -------------------------------------------------------------------

def test_form_is_generated_from_the_schema_and_filled_from_the_file(run_dir):
    panel = pipeline_panel(FakeRun(run_dir))
    fields = panel.form.fields
    assert list(fields) == ["data.source", "data.target", "data.test_size", "seed", "task", "train.model",
                            "train.cv_folds"]
    assert isinstance(fields["seed"].input, widgets.IntText)
    assert isinstance(fields["data.test_size"].input, widgets.FloatText)
    assert isinstance(fields["task"].input, widgets.Dropdown)
    assert [label for label, _ in fields["task"].input.options] == ["(none)", "classification", "regression"]
    assert set(params_module.MODEL_NAMES) == set(fields["train.model"].input.options)
    assert fields["data.test_size"].value == 0.2 and fields["task"].value is None
    assert "held out" in str(fields["data.test_size"].children[0].children[1].value)  # the schema's description
    assert panel.overrides() == []
    assert panel.selected_stages() == ["data", "train", "evaluate"]
    assert "mlk-field-data-test-size" in fields["data.test_size"]._dom_classes

    panel.file_picker.value = str(PARAMETER_FILES[1])
    assert fields["train.model"].value == "random_forest" and fields["train.cv_folds"].value == 0
    assert panel.overrides() == []


def test_a_bad_value_shows_its_message_next_to_its_field(run_dir):
    fake = FakeRun(run_dir)
    panel = pipeline_panel(fake)
    test_size = panel.form.fields["data.test_size"]
    test_size.input.value = 1.5
    assert "less than 1" in text(test_size.message.value) and "1.5" in text(test_size.message.value)
    assert panel.overrides() == ["data.test_size=1.5"]
    panel.form.fields["train.model"].input.value = "random_forrest"
    assert "random_forest" in text(panel.form.fields["train.model"].message.value)  # the suggestion
    panel.run_button.click()
    assert fake.calls == [] and "Fix the parameters" in text(panel.status.value)
    test_size.input.value = 0.3
    panel.form.fields["train.model"].input.value = "ridge"
    assert text(test_size.message.value) == "" and text(panel.form.fields["train.model"].message.value) == ""
    assert panel.overrides() == ["data.test_size=0.3", "train.model=ridge"]


def test_problems_without_a_field_show_under_the_form(run_dir):
    def load_params(file, overrides):
        raise ParameterError([ParameterProblem(str(file), "evaluate.gate.accurasy", "a metric", "'accurasy'",
                                               "accuracy")])

    panel = PipelinePanel(parameter_files=lambda: PARAMETER_FILES, load_params=load_params,
                          run_pipeline=FakeRun(run_dir))
    assert "evaluate.gate.accurasy" in text(panel.problems.value) and "accuracy" in text(panel.problems.value)


def test_run_goes_through_run_pipeline_with_the_forms_overrides(run_dir):
    fake = FakeRun(run_dir)
    panel = pipeline_panel(fake)
    finished = []
    panel.on_run_finished(finished.append)
    panel.form.fields["seed"].input.value = 7
    panel.form.fields["task"].input.value = "classification"
    panel.stage_boxes["evaluate"].value = False
    run_and_wait(panel)
    (call,) = fake.calls
    assert call["stages"] == ["data", "train"]
    assert call["loaded"].overrides == ["seed=7", "task=classification"]
    assert call["loaded"].params.seed == 7
    assert "succeeded" in text(panel.status.value) and run_dir.name in text(panel.status.value)
    assert "accuracy 0.9700" in text(panel.status.value)
    assert [bar.state.value for bar in panel.progress.children] == ["succeeded in 1.2 s"] * 2
    assert [bar.bar.bar_style for bar in panel.progress.children] == ["success"] * 2
    log = output_text(panel.log_output)
    assert f"run {run_dir.name}: data, train" in log and "train     succeeded" in log
    assert "data.ipynb" in panel.links.value and "train.html" in panel.links.value
    assert [record["id"] for record in finished] == [run_dir.name]
    assert panel.run_button.disabled is False and panel.cancel_button.disabled is True
    assert panel.errors.outputs == ()


def test_a_failed_stage_shows_stage_cell_and_message(run_dir):
    failure = StageFailed("train", notebook=run_dir / "notebooks" / "02_train.ipynb", cell_index=4,
                          exception="ValueError", detail="Input X contains NaN.")
    panel = pipeline_panel(FakeRun(run_dir, fail=failure))
    run_and_wait(panel)
    assert "failed at stage 'train', cell 4" in text(panel.status.value)
    assert "Stage train failed, cell 4" in text(panel.failure.value)
    assert "ValueError" in text(panel.failure.value) and "Input X contains NaN." in text(panel.failure.value)
    assert "02_train.ipynb" in text(panel.failure.value)
    assert [bar.state.value for bar in panel.progress.children] == ["succeeded in 1.2 s", "FAILED", "pending"]
    assert "FAILED" in output_text(panel.log_output)
    assert panel.errors.outputs == ()  # shown where it belongs, not as a traceback


def test_a_parameter_problem_found_when_the_run_starts_shows_at_its_field(run_dir):
    problem = ParameterProblem("--set data.target=label", "data.target", "'target' (the label column of "
                               "sklearn:breast_cancer)", "'label'")

    def refuse(loaded, **kwargs):
        raise ParameterError([problem])

    panel = pipeline_panel(refuse)
    panel.form.fields["data.target"].input.value = "label"
    run_and_wait(panel)
    assert "the label column of sklearn:breast_cancer" in text(panel.form.fields["data.target"].message.value)
    assert "nothing ran" in text(panel.status.value)


def test_cancel_stops_the_run_before_its_next_stage(run_dir):
    fake = FakeRun(run_dir, wait_for_cancel=True)
    panel = pipeline_panel(fake)
    panel.run_button.click()
    assert fake.started.wait(30)
    assert panel.cancel_button.disabled is False and panel.run_button.disabled is True
    panel.cancel_button.click()
    panel.worker.join(30)
    assert "cancelled" in text(panel.status.value)
    assert {bar.state.value for bar in panel.progress.children} == {"cancelled"}
    assert panel.errors.outputs == ()


def test_unexpected_errors_land_in_the_panel(run_dir):
    def broken(loaded, **kwargs):
        raise RuntimeError("kernel exploded")

    panel = pipeline_panel(broken)
    run_and_wait(panel)
    assert "kernel exploded" in output_text(panel.errors) and "Traceback" in output_text(panel.errors)
    assert "did not finish" in text(panel.status.value)
    assert panel.run_button.disabled is False

    # a listener that raises does not stop the run, and does not vanish
    panel = pipeline_panel(FakeRun(run_dir))
    panel.on_run_finished(lambda record: 1 / 0)
    run_and_wait(panel)
    assert "succeeded" in text(panel.status.value)
    assert "ZeroDivisionError" in output_text(panel.errors)


# --- RunsPanel -----------------------------------------------------------------------

RECORDS = [
    {"id": "20260102-000000-bbbb", "created": "2026-01-02T00:00:00Z", "status": "succeeded", "champion": True,
     "stages": {"data": {"status": "cached"}, "train": {"status": "succeeded"}},
     "metrics": {"accuracy": 0.98, "gate_passed": True}},
    {"id": "20260101-000000-aaaa", "created": "2026-01-01T00:00:00Z", "status": "failed", "champion": False,
     "stages": {"data": {"status": "succeeded"}, "train": {"status": "failed"}}, "metrics": None},
]


class FakeLedger:
    def __init__(self, records):
        self.records = records
        self.listed = 0
        self.promoted: list[tuple] = []
        self.compared: list[list[str]] = []

    def list_runs(self):
        self.listed += 1
        return self.records

    def compare_runs(self, run_ids):
        self.compared.append(run_ids)
        if len(run_ids) < 2:
            raise MlopsKitError(f"Comparing needs at least two runs. Got {len(run_ids)} instead.")
        return {"runs": [{"id": i, "champion": False} for i in run_ids], "params": {"seed": [1, 2]},
                "metrics": {"accuracy": [0.9, 0.8]}}

    def promote(self, run_id, *, why=""):
        self.promoted.append((run_id, why))
        return {"run": run_id, "who": "tester@host", "why": why}


def runs_panel(ledger: FakeLedger, runs_dir: Path) -> RunsPanel:
    from mlops_kit import compare

    return RunsPanel(list_runs=ledger.list_runs, compare_runs=ledger.compare_runs,
                     comparison_frame=compare.comparison_frame, plot_comparison=compare.plot_comparison,
                     promote=ledger.promote, runs_dir=lambda: runs_dir)


def test_runs_table_shows_the_ledger(tmp_path):
    ledger = FakeLedger(RECORDS)
    panel = runs_panel(ledger, tmp_path)
    table = text(panel.table.value)
    assert "20260102-000000-bbbb" in table and "20260101-000000-aaaa" in table
    assert "★" in table and "accuracy 0.980" in table and "passed" in table
    assert 'class="mlk-run mlk-run-failed mlk-failed"' in panel.table.value
    assert [value for _, value in panel.selector.options] == [r["id"] for r in RECORDS]
    assert "mlk-runs-table" in panel.table._dom_classes
    empty = runs_panel(FakeLedger([]), tmp_path)
    assert "No runs yet" in empty.table.value


def test_compare_selected_runs_shows_a_table_and_a_plot(tmp_path):
    ledger = FakeLedger(RECORDS)
    panel = runs_panel(ledger, tmp_path)
    panel.selector.value = ("20260101-000000-aaaa",)
    panel.compare_button.click()
    assert "at least two runs" in output_text(panel.errors)
    panel.selector.value = tuple(r["id"] for r in RECORDS)
    panel.compare_button.click()
    assert ledger.compared[-1] == [r["id"] for r in RECORDS]
    assert "metric accuracy" in text(panel.comparison.value) and "param seed" in text(panel.comparison.value)
    (image,) = panel.comparison_plot.children
    assert bytes(image.value).startswith(b"\x89PNG")


def test_show_plots_of_a_run(tmp_path):
    artifacts = tmp_path / "20260102-000000-bbbb" / "artifacts"
    artifacts.mkdir(parents=True)
    from mlops_kit import compare
    figure = compare.plot_comparison({"runs": [{"id": "a"}], "metrics": {"accuracy": [0.9]}},
                                     artifacts / "evaluation.png")
    import matplotlib.pyplot as plt
    plt.close(figure)
    panel = runs_panel(FakeLedger(RECORDS), tmp_path)
    panel.plots_button.click()
    assert "Select a run first" in text(panel.message.value)
    panel.selector.value = ("20260102-000000-bbbb",)
    panel.plots_button.click()
    (box,) = panel.plots.children
    assert box.children[0].value == "evaluation.png" and bytes(box.children[1].value).startswith(b"\x89PNG")
    panel.selector.value = ("20260101-000000-aaaa",)
    panel.plots_button.click()
    assert panel.plots.children == () and "has no plots" in text(panel.message.value)


def test_promote_one_selected_run(tmp_path):
    ledger = FakeLedger(RECORDS)
    panel = runs_panel(ledger, tmp_path)
    panel.selector.value = tuple(r["id"] for r in RECORDS)
    panel.promote_button.click()
    assert ledger.promoted == [] and "exactly one" in text(panel.message.value)
    panel.selector.value = ("20260102-000000-bbbb",)
    panel.why.value = "best accuracy"
    listed = ledger.listed
    panel.promote_button.click()
    assert ledger.promoted == [("20260102-000000-bbbb", "best accuracy")]
    assert "is the champion" in text(panel.message.value) and ledger.listed == listed + 1
    assert panel.selector.value == ("20260102-000000-bbbb",)  # the selection survives the refresh


# --- BuildPanel and DeployPanel ------------------------------------------------------

SUCCEEDED = [{"id": "20260103-000000-cccc", "status": "succeeded", "champion": False},
             {"id": "20260102-000000-bbbb", "status": "succeeded", "champion": True},
             {"id": "20260101-000000-aaaa", "status": "failed", "champion": False}]


def read_run(run_id):
    return {"id": run_id, "params": {"package": {"builder": "auto"}, "deploy": {"target": "local"}}}


def test_build_panel_detects_builders_and_builds_the_chosen_run(tmp_path):
    from mlops_kit.panels import BuildPanel

    built = []

    def package(run_dir, params, *, log):
        built.append((run_dir, params.package.builder))
        log("context ready; builder layers")
        return {"ref": "docker.io/mlops-kit/model:20260102-abc", "digest": "sha256:" + "1" * 64,
                "builder": "layers", "size": {"compressed": 3 * 1024 * 1024, "unpacked": 9 * 1024 * 1024},
                "layers": [{}, {}], "imported": {"containerd": "microk8s", "namespace": "k8s.io"},
                "seconds": {"total": 4.2}}

    panel = BuildPanel(list_runs=lambda: SUCCEEDED, read_run=read_run, runs_dir=lambda: tmp_path, package=package,
                       detect_builders=lambda base: {"layers": None, "buildah": "buildah is not installed"})
    panel.detector.join(30)
    # succeeded runs only, the champion first and preselected
    assert [v for _, v in panel.run_picker.dropdown.options] == ["20260102-000000-bbbb", "20260103-000000-cccc"]
    assert panel.run_picker.run_id == "20260102-000000-bbbb"
    builders = text(panel.builders.value)
    assert "buildah is not installed" in builders and "auto picks layers" in builders
    panel.form.fields["package.builder"].input.value = "buildah"
    panel.build_button.click()
    panel.worker.join(30)
    assert built == [(tmp_path / "20260102-000000-bbbb", "buildah")]
    result = text(panel.result.value)
    assert "docker.io/mlops-kit/model:20260102-abc" in result and "sha256:111" in result
    assert "3.0 MiB" in result and "namespace k8s.io" in result
    assert "context ready" in output_text(panel.log_output)
    assert panel.errors.outputs == () and panel.build_button.disabled is False


def test_build_panel_shows_a_build_error(tmp_path):
    from mlops_kit.errors import BuilderNotFound
    from mlops_kit.panels import BuildPanel

    def package(run_dir, params, *, log):
        raise BuilderNotFound("No image builder works on this machine.", step="builder")

    panel = BuildPanel(list_runs=lambda: SUCCEEDED, read_run=read_run, runs_dir=lambda: tmp_path, package=package,
                       detect_builders=lambda base: {"layers": "umoci is not installed"})
    panel.detector.join(30)
    assert "No builder works here" in text(panel.builders.value)
    panel.build_button.click()
    panel.worker.join(30)
    assert "No image builder works on this machine" in text(panel.status.value)
    assert panel.errors.outputs == ()


class FakeDeployer:
    def __init__(self):
        self.calls = []

    def deploy(self, run_dir, params, *, log):
        self.calls.append(("deploy", run_dir.name, params.deploy.target, params.deploy.replicas))
        log("rollout: 2 of 2 updated replicas are available")
        return {"run_id": run_dir.name, "endpoint": "http://10.0.0.1:8080", "revision": 2,
                "smoke": {"records": 5}}

    def status(self, params):
        self.calls.append(("status", params.deploy.target))
        return {"namespace": params.deploy.namespace, "name": "model-server", "deployed": True, "ready": True,
                "rollout": "successfully rolled out", "replicas": {"desired": 2, "ready": 2},
                "endpoint": "http://10.0.0.1:8080",
                "releases": [{"revision": 1, "run_id": "20260101-000000-aaaa", "status": "succeeded"},
                             {"revision": 2, "run_id": "20260102-000000-bbbb", "status": "succeeded"}]}

    def rollback(self, params, *, log):
        self.calls.append(("rollback", params.deploy.target))
        return {"revision": 1, "run_id": "20260101-000000-aaaa"}

    def undeploy(self, params, *, log):
        self.calls.append(("undeploy", params.deploy.target))
        return {}


def test_deploy_panel_deploys_with_the_forms_values_and_shows_history(tmp_path):
    from mlops_kit.panels import DeployPanel

    deployer = FakeDeployer()
    panel = DeployPanel(list_runs=lambda: SUCCEEDED, read_run=read_run, runs_dir=lambda: tmp_path, deployer=deployer)
    assert panel.form.fields["deploy.target"].value == "local"
    assert panel.rollback_button.disabled is False  # every target rolls back (one interface)
    panel.form.fields["deploy.target"].input.value = "microk8s"
    panel.form.fields["deploy.replicas"].input.value = 2
    assert panel.rollback_button.disabled is False
    panel.deploy_button.click()
    panel.worker.join(30)
    assert deployer.calls[:2] == [("deploy", "20260102-000000-bbbb", "microk8s", 2), ("status", "microk8s")]
    assert "deployed at http://10.0.0.1:8080" in text(panel.status.value)
    assert "5 known records" in text(panel.smoke.value)
    history = text(panel.history.value)
    assert "20260101-000000-aaaa" in history and "20260102-000000-bbbb" in history
    assert "2 of 2 updated replicas" in output_text(panel.log_output)
    panel.rollback_button.click()
    panel.worker.join(30)
    assert "Rolled back to release 1" in text(panel.status.value)
    panel.undeploy_button.click()
    panel.worker.join(30)
    assert ("undeploy", "microk8s") in deployer.calls
    assert panel.errors.outputs == ()


def test_deploy_panel_marks_bad_values_and_shows_failures(tmp_path):
    from mlops_kit.errors import K8sDeployError
    from mlops_kit.panels import DeployPanel

    deployer = FakeDeployer()

    def refuse(run_dir, params, *, log):
        raise K8sDeployError("The rollout did not finish: ImagePullBackOff. Rolled back to release 1.",
                             reason="ImagePullBackOff")

    deployer.deploy = refuse
    panel = DeployPanel(list_runs=lambda: SUCCEEDED, read_run=read_run, runs_dir=lambda: tmp_path, deployer=deployer)
    panel.form.fields["deploy.namespace"].input.value = "Not_A_Label"
    assert "a DNS label" in text(panel.form.fields["deploy.namespace"].message.value)
    panel.deploy_button.click()
    assert "Fix the parameters" in text(panel.status.value) and deployer.calls == []
    panel.form.fields["deploy.namespace"].input.value = "models"
    panel.deploy_button.click()
    panel.worker.join(30)
    assert "ImagePullBackOff" in text(panel.status.value) and "Rolled back" in text(panel.status.value)
    assert panel.errors.outputs == ()
