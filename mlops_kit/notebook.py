"""The one way into a stage, the same for all five notebooks.

``stage = open_stage("train", run_dir, model=model, params=params, cv_folds=cv_folds)``
resolves the run folder, loads the run's parameters (its ``run.json``; the embedded default
for a notebook opened by hand), puts the notebook's own keys on top (validated by the
schema, so a typo in a parameters cell is named like one in a parameter file), checks the
stage's inputs through the artifact catalog (package: the model was evaluated and passed the
gate; deploy to a cluster: an image was built) and returns one typed :class:`StageRun`.

Under ``mlops-kit run`` papermill passes ``run_dir`` and the stage's keys; opened by hand in
JupyterLab, ``run_dir`` is empty and the stage works in the scratch run ``runs/scratch/``, so
the notebooks can be run top to bottom, one after another, like a lecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _paths, artifacts
from .params import RunParams
from .stages import BY_NAME, Stage, check_inputs


@dataclass(frozen=True)
class StageRun:
    """A stage opened on a run folder: where it reads and writes, and its parameters."""

    stage: Stage
    run_dir: Path
    params: RunParams

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def artifacts(self) -> Path:
        return artifacts.artifacts_dir(self.run_dir)

    @property
    def section(self) -> Any:
        """This stage's own parameters (``params.data``, ``params.train`` ...); None for a
        stage without a section."""
        return getattr(self.params, self.stage.section) if self.stage.section else None

    @property
    def interactive(self) -> bool:
        return self.run_dir.name == _paths.SCRATCH_RUN

    def load(self, artifact: artifacts.DocumentArtifact):
        """A typed document of this run (``stage.load(artifacts.SCHEMA)``)."""
        return artifact.load(self.run_dir)


#: The old name, kept for notebooks written against it.
StageContext = StageRun


def stage_folder(run_dir: str | Path = "") -> Path:
    """``run_dir``, or the scratch run when it is empty (a notebook opened by hand)."""
    return Path(run_dir) if run_dir else _paths.runs_dir() / _paths.SCRATCH_RUN


def open_stage(name: str, run_dir: str | Path = "", /, **values: Any) -> StageRun:
    """Open stage ``name`` on a run folder. ``values`` are the notebook's keys of the stage's
    own parameter section; raises ParameterError, ArtifactError or GateFailed before any work."""
    from .params import load_params, load_run_params

    stage = BY_NAME[name]
    folder = stage_folder(run_dir)
    artifacts.artifacts_dir(folder).mkdir(parents=True, exist_ok=True)
    params = load_run_params(folder).params
    if values:
        if stage.section is None:
            from .errors import ParameterError, ParameterProblem
            raise ParameterError([ParameterProblem(f"{stage.notebook} (parameters cell)", next(iter(values)),
                                                   f"no key: stage {name!r} takes only run_dir", "a key")])
        raw = params.model_dump(mode="json")
        raw[stage.section] = {**raw[stage.section], **values}
        params = load_params(recorded=raw, recorded_from=f"{stage.notebook} (parameters cell)").params
    check_inputs(stage, folder, params)
    return StageRun(stage=stage, run_dir=folder, params=params)


def show(frame, caption: str | None = None):
    """Display a table in a notebook (plain text elsewhere)."""
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover
        print(frame)
        return
    display(frame.style.set_caption(caption) if caption is not None and hasattr(frame, "style") else frame)
