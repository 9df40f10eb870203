"""CI/CD templates: ``mlops-kit ci init github|gitlab`` writes a workflow that runs the
pipeline on every push and pull request, keeps the run folder as an artifact, summarises
metrics and the quality gate, and on main pushes the commit to the team's server.

The templates (``templates/*.yml``) are plain files with three ``@@NAME@@`` placeholders,
replaced by values checked against a strict alphabet, so nothing a user passes can change
the YAML or the shell lines around it.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path, PurePosixPath

from .. import _atomic
from ..errors import CiTemplateError

#: kind -> (file written in the project, template in mlops_kit/ci/templates/)
KINDS = {
    "github": (".github/workflows/mlops.yml", "github.yml"),
    "gitlab": (".gitlab-ci.yml", "gitlab.yml"),
}
DEFAULT_PYTHON = "3.11"
DEFAULT_PARAMS = "parameters/default.yaml"

_PYTHON = re.compile(r"3\.\d{1,2}")
_PARAMS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PLACEHOLDER = re.compile(r"@@[A-Z_]+@@")


def init_ci(kind: str, project_dir: str | Path, *, params_file: str = DEFAULT_PARAMS,
            python_version: str = DEFAULT_PYTHON, project: str | None = None, force: bool = False) -> Path:
    """Write the ``kind`` CI file into ``project_dir`` and return its path.

    ``params_file`` (relative to the project, validated) is what the CI runs;
    ``project`` names the server's bare repository ``~/mlops-kit/<project>.git``
    (default: the project folder's name, as ``mlops-kit server init`` names it).
    An existing file is kept unless ``force``.
    """
    if kind not in KINDS:
        raise CiTemplateError(f"The CI kind must be one of {', '.join(KINDS)}. Got {kind!r} instead.")
    folder = Path(project_dir).resolve()
    target = folder / KINDS[kind][0]
    if target.exists() and not force:
        raise CiTemplateError(f"{target} already exists: expected no file there; found one.",
                              hint="`--force` overwrites it (your changes to it are lost).")
    values = {
        "PYTHON_VERSION": check_python_version(python_version),
        "PARAMS_FILE": check_params_file(params_file, folder),
        "PROJECT": check_project_name(project if project is not None else folder.name),
    }
    _atomic.write_text(target, render_template(KINDS[kind][1], values))
    return target


def render_template(name: str, values: dict[str, str]) -> str:
    """The template ``name`` with each ``@@KEY@@`` replaced by ``values[KEY]``."""
    text = (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    left = sorted(set(_PLACEHOLDER.findall(text)))
    if left:
        raise CiTemplateError(f"Template {name}: expected a value for each placeholder; found none for "
                              f"{', '.join(left)}.")
    return text


def check_python_version(version: str) -> str:
    if not _PYTHON.fullmatch(version):
        raise CiTemplateError(f"The Python version must be like 3.11 (major.minor). Got {version!r} instead.")
    return version


def check_project_name(name: str) -> str:
    if not _PROJECT.fullmatch(name):
        raise CiTemplateError(f"The project name must be letters, digits, '.', '_' or '-' (it names the "
                              f"server's repository ~/mlops-kit/<project>.git). Got {name!r} instead.",
                              hint="`--project NAME` sets it.")
    return name


def check_params_file(params_file: str, project_dir: Path) -> str:
    """A parameter file inside the project, in a path that is safe in YAML and shell, that loads."""
    from ..params import load_params

    path = PurePosixPath(params_file)
    if not _PARAMS.fullmatch(params_file) or path.is_absolute() or ".." in path.parts:
        raise CiTemplateError(f"The parameter file must be a path relative to the project folder, of letters, "
                              f"digits, '.', '_', '-' and '/'. Got {params_file!r} instead.")
    if not (project_dir / path).is_file():
        raise CiTemplateError(f"The parameter file {params_file!r}: expected a file in {project_dir}; "
                              f"found none.")
    load_params(project_dir / path)  # a ParameterError names the file and the key
    return path.as_posix()
