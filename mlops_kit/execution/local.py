"""The local executor: each stage in a fresh kernel on this machine.

What makes a run slow under plain papermill is the kernels: each starts and imports pandas,
scikit-learn and matplotlib again (about 3 s a stage). So the stages' kernels are forked
from one parent, the *zygote*, that did those imports once (:mod:`._kernels`); all of them
are asked for when the run starts, the zygote answers the checks that need scikit-learn,
and this process imports papermill meanwhile (:meth:`LocalExecutor.ready`). With
``MLOPS_KIT_KERNELS=spawn`` each kernel is its own process instead.

``mlops-kit run`` starts the zygote before it reads the parameters (:func:`prestart`): the
pool takes it (:func:`._kernels.take_zygote`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import MlopsKitError
from ..stages import Stage
from . import ExecutionPlan, Outcome, executed_notebook
from . import _kernels
from .._timing import mark

KERNEL_NAME = "python3"


def prestart() -> None:
    """``mlops-kit run`` starts the zygote before it plans (its imports overlap the
    planning); the run's pool takes it."""
    _kernels.prestart_zygote()


def shared_zygote():
    """A zygote for several executors at once (``LocalExecutor(zygote=...)``): the one
    :func:`prestart` started, else a new one; None in the spawn mode. The caller closes it
    (``.close()``)."""
    return None if os.environ.get(_kernels.MODE_ENV, "fork") == "spawn" else _kernels.take_zygote()


def discard_prestarted() -> None:
    """Stop the zygote started by :func:`prestart` when no run took it (no stage ran)."""
    _kernels.discard_prestarted()


def stop_warm_parents(folder: Path | None = None) -> list[int]:
    """Stop this user's warm kernels' parents (``MLOPS_KIT_WARM_MINUTES``; in ``folder``,
    default this user's); their pids."""
    from . import _warm

    return _warm.stop_all(folder)


__all__ = ["KERNEL_NAME", "KernelPool", "LocalExecutor", "discard_prestarted", "prestart", "shared_zygote",
           "stop_warm_parents"]


class KernelPool:
    """One fresh kernel per stage, all asked for when the run starts.

    By default they are forked from a zygote that imported the stages' modules once
    (:mod:`mlops_kit.execution._kernels`); with ``MLOPS_KIT_KERNELS=spawn`` each kernel is its own
    process that imports its stage's modules as it boots.
    """

    #: checks that read the data table: answered by a process of their own when the table is
    #: large (see start and :func:`reads_a_large_table`)
    TABLE_CHECKS = ("mlops_kit.data:",)

    def __init__(self, stages: list[Stage], cwd: Path, zygote=None):
        self._stages = list(stages)
        self._cwd = cwd
        self._managers: dict[str, Any] = {}
        self._zygote = None
        #: a zygote lent by the caller (a sweep's, shared by its trials): used, never stopped here
        self._lent = zygote
        self._reader = None
        self._connection_dir: str | None = None

    def start(self, checks: list[tuple[str, dict]] = ()) -> None:
        """Ask for every stage's kernel, and for ``checks`` (``("module:function", kwargs)``
        calls, answered by :meth:`check`). Those that read a large table start at once in a
        process of their own, beside the zygote's imports (reading a column of a large CSV
        takes seconds; the zygote must not keep what it read); the others are queued in the
        zygote right after the first kernel: they need scikit-learn, which the first stage
        imports anyway (a process of their own would import pandas and scikit-learn a third
        time, 1.5 s of CPU beside the zygote's on a default run, for a table read in
        milliseconds)."""
        from ._kernels import MODE_ENV, CallProcess, private_connection_dir, take_zygote

        self._checks = list(checks)
        self._connection_dir = private_connection_dir()
        if os.environ.get(MODE_ENV, "fork") == "spawn":
            self._start_spawned()
            return
        reading = [c for c in self._checks if c[0].startswith(self.TABLE_CHECKS) and reads_a_large_table(c)]
        self._reader = CallProcess(reading) if reading else None
        # the caller's, else the CLI's (started before the run was planned), else a new one
        self._zygote = self._lent if self._lent is not None and self._lent.alive else take_zygote()
        self._tickets: list[int | None] = [None] * len(self._checks)
        for position, stage in enumerate(self._stages):
            self._fork(stage)
            if position == 0:
                self._tickets = [None if c in reading else self._zygote.send({"op": "call", "function": c[0],
                                                                               "kwargs": c[1]})
                                 for c in self._checks]

    def _fork(self, stage: Stage) -> None:
        from ._forked import ForkedKernelManager

        km = ForkedKernelManager(kernel_name=KERNEL_NAME)
        km.start_forked(self._zygote, str(self._cwd), modules=stage.warm_imports, folder=self._connection_dir)
        self._managers[stage.name] = km

    def _start_spawned(self) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        for stage in self._stages:
            km = AsyncKernelManager(kernel_name=KERNEL_NAME,
                                    connection_file=os.path.join(self._connection_dir, f"kernel-{stage.name}.json"))
            code = "; ".join(f"import {module}" for module in stage.warm_imports) or "pass"
            run_sync(km.start_kernel)(extra_arguments=[f"--IPKernelApp.exec_lines={code}",
                                                       "--IPKernelApp.log_level=ERROR"], cwd=str(self._cwd))
            self._managers[stage.name] = km

    def check(self) -> None:
        """Wait for the queued checks; raise the first problem they found."""
        from ..errors import ParameterError, ParameterProblem

        if self._zygote is None:
            import importlib
            for function, kwargs in self._checks:
                module, _, name = function.partition(":")
                getattr(importlib.import_module(module), name)(**kwargs)
            return
        read = iter(self._reader.replies() if self._reader is not None else [])
        for ticket in self._tickets:
            answer = next(read) if ticket is None else self._zygote.reply(ticket)
            if "error" in answer:
                error = answer["error"]
                if error["problems"]:
                    raise ParameterError([ParameterProblem(**p) for p in error["problems"]])
                if error["type"] == "DataError":
                    from ..errors import DataError
                    raise DataError(error["message"])
                raise MlopsKitError(f"{error['type']}: {error['message']}")

    @property
    def stages(self) -> list[Stage]:
        """The stages this pool has kernels for, in order."""
        return list(self._stages)

    def take(self, stage: Stage):
        return self._managers.get(stage.name)

    def stop(self, stage: Stage) -> None:
        km = self._managers.pop(stage.name, None)
        if km is not None:
            _shutdown(km)

    def stop_all(self) -> None:
        for name in list(self._managers):
            _shutdown(self._managers.pop(name))
        if self._zygote is not None:
            if self._zygote is not self._lent:
                self._zygote.close()
            self._zygote = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._connection_dir is not None:
            import shutil

            shutil.rmtree(self._connection_dir, ignore_errors=True)  # the kernels' HMAC keys
            self._connection_dir = None


#: a data file larger than this is checked in a process of its own, not in the zygote
#: (the 10k-row table of benchmarks/scale.py is 4 MiB of CSV, its 100k rows 40 MiB)
LARGE_TABLE_BYTES = 16 * 2**20


def reads_a_large_table(check: tuple[str, dict]) -> bool:
    """Whether ``check``'s ``source`` is a file larger than :data:`LARGE_TABLE_BYTES` (not a
    file: a bundled data set, ``sklearn:NAME``, which is small; or a missing file, which the
    check reports)."""
    source = str(check[1].get("source", ""))
    try:
        return os.path.getsize(source) > LARGE_TABLE_BYTES
    except OSError:
        return False


def _shutdown(km) -> None:
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # noqa: BLE001 - a kernel that is already gone
        pass


class LocalExecutor:
    """The :class:`~mlops_kit.execution.Executor` of forked (or spawned) kernels on this machine.

    ``zygote``: a :class:`._kernels.KernelZygote` to fork the kernels from, shared with other
    executors (the trials of a sweep, each run in a thread, import the libraries once); the
    caller stops it. Default: the run's own."""

    def __init__(self, zygote=None) -> None:
        self._pool: KernelPool | None = None
        self._zygote = zygote

    @property
    def stages(self) -> list[Stage]:
        return self._pool.stages if self._pool is not None else []

    @property
    def warm(self) -> bool:
        """Whether the kernels come from a warm kernels' parent (``MLOPS_KIT_WARM_MINUTES``)."""
        zygote = self._pool._zygote if self._pool is not None else None
        return bool(zygote is not None and zygote.warm)

    def start(self, plan: ExecutionPlan) -> None:
        self.stop()
        self._pool = KernelPool(plan.stages, cwd=plan.notebooks, zygote=self._zygote)
        self._pool.start(plan.checks)

    def ready(self) -> None:
        _import_papermill()  # while the kernels' parent imports the rest
        mark("cli: papermill imported")
        self._pool.check()

    def execute(self, stage: Stage, run_dir: Path, parameters: dict[str, Any]) -> Outcome:
        import papermill
        from nbclient.exceptions import DeadKernelError
        from papermill.exceptions import PapermillExecutionError

        source = Path(self._pool._cwd) / stage.notebook
        output = executed_notebook(run_dir, stage)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=parameters, kernel_name=KERNEL_NAME, engine_name=_engine(),
                km=self._pool.take(stage), progress_bar=False, log_output=False, cwd=str(source.parent))
        except PapermillExecutionError as exc:
            return Outcome("failed", round(time.perf_counter() - started, 3),
                           cell_index=_failing_cell(output, default=exc.cell_index), exception=exc.ename,
                           detail=_error_text(exc.evalue))
        except DeadKernelError:
            cell_index = _running_cell(output)
            return Outcome("failed", round(time.perf_counter() - started, 3), cell_index=cell_index,
                           exception="DeadKernelError",
                           detail=("the kernel died (killed, or out of memory) while the stage ran"
                                   + (f" cell {cell_index}" if cell_index is not None else "")),
                           report=False)
        finally:
            self._pool.stop(stage)
        return Outcome("succeeded", round(time.perf_counter() - started, 3))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop_all()
            self._pool = None


def _import_papermill() -> None:
    """Import papermill without its hdfs:// handler's ``pyarrow.fs`` (pyarrow and numpy: a
    quarter of a second of this process's start, for paths a run never has: its notebooks are
    local files), unless something imported it already."""
    import sys

    if "papermill" in sys.modules or "pyarrow.fs" in sys.modules:
        return
    sys.modules["pyarrow.fs"] = None  # type: ignore[assignment] - papermill's `except ImportError`
    try:
        import papermill  # noqa: F401
    finally:
        del sys.modules["pyarrow.fs"]


_ENGINE = "mlops-kit"


def _engine() -> str:
    """The name of papermill's nbclient engine, registered once, that writes the executed
    notebook when a code cell starts (the running cell and every output before it), not
    also when each cell ends and when a markdown cell starts: papermill's own writes the whole
    notebook twice per cell, 75 writes of a default run, each encoded and validated, between
    two cells of the stage. The notebook's end writes it as papermill's does: the same file."""
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    if _ENGINE in papermill_engines._engines:
        return _ENGINE

    class Manager(NotebookExecutionManager):
        _quiet = False

        def save(self, **kwargs):
            if not self._quiet:
                super().save(**kwargs)

        def _without_save(self, method, cell, *args, **kwargs):
            self._quiet = True
            try:
                return method(cell, *args, **kwargs)
            finally:
                self._quiet = False

        def cell_start(self, cell, cell_index=None, **kwargs):
            if cell.get("cell_type") == "code":
                return super().cell_start(cell, cell_index, **kwargs)
            return self._without_save(super().cell_start, cell, cell_index, **kwargs)

        def cell_complete(self, cell, cell_index=None, **kwargs):
            # the next code cell's start, or the notebook's end, writes what this one did
            return self._without_save(super().cell_complete, cell, cell_index, **kwargs)

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):
            # papermill's Engine.execute_notebook, with the manager above
            nb_man = Manager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                             autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    papermill_engines.register(_ENGINE, Engine)
    return _ENGINE


def _running_cell(notebook: Path) -> int | None:
    """The index of the cell papermill last marked as running in the saved notebook."""
    import nbformat

    try:
        executed = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been saved yet
        return None
    running = [index for index, cell in enumerate(executed.cells)
               if cell.get("metadata", {}).get("papermill", {}).get("status") == "running"]
    return running[-1] if running else None


def _failing_cell(notebook: Path, default: int | None) -> int | None:
    """The index, in the executed notebook as saved (papermill puts an error banner first),
    of the cell whose output is the error."""
    import nbformat

    try:
        executed = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001 - the record still has papermill's own index
        return default
    for index, cell in enumerate(executed.cells):
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            return index
    return default


def _error_text(text: str, limit: int = 2000) -> str:
    """The exception's message (all of it: a kit error's hint is on its second line)."""
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + " ..."
