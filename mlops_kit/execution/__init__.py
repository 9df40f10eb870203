"""How a stage is executed: the seam between the runner and what runs the notebooks.

The runner (:mod:`mlops_kit.runner`) plans a run, decides what the cache reuses, keeps the
ledger and emits the events; an :class:`Executor` runs the stages' notebooks. It is given
the stages that will run (and the checks to answer before the first starts) when the run
starts, executes one stage at a time into the run folder, and is stopped when the run ends:

>>> executor.start(ExecutionPlan(stages, checks, notebooks_dir))   # returns at once
>>> executor.ready()               # waits for the checks; raises the first problem found
>>> outcome = executor.execute(stage, run_dir, parameters)          # an Outcome
>>> executor.stop()                # may be started again afterwards

:class:`mlops_kit.execution.kubernetes.KubernetesExecutor` (``execution.mode: kubernetes``)
runs each stage as a Kubernetes Job.
:class:`mlops_kit.execution.local.LocalExecutor` (the default) runs each stage in a fresh
kernel on this machine, forked from a zygote that imported the stages' modules once. The
executed notebook goes to ``<run_dir>/notebooks/<stage.notebook>``; the outputs to
``<run_dir>/artifacts/``, where the runner checks them when ``execute`` returns.

This module imports nothing heavy: the zygote imports it (``python -m
mlops_kit.execution._kernels``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .. import _paths

if TYPE_CHECKING:
    from ..stages import Check, Stage


@dataclass
class ExecutionPlan:
    """What an executor is started for: the stages that will run, in order; the checks to
    answer before the first starts (``("module:function", kwargs)``, see
    :attr:`mlops_kit.stages.Stage.preflight`); the folder of the stage notebooks."""

    stages: list["Stage"]
    checks: list["Check"] = field(default_factory=list)
    notebooks: Path = field(default_factory=_paths.notebooks_dir)


@dataclass
class Outcome:
    """How a stage's execution ended. ``failed``: a cell raised (``cell_index`` in the
    executed notebook, ``exception`` its type, ``detail`` its message) or the process that
    ran it died (``exception`` ``DeadKernelError``). ``report``: the executed notebook was
    saved whole enough to be exported as the stage's report."""

    status: Literal["succeeded", "failed"]
    seconds: float
    cell_index: int | None = None
    exception: str | None = None
    detail: str = ""
    report: bool = True


class Executor(Protocol):
    """Runs the stages' notebooks for the runner (see the module's docstring)."""

    @property
    def stages(self) -> list["Stage"]:
        """The stages it was started for (empty when stopped)."""

    def start(self, plan: ExecutionPlan) -> None:
        """Ask for what the stages need (kernels, pods) and for the plan's checks; returns at once."""

    def ready(self) -> None:
        """Wait for the checks; raise the first problem they found (a kit error)."""

    def execute(self, stage: "Stage", run_dir: Path, parameters: dict[str, Any]) -> Outcome:
        """Execute the stage's notebook with ``parameters`` into the run folder."""

    def stop(self) -> None:
        """Release everything it started (idempotent)."""


def executed_notebook(run_dir: Path, stage: "Stage") -> Path:
    """Where a stage's executed notebook is saved in the run folder."""
    return Path(run_dir) / _paths.NOTEBOOKS_SUBDIR / stage.notebook


def default_executor(params: Any = None) -> Executor:
    """The executor a run uses unless it is given one: a Kubernetes Job per stage when
    ``params.execution.mode`` is ``kubernetes``, else forked kernels on this machine."""
    if params is not None and params.execution.mode == "kubernetes":
        from .kubernetes import KubernetesExecutor

        return KubernetesExecutor(params)
    from .local import LocalExecutor

    return LocalExecutor()


def skip_iri_grammar() -> None:
    """Keep jsonschema from compiling its IRI grammar in this process.

    papermill imports nbformat, which imports jsonschema, whose format checkers import
    ``rfc3987_syntax`` when it is installed (jupyter-events' extras install it): that module
    builds a Lark parser at import time, 2 s of CPU before the first stage can start, more
    than all of papermill. Notebooks hold no IRIs to check (nbformat's schema has no ``iri``
    format), so the check is left out: jsonschema treats the module as absent. Called by
    ``mlops-kit run`` and a stage's Job pod (:mod:`.job`), whose processes are the kit's own
    (not by :func:`~mlops_kit.runner.run_pipeline`, which may run inside a user's kernel)."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]
