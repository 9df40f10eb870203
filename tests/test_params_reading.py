"""How a parameter file that cannot be read is reported: where (line and column, 1-based, as
an editor shows them), what pyyaml found (its short words, never the file's text), and the
cycle of ``extends:`` as the files it went through."""

from __future__ import annotations

import pytest

from mlops_kit.errors import ParameterError
from mlops_kit.params import load_params

pytestmark = pytest.mark.security


def problem(folder, text: str, name: str = "p.yaml"):
    path = folder / name
    path.write_text(text)
    with pytest.raises(ParameterError) as info:
        load_params(path)
    (found,) = info.value.problems
    assert found.file == str(path)
    return found


@pytest.mark.parametrize("text, where, found", [
    ("seed: 1\ntrain: {model: x]\n", "(line 2, column 17)", "expected ',' or '}', but got ']'"),
    ("seed: 1\ndata:\n  target: y\n   test_size: 2\n", "(line 4, column 13)", "mapping values are not allowed here"),
])
def test_a_yaml_error_names_its_line_and_column(tmp_path, text, where, found):
    got = problem(tmp_path, text)
    assert (got.key, got.expected, got.found) == (where, "valid YAML", found)


def test_an_error_without_pyyaml_words_is_named_by_its_type(tmp_path):
    got = problem(tmp_path, "seed: 1\x07\n")                       # a control character
    assert (got.key, got.found) == ("(the file)", "ReaderError")


@pytest.mark.parametrize("text, found", [
    ("seed: *" + "y" * 30 + "\n", "an alias (*" + "y" * 20 + ")"),
    ("seed: &" + "z" * 30 + " 1\n", "an anchor (&" + "z" * 20 + ")"),
])
def test_anchors_and_aliases_are_named_by_20_characters(tmp_path, text, found):
    got = problem(tmp_path, text)
    assert (got.key, got.found) == ("(line 1, column 7)", found)


def test_a_cycle_is_named_by_the_files_it_goes_through_from_a_relative_path(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParameterError) as info:
        load_params("a.yaml")
    (got,) = info.value.problems
    a, b = tmp_path.resolve() / "a.yaml", tmp_path.resolve() / "b.yaml"
    assert (got.file, got.key, got.found) == (str(a), "extends", f"{a} -> {b} -> {a}")


def test_pyyaml_words_are_cut_at_80_characters(tmp_path):
    """The words quote the file (a tag handle): 80 characters of them at most."""
    got = problem(tmp_path, "seed: !" + "a" * 100 + "!x 1\n")
    assert got.found == ("found undefined tag handle '!" + "a" * 100)[:80] + "..."


def test_a_file_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(tmp_path):
    from mlops_kit.params import MAX_PARAMETER_FILE_BYTES

    text = "seed: 3\n#" + "x" * (MAX_PARAMETER_FILE_BYTES - 10) + "\n"
    (tmp_path / "limit.yaml").write_text(text)
    assert (tmp_path / "limit.yaml").stat().st_size == MAX_PARAMETER_FILE_BYTES == 1024 * 1024
    assert load_params(tmp_path / "limit.yaml").params.seed == 3
    got = problem(tmp_path, text + "\n")
    assert got.found == f"{MAX_PARAMETER_FILE_BYTES + 1} bytes"
