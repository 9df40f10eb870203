"""``extends:`` confinement itself: every base named here has a .yaml/.yml suffix and is a
valid parameter file, so only the folder check can refuse it (test_params_security.py has
the bases that the suffix check already refuses)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_kit.errors import ParameterError
from mlops_kit.params import load_params

pytestmark = pytest.mark.security

CANARY = "hunter2-canary"


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """project/ (the project, with parameters/), and beside it outside/ with valid bases."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "parameters" / "team").mkdir(parents=True)
    outside.mkdir()
    for name in ("outside.yaml", "outside.yml", "OUTSIDE.YAML"):
        (outside / name).write_text(f"seed: 5\n# {CANARY}\n")
        (tmp_path / name).write_text(f"seed: 5\n# {CANARY}\n")
    (project / "base.yaml").write_text("seed: 6\n")
    (project / "parameters" / "base.yaml").write_text("seed: 7\n")
    (project / "parameters" / "team" / "base.yml").write_text("seed: 8\n")
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(project))
    return project, outside


def overlay(folder, base: str):
    path = folder / "overlay.yaml"
    path.write_text(f"extends: {base}\n")
    return path


def refused(path) -> ParameterError:
    with pytest.raises(ParameterError) as info:
        load_params(path)
    message = str(info.value)
    assert "extends: expected a .yaml file in" in message and CANARY not in message
    (problem,) = info.value.problems
    folder, project = path.parent.resolve(), Path(os.environ["MLOPS_KIT_PROJECT_DIR"]).resolve()
    assert problem.expected == f"a .yaml file in {folder} or in the project {project}"
    return info.value


@pytest.mark.parametrize("where, base", [
    ("parameters", "../../outside.yaml"), ("parameters", "../../outside/outside.yaml"),
    ("parameters", "../../outside.yml"), ("parameters", "../../OUTSIDE.YAML"),
    ("parameters", "team/../../../outside.yaml"), ("parameters/team", "../../../outside.yaml"),
    (".", "../outside.yaml"), (".", "../outside/outside.yaml"),
    ("parameters", "ABSOLUTE"), (".", "ABSOLUTE"),
])
def test_a_base_outside_the_folder_and_the_project_is_refused(layout, where, base):
    project, outside = layout
    base = str(outside / "outside.yaml") if base == "ABSOLUTE" else base
    refused(overlay(project / where, base))


def test_a_symbolic_link_to_a_base_or_a_folder_outside_is_refused(layout):
    project, outside = layout
    (project / "parameters" / "linked.yaml").symlink_to(outside / "outside.yaml")
    (project / "parameters" / "elsewhere").symlink_to(outside)
    refused(overlay(project / "parameters", "linked.yaml"))
    refused(overlay(project / "parameters", "elsewhere/outside.yaml"))


def test_a_base_in_the_folder_below_it_or_in_the_project_is_read(layout):
    project, _ = layout
    parameters = project / "parameters"
    assert load_params(overlay(parameters, "base.yaml")).params.seed == 7           # the same folder
    assert load_params(overlay(parameters, "team/base.yml")).params.seed == 8       # below it
    assert load_params(overlay(parameters / "team", "../base.yaml")).params.seed == 7   # the project, above it
    assert load_params(overlay(parameters / "team", "../../base.yaml")).params.seed == 6
    assert load_params(overlay(parameters / "team", str(project / "base.yaml"))).params.seed == 6


def test_a_file_outside_the_project_may_extend_its_own_folder_only(layout, tmp_path):
    _, outside = layout
    (outside / "mine").mkdir()
    (outside / "mine" / "base.yaml").write_text("seed: 9\n")
    assert load_params(overlay(outside, "mine/base.yaml")).params.seed == 9
    refused(overlay(outside / "mine", "../outside.yaml"))
