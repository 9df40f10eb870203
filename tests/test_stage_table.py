"""A stage is one declaration (issue 21, item 0): the parameter schema's stage names, the
CLI's help, the runner's checks, the catalog's outputs and the cache are derived from the
table in mlops_kit/stages.py, and a stage added by ``stages.register`` runs like the others."""

from __future__ import annotations

import nbformat
import pytest

from conftest import REPO
from mlops_kit import artifacts, cache, runner, stages
from mlops_kit.errors import ArtifactError, ParameterError, ParameterProblem, StageFailed
from mlops_kit.params import RunParams, load_params

DEFAULT_PARAMS = REPO / "parameters" / "default.yaml"

HELLO_CODE = """
import json, pathlib
folder = pathlib.Path(run_dir) / "artifacts"
folder.mkdir(parents=True, exist_ok=True)
(folder / "hello.json").write_text(json.dumps({"hello": "world"}))
(folder / "hello.txt").write_text("a plot, say")
"""


def _notebook(path, code):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"},
                                            "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('run_dir = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture
def hello_project(tmp_path, monkeypatch):
    """A temporary project with one notebook, and the stage that runs it, registered."""
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "99_hello.ipynb", HELLO_CODE)
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(tmp_path))
    preflights = []

    def preflight(loaded):
        preflights.append(loaded.params.seed)
        if loaded.params.seed == 13:
            raise ParameterError([ParameterProblem("test", "seed", "not 13", "13")])
        return []

    stage = stages.Stage("hello", "99_hello.ipynb", None, code=("notebook",), preflight=preflight)
    stages.register(stage, [artifacts.DocumentArtifact("hello.json", "hello", "a greeting"),
                            artifacts.Artifact("hello.txt", "hello", "a plot", required=False)])
    try:
        yield stage, preflights
    finally:
        stages.unregister("hello")
    assert "hello" not in stages.BY_NAME and "hello.json" not in artifacts.BY_NAME


def test_the_declared_stages_give_the_schema_the_catalog_and_the_cli_help():
    from mlops_kit.cli.run import run as run_command

    assert RunParams().stages == [s.name for s in stages.STAGES if s.default] == ["data", "train", "evaluate"]
    with pytest.raises(ParameterError, match="stages.1: expected .data., .train., .evaluate., .package., .deploy. "
                                             "or .monitor."):
        load_params(DEFAULT_PARAMS, ["stages=[data, nope]"])
    assert stages.BY_NAME["data"].outputs == ("train.parquet", "test.parquet", "schema.json")
    assert stages.BY_NAME["data"].extras == ("target.png",)
    assert stages.BY_NAME["evaluate"].outputs == ("metrics.json",)
    assert stages.BY_NAME["package"].outputs == ("image.json",)
    monitor = stages.BY_NAME["monitor"]  # 06_monitor: one declaration, not a default stage, never reused
    assert monitor.outputs == ("monitor_report.json",) and monitor.extras == ("monitor_drift.png",)
    assert not monitor.default and not monitor.reusable and "monitor" in monitor.code_modules
    help_text = next(o.help for o in run_command.params if o.name == "stages")
    assert ",".join(stages.STAGE_NAMES) in help_text


def test_a_registered_stage_runs_is_reused_and_is_checked(hello_project, _isolated_runs):
    stage, preflights = hello_project
    loaded = load_params(DEFAULT_PARAMS)
    record = runner.run_pipeline(loaded, stages=["hello"])
    assert record["status"] == "succeeded" and preflights == [42]
    info = record["stages"]["hello"]
    assert set(info["outputs"]) == {"hello.json"} and info["fingerprint"]["params"] == {"seed": 42, "task": None}
    folder = _isolated_runs / record["id"]
    assert (folder / "notebooks" / "99_hello.ipynb").is_file() and (folder / "reports" / "99_hello.html").is_file()
    # unchanged: reused, its extra (the plot) brought along
    [plan] = runner.explain(loaded, stages=["hello"])
    assert plan.action == "cached" and plan.cached_from.run_id == record["id"]
    again = runner.run_pipeline(loaded, stages=["hello"])
    assert again["stages"]["hello"]["status"] == "cached"
    assert (_isolated_runs / again["id"] / "artifacts" / "hello.txt").read_text() == "a plot, say"
    # the input guard of a stage that reads its output, through the catalog
    with pytest.raises(ArtifactError, match="stage 'hello'"):
        stages.check_inputs(stages.Stage("reader", "x.ipynb", None, ("hello.json",)), folder / "missing")
    # its preflight runs before any run exists
    with pytest.raises(ParameterError, match="not 13"):
        runner.run_pipeline(load_params(DEFAULT_PARAMS, ["seed=13"]), stages=["hello"])
    assert len(list(_isolated_runs.glob("*/run.json"))) == 2


def test_a_registered_stage_that_does_not_write_its_outputs_fails(hello_project, tmp_path):
    _notebook(tmp_path / "notebooks" / "99_hello.ipynb", "x = 1")
    with pytest.raises(StageFailed, match="hello.json"):
        runner.run_pipeline(load_params(DEFAULT_PARAMS), stages=["hello"], use_cache=False)


def test_registration_refuses_what_would_break_the_table(hello_project):
    with pytest.raises(ValueError, match="exists already"):
        stages.register(stages.Stage("hello", "y.ipynb", None))
    with pytest.raises(ValueError, match="produced by it"):
        stages.register(stages.Stage("other", "y.ipynb", None), [artifacts.Artifact("o.json", "hello", "x")])
    with pytest.raises(ValueError, match="does not know"):
        stages.register(stages.Stage("other", "y.ipynb", None, ("nothing.json",)))
    with pytest.raises(ValueError, match="built-in"):
        stages.unregister("data")
    assert "other" not in stages.BY_NAME


def test_the_fingerprint_takes_the_declared_code_and_external_file(tmp_path):
    """The data stage's data_file comes from its declaration; a stage's code from its ``code``."""
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,x\n2,y\n")
    params = load_params(DEFAULT_PARAMS, [f"data.source={path}", "data.target=label"]).params
    assert "data_file" in cache.fingerprint(stages.BY_NAME["data"], params, {})
    bare = stages.Stage("bare", "01_data.ipynb", "data")
    assert "data_file" not in cache.fingerprint(bare, params, {})
    assert stages.BY_NAME["train"].code_modules == ("notebook", "data", "train")


def test_the_model_servers_image_takes_no_parameter_schema_from_the_stage_table():
    """The server's modules are found by following imports; stages.py is among them (the
    catalog names a missing artifact's stage), its preflights are not."""
    from mlops_kit.image._context import serving_modules

    modules = serving_modules()
    assert "stages.py" in modules and not {"params.py", "_preflight.py", "_table_header.py"} & set(modules)
