"""The stages of the pipeline: each a notebook plus what it reads and writes.

A stage's ``inputs`` are artifacts that earlier stages wrote; its ``outputs`` are the
artifacts it must write for the run to count as succeeded. Both name entries of the
artifact catalog (:mod:`mlops_kit.artifacts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import artifacts
from .errors import ParameterError, ParameterProblem


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    section: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: modules the stage's kernel imports while it waits for its turn
    warm_imports: tuple[str, ...] = ()
    #: False for stages whose effect lives outside the run folder (an image in containerd,
    #: a deployment): they are executed every time, never reused from an earlier run
    reusable: bool = True


_COMMON = ("pandas", "numpy", "matplotlib.pyplot", "mlops_kit.notebook")


def _names(*items: artifacts.Artifact) -> tuple[str, ...]:
    return tuple(item.name for item in items)


A = artifacts
STAGES: tuple[Stage, ...] = (
    Stage("data", "01_data.ipynb", "data", (),
          _names(A.TRAIN_SPLIT, A.TEST_SPLIT, A.SCHEMA),
          (*_COMMON, "pyarrow.parquet", "sklearn.model_selection", "mlops_kit.data", "mlops_kit.evaluate")),
    Stage("train", "02_train.ipynb", "train", _names(A.TRAIN_SPLIT, A.TEST_SPLIT, A.SCHEMA),
          _names(A.MODEL, A.MODEL_CARD, A.EXAMPLES),
          (*_COMMON, "pyarrow.parquet", "sklearn.pipeline", "sklearn.compose", "sklearn.impute",
           "sklearn.preprocessing", "sklearn.linear_model", "sklearn.ensemble", "sklearn.model_selection",
           "skops.io", "mlops_kit.data", "mlops_kit.train")),
    Stage("evaluate", "03_evaluate.ipynb", "evaluate",
          _names(A.TRAIN_SPLIT, A.TEST_SPLIT, A.SCHEMA, A.MODEL, A.MODEL_CARD),
          _names(A.METRICS),
          (*_COMMON, "pyarrow.parquet", "sklearn.metrics", "skops.io", "mlops_kit.data", "mlops_kit.train",
           "mlops_kit.evaluate")),
    Stage("package", "04_package.ipynb", "package",
          _names(A.MODEL, A.MODEL_CARD, A.SCHEMA, A.EXAMPLES, A.METRICS),
          _names(A.IMAGE), ("mlops_kit.notebook", "mlops_kit.image"), reusable=False),
    Stage("deploy", "05_deploy.ipynb", "deploy",
          _names(A.MODEL, A.MODEL_CARD, A.SCHEMA, A.EXAMPLES),
          _names(A.RELEASE), ("mlops_kit.notebook", "mlops_kit.deploy"), reusable=False),
)
del A
STAGE_NAMES = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}


def select_stages(names: list[str] | tuple[str, ...] | None, default: list[str]) -> list[Stage]:
    """The stages named (in pipeline order), or the default list. Unknown names are an error."""
    chosen = list(names) if names else list(default)
    unknown = [n for n in chosen if n not in BY_NAME]
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], STAGE_NAMES, n=1)
        raise ParameterError([ParameterProblem("--stages", unknown[0], "one of " + ", ".join(STAGE_NAMES),
                                               repr(unknown[0]), close[0] if close else None)])
    return [stage for stage in STAGES if stage.name in chosen]


#: The package stage's record of the image it built; what the deploy stage deploys.
IMAGE_RECORD = artifacts.IMAGE.name


def _deploys_an_earlier_runs_model(names: set[str]) -> bool:
    return "deploy" in names and not names & {"package", "train"}


def needed_inputs(selected: list[Stage], params: Any) -> list[str]:
    """The artifacts the selected stages need from an earlier run: the inputs no selected
    stage makes, plus ``image.json`` when the deploy stage deploys an image (microk8s) of a
    model from that run (``run --stages deploy --reuse-from RUN``)."""
    names = {s.name for s in selected}
    needed = {item for s in selected for item in s.inputs if producer_of(item).name not in names}
    if _deploys_an_earlier_runs_model(names) and params.deploy.target == "microk8s":
        needed.add(IMAGE_RECORD)
    return sorted(needed)


def optional_inputs(selected: list[Stage]) -> list[str]:
    """Artifacts taken from the earlier run too when it has them: its ``image.json`` for a
    deploy of its model (the local target runs the image when a container runtime is there)."""
    return [IMAGE_RECORD] if _deploys_an_earlier_runs_model({s.name for s in selected}) else []


def producer_of(artifact: str) -> Stage:
    """The stage that writes an artifact (by file name), as the catalog declares."""
    return BY_NAME[artifacts.BY_NAME[artifact].producer]


def check_inputs(stage: Stage | str, folder, params=None) -> None:
    """What a stage needs before it starts, checked through the artifact catalog: every input
    exists; package also needs a model that was evaluated and passed the gate; deploy to a
    cluster needs a built image. Raises ArtifactError or GateFailed saying which."""
    from .errors import GateFailed

    stage = BY_NAME[stage] if isinstance(stage, str) else stage
    for name in stage.inputs:
        artifacts.BY_NAME[name].require(folder)
    if stage.name == "package":
        metrics = artifacts.METRICS.load(folder)
        if not metrics.gate.passed:
            raise GateFailed(metrics.gate.failures() or ["metrics.json says gate.passed is false"])
    if stage.name == "deploy" and params is not None and params.deploy.target == "microk8s":
        artifacts.IMAGE.require(folder)
