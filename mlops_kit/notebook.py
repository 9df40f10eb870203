"""What a stage notebook calls first.

``open_stage("train", run_dir)`` gives the folders the stage reads and writes. Under
``mlops-kit run`` papermill passes ``run_dir``; opened by hand in JupyterLab, ``run_dir``
is empty and the stage works in the scratch run ``runs/scratch/``, so the notebooks can be
run top to bottom, one after another, like a lecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import _paths
from .errors import ArtifactError
from .stages import BY_NAME, producer_of


@dataclass(frozen=True)
class StageContext:
    name: str
    run_dir: Path
    artifacts: Path

    @property
    def interactive(self) -> bool:
        return self.run_dir.name == _paths.SCRATCH_RUN


def open_stage(name: str, run_dir: str | Path = "") -> StageContext:
    """The run folder of this stage; raises if an input from an earlier stage is missing."""
    stage = BY_NAME[name]
    folder = Path(run_dir) if run_dir else _paths.runs_dir() / _paths.SCRATCH_RUN
    artifacts = folder / _paths.ARTIFACTS_SUBDIR
    artifacts.mkdir(parents=True, exist_ok=True)
    missing = [item for item in stage.inputs if not (artifacts / item).exists()]
    if missing:
        producer = producer_of(missing[0])
        raise ArtifactError(
            f"Stage {name!r} needs {', '.join(missing)} in {artifacts}; stage {producer.name!r} "
            f"({producer.notebook}) writes it.", path=artifacts / missing[0],
            hint=f"run {producer.notebook} first (with the same run_dir).")
    return StageContext(name=name, run_dir=folder, artifacts=artifacts)


def show(frame, caption: str | None = None):
    """Display a table in a notebook (plain text elsewhere)."""
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover
        print(frame)
        return
    display(frame.style.set_caption(caption) if caption is not None and hasattr(frame, "style") else frame)
