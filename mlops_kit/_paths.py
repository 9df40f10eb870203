"""One place for the kit's paths and defaults.

Everything that names a folder or a file of the project or of a run lives here, so a
module never spells a path of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _artifact_names as _names

PACKAGE_DIR = Path(__file__).resolve().parent

#: Environment variable that moves the runs folder (default: ``<project>/runs``).
RUNS_DIR_ENV = "MLOPS_KIT_RUNS_DIR"
#: Environment variable that names the project folder explicitly.
PROJECT_DIR_ENV = "MLOPS_KIT_PROJECT_DIR"

#: Set (to 1) by the push receiver on the team's server: ``data.source`` must then be a file
#: inside the project (the pushed checkout) or the runs folder (:func:`data_roots`).
CONFINE_DATA_ENV = "MLOPS_KIT_CONFINE_DATA"

DEFAULT_PARAMETERS_FILE = "default.yaml"

# Files and folders inside one run folder.
RUN_RECORD = _names.RUN
#: In the runs folder: the promoted run.
CHAMPION_RECORD = _names.CHAMPION
RUN_LOCK = ".lock"
#: In the runs folder: one folder per sweep (its record, ``SWEEP_RECORD``, and its report).
SWEEPS_SUBDIR = "sweeps"
SWEEP_RECORD = _names.SWEEP
#: The notebook a sweep's report is executed from (in the stage notebooks' folder).
SWEEP_REPORT_NOTEBOOK = "sweep_report.ipynb"
NOTEBOOKS_SUBDIR = "notebooks"
REPORTS_SUBDIR = "reports"
ARTIFACTS_SUBDIR = "artifacts"
#: The run folder that a notebook opened by hand in JupyterLab writes to.
SCRATCH_RUN = "scratch"


def project_dir() -> Path:
    """The project folder: ``$MLOPS_KIT_PROJECT_DIR``, else the nearest folder upward from
    the working directory that holds ``parameters/`` and ``notebooks/``, else the folder the
    package was installed from (an editable install), else the working directory."""
    explicit = os.environ.get(PROJECT_DIR_ENV)
    if explicit:
        return Path(explicit).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "parameters").is_dir() and (folder / "notebooks").is_dir():
            return folder
    source_checkout = PACKAGE_DIR.parent
    if (source_checkout / "notebooks").is_dir():
        return source_checkout
    return here


def runs_dir() -> Path:
    explicit = os.environ.get(RUNS_DIR_ENV)
    if explicit:
        return Path(explicit).resolve()
    return project_dir() / "runs"


def sweeps_dir() -> Path:
    return runs_dir() / SWEEPS_SUBDIR


def data_roots() -> tuple[Path, ...] | None:
    """The folders ``data.source`` must lie in (after resolving links), or None: anywhere."""
    if os.environ.get(CONFINE_DATA_ENV) != "1":
        return None
    return project_dir(), runs_dir()


def parameters_dir() -> Path:
    return project_dir() / "parameters"


def notebooks_dir() -> Path:
    """Stage notebooks: the project's own copies, else the ones shipped in the package."""
    own = project_dir() / "notebooks"
    if own.is_dir():
        return own
    return PACKAGE_DIR / "notebooks"


def default_parameters_file() -> Path:
    return parameters_dir() / DEFAULT_PARAMETERS_FILE


def cache_dir() -> Path:
    """Caches that outlive runs (base image layers, wheels): ``$MLOPS_KIT_CACHE_DIR`` or
    ``~/.cache/mlops-kit``."""
    explicit = os.environ.get("MLOPS_KIT_CACHE_DIR")
    return Path(explicit).resolve() if explicit else Path.home() / ".cache" / "mlops-kit"


def image_cache_dir() -> Path:
    """Base image layers (rootfs, wheels), keyed by their inputs: ``<cache dir>/image``."""
    return cache_dir() / "image"


def image_builds_dir() -> Path:
    """OCI layouts of built images (blobs hard-linked to the cached base): ``<cache dir>/image/builds``."""
    return image_cache_dir() / "builds"


#: The local deploy target's state (which container or process serves which run).
LOCAL_DEPLOY_STATE = ".local-deploy.json"
#: Held by a local deploy or undeploy from start to end: one at a time per runs folder.
LOCAL_DEPLOY_LOCK = ".local-deploy.lock"
#: Request logs of local deploys (``serve.monitor.sample`` > 0): ``<runs dir>/.requests/<run id>/``
#: (a run folder is a record: the server writes nothing into it).
REQUESTS_SUBDIR = ".requests"


def request_log_dir(run_id: str) -> Path:
    return runs_dir() / REQUESTS_SUBDIR / run_id


def collected_log_dir(run_id: str) -> Path:
    """Where `mlops-kit monitor` collects the request log of a MicroK8s deployment of ``run_id``
    (one subfolder per pod; a dot name, so never a run id)."""
    return runs_dir() / REQUESTS_SUBDIR / ".collected" / run_id


def monitored_log_dir(log_dir: str | None, model_run: str | None) -> Path | None:
    """The request log 06_monitor reads: ``monitor.log_dir``, else the local deploy's log of
    ``monitor.model_run``; None with neither."""
    if log_dir:
        return Path(log_dir)
    return request_log_dir(model_run) if model_run else None
