"""The HTML reports of executed notebooks, exported by a process of its own.

nbconvert's import and an export are two seconds of Python, most of it holding the GIL: in a
thread of the run's process they slowed papermill's handling of the next stage's kernel (its
start and its messages) by as much. The process is started when the run's first stage starts
and imports nbconvert at once (started by the first export instead, a rerun of the train
stage waited a second for that import after its last stage), runs at a lower priority than
the stages, serves every run of this process (a sweep's trials, each in a thread), and is
stopped when this process exits (or its stdin closes).

Protocol (one JSON value per line): ``[notebook, report]`` -> ``{"ok": true}`` or
``{"error": "..."}``.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from ._processes import kill_helper

#: the report process's niceness: the stages' kernels come first
NICENESS = 5


def export_html(notebook: Path, report: Path) -> Path:
    """Write ``notebook``'s HTML report to ``report`` (atomically), in this process."""
    import nbformat

    from . import _atomic

    with _EXPORT_LOCK:
        body, _ = _html_exporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return _atomic.write_text(report, body)


_EXPORTER = None
#: the one exporter is shared by the runs of a process (a sweep's trials run in threads)
_EXPORT_LOCK = threading.Lock()


def _html_exporter():
    """One HTMLExporter per process: its templates are loaded and compiled once."""
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert import HTMLExporter

        _EXPORTER = HTMLExporter()
    return _EXPORTER


class ReportProcess:
    """Exports in the report process; :meth:`export` blocks its caller (a thread) until the
    report is written, and raises what the export raised."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the process now (it imports nbconvert and compiles the templates before its
        first export); :meth:`export` starts it if need be. Never waits: the lock is held
        through an export (of the previous stage's report), by a process already started."""
        if self._lock.acquire(blocking=False):
            try:
                self._start()
            finally:
                self._lock.release()

    def _start(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlops_kit._reports"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, bufsize=1, start_new_session=True)  # Ctrl-C reaches the run, not this

    def export(self, notebook: Path, report: Path) -> Path:
        from .errors import ArtifactError

        with self._lock:
            self._start()
            try:
                self._process.stdin.write(json.dumps([str(notebook), str(report)]) + "\n")
                self._process.stdin.flush()
                line = self._process.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
        if not line:
            raise ArtifactError(f"The HTML report of {notebook} was not written: the report process stopped "
                                f"(exit code {self._process.poll()}).", path=report)
        answer = json.loads(line)
        if "error" in answer:
            raise ArtifactError(f"The HTML report of {notebook} was not written: {answer['error']}", path=report)
        return report

    def close(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None:  # every export was answered: nothing to finish
            kill_helper(process)


_SHARED: ReportProcess | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> ReportProcess:
    """This process's report process (started by the first stage, stopped at exit)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ReportProcess()
            atexit.register(_SHARED.close)
        return _SHARED


def _serve() -> None:
    from .execution import skip_iri_grammar

    skip_iri_grammar()  # nbconvert imports jsonschema: 2 s of a grammar no notebook needs
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by an import goes to stderr, never into the protocol
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    from ._timing import mark

    mark("reports: started")
    _html_exporter()  # before the first export is asked for: the process starts with the first stage
    mark("reports: nbconvert ready")
    for line in sys.stdin:
        notebook, report = json.loads(line)
        try:
            mark(f"reports: export {Path(notebook).name}")
            export_html(Path(notebook), Path(report))
            mark(f"reports: exported {Path(notebook).name}")
            out.write(json.dumps({"ok": True}) + "\n")
        except Exception as exc:  # noqa: BLE001 - sent back to the run, which raises it
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")


if __name__ == "__main__":
    _serve()
