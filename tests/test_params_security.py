"""Parameter files are hostile input (they arrive by ``git push``): alias bombs, ``extends:``
out of the project, and errors that would echo what a file holds."""

from __future__ import annotations

import textwrap

import pytest

from mlops_kit.errors import ParameterError
from mlops_kit.params import load_params

from conftest import REPO

pytestmark = pytest.mark.security


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": 9 levels of 9 aliases expand to 9**9 strings from ~1 KB."""
    lines = ['train:', '  model: dummy', '  params:', '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"    a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = write(tmp_path, "bomb.yaml", alias_bomb())
    assert bomb.stat().st_size < 1024
    with pytest.raises(ParameterError) as info:
        load_params(bomb)
    (problem,) = info.value.problems
    assert problem.file == str(bomb)
    assert problem.expected == "plain YAML without anchors (&) or aliases (*)"
    assert problem.found == "an anchor (&a0)" and problem.key == "(line 4, column 9)"


def test_aliases_in_a_set_value_are_not_expanded(tmp_path):
    loaded = load_params(None, ["train.params.x=[&a [1, 1], *a]"])
    assert loaded.params.train.params["x"] == "[&a [1, 1], *a]"  # kept as text, never expanded


def test_a_huge_parameter_file_is_refused(tmp_path):
    big = write(tmp_path, "big.yaml", "seed: 1\n" + "#" * (1024 * 1024) + "\n")
    with pytest.raises(ParameterError, match="a parameter file of at most 1048576 bytes"):
        load_params(big)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../../../etc/passwd", "secret.txt",
                                    "/etc/hostname"])
def test_extends_is_confined_to_the_project_and_never_echoes_the_file(tmp_path, target, monkeypatch):
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(tmp_path / "project"))
    (tmp_path / "project").mkdir()
    write(tmp_path / "project", "secret.txt", "seed: 5\npassword: hunter2-canary\n")
    overlay = write(tmp_path / "project", "o.yaml", f"extends: {target}\n")
    with pytest.raises(ParameterError) as info:
        load_params(overlay)
    message = str(info.value)
    assert "extends: expected a .yaml file in" in message
    assert "root:" not in message and "hunter2" not in message


def test_extends_outside_through_a_symbolic_link_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(tmp_path / "project"))
    (tmp_path / "project").mkdir()
    write(tmp_path, "outside.yaml", "seed: 5\n")
    (tmp_path / "project" / "base.yaml").symlink_to(tmp_path / "outside.yaml")
    overlay = write(tmp_path / "project", "o.yaml", "extends: base.yaml\n")
    with pytest.raises(ParameterError, match="extends: expected a .yaml file in"):
        load_params(overlay)
    write(tmp_path / "project", "real.yaml", "seed: 6\n")
    assert load_params(write(tmp_path / "project", "ok.yaml", "extends: real.yaml\n")).params.seed == 6


def test_errors_quote_values_short_and_never_the_raw_file(tmp_path):
    secret = "s3cr3t-" + "x" * 200
    bad = write(tmp_path, "bad.yaml", f"data:\n  target: 1\n  test_size: '{secret}'\n")
    with pytest.raises(ParameterError) as info:
        load_params(bad)
    assert secret not in str(info.value) and "s3cr3t-" in str(info.value)
    broken = write(tmp_path, "broken.yaml", "password: hunter2-canary\n  bad: [\n")
    with pytest.raises(ParameterError) as info:
        load_params(broken)
    assert "hunter2" not in str(info.value) and "valid YAML" in str(info.value)


@pytest.mark.parametrize("text, found", [("yes", "True"), ("on", "True"), ("no", "False")])
def test_a_yaml_boolean_for_a_number_says_so(tmp_path, text, found):
    bad = write(tmp_path, "bad.yaml", f"train:\n  cv_folds: {text}\n")
    with pytest.raises(ParameterError) as info:
        load_params(bad)
    (problem,) = info.value.problems
    assert problem.key == "train.cv_folds" and problem.found.startswith(f"{found} (YAML reads yes/no")
    assert problem.expected == "a number"


def test_a_bad_hyperparameter_from_set_is_attributed_to_the_set():
    from mlops_kit.train import check_train_params

    loaded = load_params(REPO / "parameters" / "default.yaml", ["train.params.C=-1"])
    origins = {key: loaded.source_of(f"train.params.{key}") for key in loaded.params.train.params}
    with pytest.raises(ParameterError) as info:
        check_train_params("logistic_regression", "classification", loaded.params.train.params,
                           origin=loaded.source_of("train.params"), origins=origins)
    (problem,) = info.value.problems
    assert problem.file == "--set train.params.C=-1" and problem.key == "train.params.C"
