"""The repository's own rules: notebooks stripped and parameterized, dependencies in step."""

from __future__ import annotations

import ast
import json
import re
import subprocess

import pytest
import yaml

from conftest import REPO
from mlops_kit.params import RunParams, load_params
from mlops_kit.stages import STAGES

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {index} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_notebook_has_one_parameters_cell_of_literals_matching_the_schema(stage):
    notebook = json.loads((REPO / "notebooks" / stage.notebook).read_text())
    tagged = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{stage.notebook}: {len(tagged)} cells tagged 'parameters'"
    names = {}
    for node in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(node, ast.Assign), f"{stage.notebook}: only assignments in the parameters cell"
        names[node.targets[0].id] = ast.literal_eval(node.value)  # literals only
    expected = set(RunParams().stage_parameters(stage.section)) | {"run_dir"}
    assert set(names) == expected, f"{stage.notebook}: parameters {sorted(names)} != {sorted(expected)}"
    # run by hand, a notebook does what `mlops-kit run` does with the embedded default: its
    # values are the schema's own defaults (params.py), which parameters/default.yaml restates
    schema = RunParams().stage_parameters(stage.section)
    embedded = load_params(REPO / "parameters" / "default.yaml").params.stage_parameters(stage.section)
    for key, value in names.items():
        if key != "run_dir":
            assert value == schema[key], f"{stage.notebook}: {key} = {value!r}, the schema's default " \
                                         f"(mlops_kit/params.py) is {schema[key]!r}"
            assert value == embedded[key], f"{stage.notebook}: {key} = {value!r}, parameters/default.yaml " \
                                           f"has {embedded[key]!r}"


def test_stage_notebooks_open_with_an_explanation():
    for stage in STAGES:
        notebook = json.loads((REPO / "notebooks" / stage.notebook).read_text())
        first = notebook["cells"][0]
        assert first["cell_type"] == "markdown" and len("".join(first["source"])) > 200, stage.notebook


def _requirement_names(specs):
    return {re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower().replace("_", "-"): spec.replace(" ", "")
            for spec in specs}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str) and not d.startswith(("python", "pip"))]
    assert _requirement_names(conda) == _requirement_names(project["dependencies"])


def test_environment_yml_installs_the_kit_with_every_extra():
    """The extras (test, mutate) come from pyproject.toml by pip: every one of them."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    (pip,) = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert pip == [f"-e .[{','.join(extras)}]"]


def test_required_packages_are_dependencies():
    import tomllib

    names = set(_requirement_names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]))
    assert {"jupyterlab", "papermill", "ipywidgets", "scikit-learn", "pandas", "matplotlib", "kubernetes",
            "nbconvert"} <= names


def test_run_records_are_not_committed():
    assert "runs/" in (REPO / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "runs"], cwd=REPO, capture_output=True, text=True)
    assert tracked.returncode != 0 or tracked.stdout == ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_what_the_git_filter_writes(path):
    """`make setup` installs nbstripout as git's clean filter (with the Makefile's flags): a
    committed notebook must come out of it unchanged, or git shows it as modified."""
    import shlex
    import shutil
    import sys
    from pathlib import Path

    makefile = (REPO / "Makefile").read_text()
    flags = re.search(r"""filter\.nbstripout\.clean '[^']*?/nbstripout"?([^']*)'""", makefile).group(1)
    nbstripout = shutil.which("nbstripout") or str(Path(sys.executable).parent / "nbstripout")
    stripped = subprocess.run([nbstripout, *shlex.split(flags), "-t", str(path)], capture_output=True,
                              text=True, check=True).stdout
    assert json.loads(stripped) == json.loads(path.read_text())


def test_artifacts_are_hashed_by_one_helper():
    """model.skops, model.onnx and every recorded output are hashed by _atomic.sha256_file
    alone: a module that verifies or records an artifact's sha256 has no hashlib of its own."""
    hashers = [REPO / "mlops_kit" / name for name in ("model_io.py", "compile.py", "runner.py", "ledger.py",
                                                      "artifacts.py")]
    hashers += sorted((REPO / "mlops_kit" / "serving").glob("*.py"))
    assert [p.name for p in hashers if "hashlib" in p.read_text()] == []
    from mlops_kit import _atomic

    notebook = REPO / "notebooks" / "01_data.ipynb"
    assert _atomic.sha256_file(notebook.read_bytes()) == _atomic.sha256_file(notebook)


def _private_imports(path, package_root):
    """(imported module, line) for each import in ``path`` of a ``_private`` module that lies
    outside the importing module's own package (the package's public face is for the others)."""
    module = ".".join(path.relative_to(package_root.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names
                              if (package_root.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file()]
        else:
            continue
        for name in (n for n in names if n.split(".")[0] == package_root.name):    # the kit's own modules
            parts = name.split(".")
            for depth, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:depth])
                    if not (package == owner or package.startswith(owner + ".")):
                        found.append((name, node.lineno))
                    break
    return found


def test_no_module_imports_another_packages_private_module():
    """A package's ``_private`` modules are imported only inside that package; others use its
    public face (``mlops_kit/_paths.py`` belongs to ``mlops_kit``, so every module may use it)."""
    root = REPO / "mlops_kit"
    offenders = {f"{path.relative_to(REPO)}:{line}": name for path in sorted(root.rglob("*.py"))
                 for name, line in _private_imports(path, root)}
    assert offenders == {}


def test_the_private_import_rule_catches_what_it_forbids(tmp_path):
    """The rule itself: relative and absolute imports of another package's private module."""
    pkg = tmp_path / "mlops_kit"
    for folder in ("a", "b"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
        (pkg / folder / "_inner.py").write_text("X = 1\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "_top.py").write_text("")
    (pkg / "b" / "user.py").write_text("from ..a import _inner\nfrom ..a._inner import X\nimport mlops_kit.a._inner\n"
                                       "from . import _inner\nfrom .. import _top\nfrom ..a import X\n")
    assert _private_imports(pkg / "b" / "user.py", pkg) == [
        ("mlops_kit.a._inner", 1), ("mlops_kit.a._inner", 2), ("mlops_kit.a._inner", 3)]
