"""The stages of the pipeline, each declared once.

A :class:`Stage` says everything the kit needs to know about a stage: its notebook, its
parameter section, what it reads (``inputs``, names of the artifact catalog), what it must
check before it starts (``guard``) and before the run starts (``preflight``), the kit code
whose source enters its fingerprint, and whether it may be reused. Its ``outputs`` are the
catalog's entries whose producer it is (:mod:`mlops_kit.artifacts`). The parameter schema's
list of stage names, the CLI's help, the runner's checks and the cache are derived from
this table. :func:`register` adds a stage (and the artifacts it writes) to it.

This module imports no pydantic (the CLI reads the stage names from it at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import _artifact_names as N
from .errors import ParameterError, ParameterProblem

if TYPE_CHECKING:  # (the parameter schema's types are named, not imported: the model
    from .artifacts import Artifact  # server's image holds this module, not the schema)

#: A check run before any stage starts, where its stage's libraries are imported:
#: ``("module:function", kwargs)``; it raises the kit's error when the parameters are wrong.
Check = tuple[str, dict]


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    #: the section of the parameters the notebook takes (``None``: only ``run_dir``)
    section: str | None
    #: artifacts (catalog names) that earlier stages wrote
    inputs: tuple[str, ...] = ()
    #: modules the stage's kernel imports while it waits for its turn
    warm_imports: tuple[str, ...] = ()
    #: False for stages whose effect lives outside the run folder (an image in containerd,
    #: a deployment): they are executed every time, never reused from an earlier run
    reusable: bool = True
    #: part of the default ``stages`` of a run
    default: bool = False
    #: kit modules whose source (and what it imports) enters the fingerprint; default: the
    #: ``mlops_kit.*`` modules of ``warm_imports``
    code: tuple[str, ...] | None = None
    #: ``guard(folder, params)``: what the stage needs beyond its inputs' existence, checked
    #: when it opens (``params`` may be None); raises the kit's error
    guard: Callable[[Any, "RunParams | None"], None] | None = None
    #: ``preflight(loaded)``: mistakes found before any stage starts (raised here), and
    #: checks to run where the stage's libraries are imported (returned); a function, or
    #: ``"module:function"`` (imported when a run starts: the model server's image, which
    #: holds this module, needs none of what a preflight imports)
    preflight: Callable[["LoadedParams"], list[Check]] | str | None = None
    #: ``borrows(selected names, params) -> (needed, optional)``: artifacts beyond
    #: ``inputs`` taken from an earlier run when the stages that make them are not selected
    borrows: Callable[[set[str], "RunParams"], tuple[list[str], list[str]]] | None = None
    #: ``external_file(params)``: a file outside the run whose content decides the outputs
    #: (its sha256 enters the fingerprint as ``data_file``), or None
    external_file: Callable[["RunParams"], str | None] | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the stage must write for the run to count as succeeded (from the catalog)."""
        from . import artifacts

        return tuple(a.name for a in artifacts.produced_by(self.name) if a.required)

    @property
    def extras(self) -> tuple[str, ...]:
        """What it may write beside (plots): linked with its outputs when it is reused."""
        from . import artifacts

        return tuple(a.name for a in artifacts.produced_by(self.name) if not a.required)

    @property
    def code_modules(self) -> tuple[str, ...]:
        """The kit modules (without ``mlops_kit.``) whose source enters the fingerprint."""
        if self.code is not None:
            return self.code
        return tuple(m.split(".", 1)[1] for m in self.warm_imports if m.startswith("mlops_kit."))


# --- the built-in stages' hooks ---------------------------------------------------------------

def _data_file(params: "RunParams") -> str | None:
    source = params.data.source
    return None if source.startswith("sklearn:") else source


def _package_guard(folder, params) -> None:
    """A model that was evaluated and passed the gate."""
    from . import artifacts
    from .errors import GateFailed

    metrics = artifacts.METRICS.load(folder)
    if not metrics.gate.passed:
        raise GateFailed(metrics.gate.failures() or ["metrics.json says gate.passed is false"])


def _deploy_guard(folder, params) -> None:
    """A deploy to a cluster needs a built image."""
    from . import artifacts

    if params is not None and params.deploy.target == "microk8s":
        artifacts.IMAGE.require(folder)


def _deploy_borrows(names: set[str], params: "RunParams") -> tuple[list[str], list[str]]:
    """Deploying an earlier run's model (``run --stages deploy --reuse-from RUN``): its
    ``image.json`` is needed on microk8s, and taken when present for the local target (which
    runs the image when a container runtime is there)."""
    if names & {"package", "train"}:
        return [], []
    return ([N.IMAGE], []) if params.deploy.target == "microk8s" else ([], [N.IMAGE])


_COMMON = ("pandas", "numpy", "matplotlib.pyplot", "mlops_kit.notebook")

_BUILTIN: tuple[Stage, ...] = (
    Stage("data", "01_data.ipynb", "data", (),
          (*_COMMON, "pyarrow.parquet", "sklearn.model_selection", "mlops_kit.data", "mlops_kit.evaluate"),
          default=True, preflight="mlops_kit._preflight:data", external_file=_data_file),
    Stage("train", "02_train.ipynb", "train", (N.TRAIN_SPLIT, N.TEST_SPLIT, N.SCHEMA),
          (*_COMMON, "pyarrow.parquet", "sklearn.pipeline", "sklearn.compose", "sklearn.impute",
           "sklearn.preprocessing", "sklearn.linear_model", "sklearn.ensemble", "sklearn.model_selection",
           "skops.io", "mlops_kit.data", "mlops_kit.train"),
          default=True, preflight="mlops_kit._preflight:train"),
    Stage("evaluate", "03_evaluate.ipynb", "evaluate",
          (N.TRAIN_SPLIT, N.TEST_SPLIT, N.SCHEMA, N.MODEL, N.MODEL_CARD),
          (*_COMMON, "pyarrow.parquet", "sklearn.metrics", "skops.io", "mlops_kit.data", "mlops_kit.train",
           "mlops_kit.evaluate"),
          default=True),
    Stage("package", "04_package.ipynb", "package",
          (N.MODEL, N.MODEL_CARD, N.SCHEMA, N.EXAMPLES, N.MONITOR_PROFILE, N.METRICS),
          ("mlops_kit.notebook", "mlops_kit.image"), reusable=False, guard=_package_guard),
    Stage("deploy", "05_deploy.ipynb", "deploy", (N.MODEL, N.MODEL_CARD, N.SCHEMA, N.EXAMPLES, N.MONITOR_PROFILE),
          ("mlops_kit.notebook", "mlops_kit.deploy"), reusable=False, guard=_deploy_guard,
          borrows=_deploy_borrows),
    # a run of kind ``monitor`` (mlops_kit.ledger): the watched model's inputs are taken from its run
    Stage("monitor", "06_monitor.ipynb", "monitor", (N.SCHEMA, N.MODEL_CARD, N.METRICS, N.MONITOR_PROFILE),
          (*_COMMON, "scipy.stats", "mlops_kit.monitor"), reusable=False, preflight="mlops_kit._preflight:monitor"),
)

#: The stages in pipeline order (the built-in ones, then those registered). Read it as
#: ``stages.STAGES`` (a registration replaces the tuple).
STAGES: tuple[Stage, ...] = _BUILTIN
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
#: the stages a run runs when the parameters name none
DEFAULT_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.default)


def register(stage: Stage, artifacts: Iterable["Artifact"] = ()) -> Stage:
    """Add a stage after the others, and the artifacts it writes to the catalog (their
    ``producer`` must be the stage). Its notebook is looked up like the others' (the
    project's ``notebooks/``). The parameter schema's list of stage names is fixed when
    :mod:`mlops_kit.params` is imported: a registered stage is selected by name
    (``run_pipeline(..., stages=[...])``), and its ``section`` is one of the schema's, or None."""
    global STAGES, STAGE_NAMES
    from . import artifacts as catalog

    if stage.name in BY_NAME:
        raise ValueError(f"a stage named {stage.name!r} exists already")
    artifacts = tuple(artifacts)
    wrong = [a.name for a in artifacts if a.producer != stage.name]
    if wrong:
        raise ValueError(f"the artifacts a stage registers must be produced by it: {', '.join(wrong)}")
    unknown = [item for item in stage.inputs if item not in catalog.BY_NAME]
    if unknown:
        raise ValueError(f"stage {stage.name!r} reads {', '.join(unknown)}, which the catalog does not know")
    for artifact in artifacts:
        catalog.register(artifact)
    STAGES = (*STAGES, stage)
    STAGE_NAMES = tuple(s.name for s in STAGES)
    BY_NAME[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a registered stage and its artifacts (the built-in ones stay)."""
    global STAGES, STAGE_NAMES
    from . import artifacts as catalog

    if name in {s.name for s in _BUILTIN}:
        raise ValueError(f"{name!r} is a built-in stage")
    if BY_NAME.pop(name, None) is None:
        return
    STAGES = tuple(s for s in STAGES if s.name != name)
    STAGE_NAMES = tuple(s.name for s in STAGES)
    catalog.unregister_producer(name)


# --- what the runner and the notebooks ask of the table -------------------------------------

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
IMAGE_RECORD = N.IMAGE


def needed_inputs(selected: list[Stage], params: Any) -> list[str]:
    """The artifacts the selected stages need from an earlier run: the inputs no selected
    stage makes, plus what a stage borrows (``image.json`` when the deploy stage deploys an
    image (microk8s) of a model from that run: ``run --stages deploy --reuse-from RUN``)."""
    names = {s.name for s in selected}
    needed = {item for s in selected for item in s.inputs if producer_of(item).name not in names}
    for stage in selected:
        if stage.borrows is not None:
            needed.update(stage.borrows(names, params)[0])
    return sorted(needed)


def optional_inputs(selected: list[Stage], params: Any) -> list[str]:
    """Artifacts taken from the earlier run too when it has them (see :attr:`Stage.borrows`)."""
    names = {s.name for s in selected}
    return sorted({item for s in selected if s.borrows is not None for item in s.borrows(names, params)[1]})


def producer_of(artifact: str) -> Stage:
    """The stage that writes an artifact (by file name), as the catalog declares."""
    from . import artifacts

    return BY_NAME[artifacts.BY_NAME[artifact].producer]


def preflight_checks(loaded: "LoadedParams", selected: list[Stage]) -> dict[str, list[Check]]:
    """Each selected stage's preflight: raises the mistakes found here, returns the checks to
    run where the stage's libraries are imported, by stage name."""
    import importlib

    checks = {}
    for stage in selected:
        hook = stage.preflight
        if isinstance(hook, str):
            module, _, name = hook.partition(":")
            hook = getattr(importlib.import_module(module), name)
        if hook is not None:
            checks[stage.name] = hook(loaded)
    return checks


def check_inputs(stage: Stage | str, folder, params=None) -> None:
    """What a stage needs before it starts, checked through the artifact catalog: every input
    exists, then the stage's own guard (package: a model that was evaluated and passed the
    gate; deploy to a cluster: a built image). Raises ArtifactError or GateFailed saying which."""
    from . import artifacts

    stage = BY_NAME[stage] if isinstance(stage, str) else stage
    for name in stage.inputs:
        artifacts.BY_NAME[name].require(folder)
    if stage.guard is not None:
        stage.guard(folder, params)
