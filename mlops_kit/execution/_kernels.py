"""Kernels for the stages, forked from a pre-warmed parent.

Every stage runs in a fresh kernel, but importing pandas, scikit-learn and matplotlib
costs about 2 s of CPU per kernel. So a run starts one *zygote* process that imports
them once; each stage's kernel is a ``fork()`` of it, ready in milliseconds, with no
state from any other stage (the zygote never runs user code). The zygote also answers
the run's pre-flight checks that need scikit-learn, so the CLI never imports it.

Protocol (one JSON object per line on the zygote's stdin/stdout):
``{"op": "kernel", "connection_file": ..., "cwd": ..., "modules": [...]}`` -> ``{"pid": N}``
(imports ``modules`` first: the first stage's kernel is forked as soon as its own imports
are done, and the next stages' imports go on while it runs);
``{"op": "call", "function": "module:name", "kwargs": {...}}`` -> ``{"result": ...}``
or ``{"error": {"type": ..., "message": ..., "problems": [...]}}``.

This module imports no Jupyter library (``mlops-kit run`` starts the zygote first, also when
every stage turns out reused); the kernels' manager and client are in :mod:`._forked`.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from .._processes import kill_helper
from .._timing import mark
from ..errors import ZygoteError

#: Set to "spawn" to start each kernel as its own process (plain Jupyter behaviour).
MODE_ENV = "MLOPS_KIT_KERNELS"


_CONNECTION_DIR_PREFIX = "mlops-kit-kernels-"


def private_connection_dir() -> str:
    """A new 0700 folder for one run's kernel connection files (each holds the kernel's HMAC
    key). The caller removes it when its kernels stop; folders left by processes that were
    killed (kill -9) are removed here, by the next run."""
    import tempfile

    base = tempfile.gettempdir()
    _remove_stale_connection_dirs(base)
    return tempfile.mkdtemp(prefix=f"{_CONNECTION_DIR_PREFIX}{os.getpid()}-", dir=base)


def _remove_stale_connection_dirs(base: str) -> None:
    import re
    import shutil

    pattern = re.compile(re.escape(_CONNECTION_DIR_PREFIX) + r"(\d+)-")
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry.name)
        try:
            if (found and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                    and not _pid_alive(int(found.group(1)))):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


class KernelZygote:
    """The parent process that forks kernels. One per run; stops with :meth:`close`.

    ``connection``: a session of a warm kernels' parent (:mod:`._warm`) instead of a process
    of its own. ``warm``: the process becomes a warm parent when closed (``{"path", "minutes",
    "key", "modules"}``: :func:`._warm.serve`'s), instead of exiting."""

    def __init__(self, connection=None, warm: dict | None = None):
        self._process: subprocess.Popen | None = None
        self._connection = connection
        self._warm_after = warm is not None
        if connection is not None:
            self._reader = connection.makefile("r", encoding="utf-8")
            self._writer = connection.makefile("w", encoding="utf-8")
        else:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlops_kit.execution._kernels", *(["--warm", json.dumps(warm)] if warm else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                start_new_session=True)  # the terminal's Ctrl-C reaches the run, not the kernels
            self._reader, self._writer = self._process.stdout, self._process.stdin
        self._closed = False
        self._sent = self._received = 0
        self._replies: dict[int, dict] = {}
        # one zygote may serve the kernel pools of several runs at once (a sweep's trials,
        # each in a thread): sending and reading are serialised, each on its own
        self._sending, self._reading = threading.Lock(), threading.Lock()

    @property
    def pid(self) -> int | None:
        """The zygote's pid (None for a warm parent's session)."""
        return self._process.pid if self._process is not None else None

    @property
    def warm(self) -> bool:
        """Whether this is a session of a warm kernels' parent (its imports done by an earlier run)."""
        return self._connection is not None

    def _stopped(self) -> str:
        if self._process is None:
            return "the warm kernels' parent's session stopped"
        return f"the kernel parent process stopped (exit code {self._process.poll()})"

    # Requests are pipelined: sending never waits, so the caller goes on (importing
    # papermill, say) while the zygote is still importing; replies come back in order.
    def send(self, message: dict) -> int:
        with self._sending:
            try:
                self._writer.write(json.dumps(message) + "\n")
                self._writer.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise ZygoteError(f"{self._stopped()}: {exc}") from None
            self._sent += 1
            return self._sent

    def reply(self, ticket: int) -> dict:
        with self._reading:
            while ticket not in self._replies:
                try:
                    line = self._reader.readline()
                except (OSError, ValueError):
                    line = ""
                if not line:
                    raise ZygoteError(self._stopped())
                self._received += 1
                self._replies[self._received] = json.loads(line)
            return self._replies.pop(ticket)

    def call(self, function: str, **kwargs: Any) -> dict:
        """Call ``module:function`` in the zygote, where scikit-learn is already imported."""
        return self.reply(self.send({"op": "call", "function": function, "kwargs": kwargs}))

    @property
    def alive(self) -> bool:
        return not self._closed and (self._process is None or self._process.poll() is None)

    def close(self) -> None:
        """Stop the zygote (it holds no state worth a graceful exit); a warm parent's session
        ends with its connection; a zygote that becomes a warm parent is only let go."""
        self._closed = True
        if self._process is not None and not self._warm_after:
            kill_helper(self._process)
            return
        for stream in (self._writer, self._reader, self._connection):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


#: a zygote started before the run was planned (:func:`prestart_zygote`), not yet taken
_PRESTARTED: KernelZygote | None = None


def prestart_zygote() -> None:
    """Start the zygote now, before the parameters are loaded and the run is planned (``mlops-kit
    run`` calls this first): its imports take the core that the CLI's own imports and checks
    leave idle. The run's first kernel pool takes it (:func:`take_zygote`); when no stage runs
    (a parameter mistake, every stage reused), :func:`discard_prestarted` stops it."""
    global _PRESTARTED
    if _PRESTARTED is None and os.environ.get(MODE_ENV, "fork") != "spawn":
        import atexit

        _PRESTARTED = new_zygote()
        mark("cli: kernels' parent spawned" if not _PRESTARTED.warm else "cli: warm kernels' parent connected")
        atexit.register(discard_prestarted)  # a usage error, say, before the run took it


def take_zygote() -> KernelZygote:
    """The pre-started zygote if there is one still running, else a new one."""
    global _PRESTARTED
    zygote, _PRESTARTED = _PRESTARTED, None
    if zygote is not None and zygote.alive:
        return zygote
    if zygote is not None:
        zygote.close()
    return new_zygote()


def new_zygote() -> KernelZygote:
    """A session of this user's warm kernels' parent for this kit and these libraries, when
    ``$MLOPS_KIT_WARM_MINUTES`` asks for one and one listens; else a new zygote (which becomes
    the warm parent when the run ends, with that variable set)."""
    from . import _warm

    idle = _warm.minutes()
    where = _warm.folder() if idle else None
    if where is None:
        return KernelZygote()
    key = _warm.key()
    path = where / f"{key}.sock"
    if len(os.fsencode(path)) >= _warm.MAX_SOCKET_PATH:
        _warm._note(f"the socket's path {path} is too long for a unix socket")
        return KernelZygote()
    connection = _warm.connect(path)
    if connection is not None:
        return KernelZygote(connection=connection)
    return KernelZygote(warm={"path": str(path), "minutes": idle, "key": key, "modules": _default_modules()})


def _default_modules() -> list[str]:
    """What the default pipeline's stages import: a warm parent imports it for the next runs."""
    from ..stages import STAGES

    return sorted({module for stage in STAGES if stage.default for module in stage.warm_imports})


def discard_prestarted() -> None:
    """Stop a pre-started zygote that no kernel pool took."""
    global _PRESTARTED
    zygote, _PRESTARTED = _PRESTARTED, None
    if zygote is not None:
        zygote.close()


class CallProcess:
    """Calls (``("module:function", kwargs)``) answered by a short-lived process of their own,
    started at once: the pre-flight checks that read the table (a whole column of it) run
    beside the zygote's imports instead of after them, and what they read is freed with the
    process, never held by the zygote, where every kernel forked later would inherit it."""

    def __init__(self, calls: list[tuple[str, dict]]):
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mlops_kit.execution._kernels", "--calls"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            self._process.stdin.write(json.dumps([{"function": f, "kwargs": kw} for f, kw in calls]))
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # replies() reports the process that stopped

    def replies(self) -> list[dict]:
        """The answers, in the order of the calls (each as :meth:`KernelZygote.call`'s)."""
        out = self._process.stdout.read()
        self._process.wait()
        try:
            return json.loads(out)
        except ValueError:
            raise ZygoteError(f"the pre-flight check process stopped (exit code {self._process.returncode})") from None

    def close(self) -> None:
        kill_helper(self._process)




def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --- the zygote process ------------------------------------------------------------------

def _serve(warm: dict | None = None) -> None:
    """The zygote of one run (requests on stdin); with ``warm``, then the warm kernels' parent
    of the next runs (:mod:`._warm`), once the run closed stdin."""
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by an import goes to stderr, never into the protocol
    mark("zygote: started")
    # debugpy (the kernels' debugger, imported below) warns on stderr, the run's, that
    # frozen modules may hide breakpoints: no debugger attaches to a stage's kernel
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if warm is not None:
        from . import _warm

        # this process's imports are as current as the kit and libraries are now, not later
        warm = warm if _warm.key() == warm["key"] else None
    _import_all(KERNEL_MODULES)
    gc.freeze()  # see _serve_on: the imports' objects are shared with every kernel, never copied
    mark("zygote: ipykernel imported")

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked kernels are reaped automatically
    _serve_on(sys.stdin, protocol_out)
    if warm is not None:
        protocol_out.close()
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(f"{os.path.splitext(warm['path'])[0]}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for fd, target in ((0, devnull), (1, devnull), (2, log)):  # the run's terminal is not ours anymore
            os.dup2(target, fd)
        # the next runs' stages' imports, beyond what this run's did
        _warm.serve(warm["path"], warm["minutes"], warm["key"], _session, lambda: _import_all(warm["modules"]))


def _serve_on(requests, protocol_out, in_kernel=lambda: None) -> None:
    """Answer ``requests`` (lines) on ``protocol_out`` until the end of ``requests``;
    ``in_kernel()`` runs first in each forked kernel."""
    for line in requests:
        request = json.loads(line)
        mark(f"zygote: request {request['op']} {request.get('function', '')}")
        _import_all(request.get("modules", ()))
        if request["op"] == "kernel":
            mark("zygote: imports done, fork")
            # what the parent holds moves to the collector's permanent generation: a full
            # collection in the kernel no longer writes to every imported object's header,
            # so those pages stay shared with the parent instead of being copied (~65 MiB a kernel)
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                in_kernel()
                _become_kernel(request, protocol_out)
            protocol_out.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "call":
            protocol_out.write(json.dumps(_call(request)) + "\n")
            mark("zygote: call answered")
        protocol_out.flush()


def _session(connection) -> None:
    """A run served by a warm kernels' parent, in a fork of it: the run's environment and
    working folder, then the zygote's protocol on the connection."""
    reader = connection.makefile("r", encoding="utf-8")
    writer = connection.makefile("w", encoding="utf-8")
    try:
        hello = json.loads(reader.readline() or "{}")
        os.environ.clear()
        os.environ.update(hello["env"])
        os.chdir(hello["cwd"])
        mark("zygote: warm session")
        # the kernel keeps no end of the run's connection (detached: its number is not closed twice)
        _serve_on(reader, writer, in_kernel=lambda: os.close(connection.detach()))
    except (OSError, ValueError, KeyError) as exc:
        print(f"mlops-kit: warm session ended: {exc!r}", file=sys.stderr)


#: what a kernel imports as it starts (``IPKernelApp.initialize``), imported once here: each
#: forked kernel was ready 0.2 s later without them (the debugger's debugpy is most of it)
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
                  "IPython.core.history", "IPython.core.debugger")
#: what the kernel's inline figures need, once a stage's modules include pyplot
INLINE_MODULES = ("matplotlib_inline.backend_inline",)


def _import_all(modules) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - the stage will report its own import error
            print(f"mlops-kit: warm import of {module} failed: {exc}", file=sys.stderr)
    if "matplotlib.pyplot" in modules and INLINE_MODULES[0] not in sys.modules:
        _import_all(INLINE_MODULES)
        try:  # the backends' entry points, read by each kernel's enable_matplotlib otherwise
            from matplotlib.backends.registry import backend_registry
            backend_registry.list_all()
        except Exception:  # noqa: BLE001 - an older matplotlib: the kernel reads them
            pass


def _call(request: dict) -> dict:
    module, _, name = request["function"].partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(**request["kwargs"])
        return {"result": result}
    except Exception as exc:  # noqa: BLE001 - sent back to the caller, which raises it
        problems = [p.as_dict() for p in getattr(exc, "problems", [])]
        return {"error": {"type": type(exc).__name__, "message": str(exc), "problems": problems}}


def _become_kernel(request: dict, protocol_out) -> None:
    code = 0
    try:
        protocol_out.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.chdir(request["cwd"])
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        app.initialize(["-f", request["connection_file"], "--IPKernelApp.log_level=ERROR",
                        f"--IPKernelApp.parent_handle={os.getppid()}"])
        if "matplotlib.pyplot" in sys.modules:
            # pyplot was imported before there was a shell: hook up inline figures now,
            # as a kernel that imported it itself would have (same as `%matplotlib inline`)
            app.shell.enable_matplotlib("inline")
        mark("kernel: initialized (ports written)")
        app.start()
    except BaseException as exc:  # noqa: BLE001
        if not isinstance(exc, SystemExit):
            print(f"mlops-kit: forked kernel failed: {exc!r}", file=sys.stderr)
            code = 1
    finally:
        os._exit(code)


def _answer_calls() -> None:
    """``--calls``: a JSON list of calls on stdin, their answers as a JSON list on stdout."""
    protocol_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by an import goes to stderr, never into the answer
    requests = json.loads(sys.stdin.read())
    protocol_out.write(json.dumps([_call(request) for request in requests]))
    protocol_out.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--calls"]:
        _answer_calls()
    else:
        _serve(json.loads(sys.argv[2]) if sys.argv[1:2] == ["--warm"] else None)
