"""The kernels' parent kept warm between runs (opt-in: ``MLOPS_KIT_WARM_MINUTES=N``).

A run's zygote (:mod:`._kernels`) spends 1.5-2.5 s importing pandas, scikit-learn and
matplotlib before the first stage's kernel can be forked: a rerun of the train stage alone
pays that again, which is most of its time on the default data set. With
``MLOPS_KIT_WARM_MINUTES=N``, the zygote of a run does not exit when the run ends: it listens
on a unix socket and the next run of the same user, kit and libraries forks its kernels from
it, until it has been idle for N minutes.

- The socket is ``<dir>/<key>.sock`` in a folder of this user's, mode 0700 (``$XDG_RUNTIME_DIR``
  or the temporary folder; refused, and the run uses a zygote of its own, if the folder is
  not the user's, is a symlink or is open to others). The server takes connections from
  its own uid only (``SO_PEERCRED``), and a client talks only to a server of its own uid.
- The key is a digest of the Python executable, ``sys.path`` (each folder's mtime: an
  installed or upgraded library changes its folder), the kit's source files (mtime and
  size), the working folder and the environment variables read when a library is imported
  (threads, hash seed, matplotlib's backend). A changed kit or library means another key:
  a new warm parent; the stale one sees that its own key changed and exits.
- Each run gets a *session*: a ``fork()`` of the warm parent, with the run's environment and
  working folder, that speaks the zygote's protocol on the connection and forks the run's
  kernels; its end (the connection closed) ends the session, never the warm parent.
- The warm parent runs nothing of a run's: its sessions do (the kernels' forks, the pre-flight
  checks). What it ran itself, as the first run's zygote, were those checks (kit functions
  that keep no state between calls) and imports.
- Nothing is left behind by default: without the variable every run's zygote stops with
  the run, as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import tempfile
import time
from pathlib import Path

#: minutes a warm kernels' parent waits for the next run (unset or 0: no warm parent)
MINUTES_ENV = "MLOPS_KIT_WARM_MINUTES"
#: how often (seconds) an idle warm parent checks that its key is still current
TICK_ENV = "MLOPS_KIT_WARM_TICK"
#: a unix socket's path is at most 107 bytes (Linux's sun_path)
MAX_SOCKET_PATH = 108
#: environment variables read when a library is imported (a warm parent's imports keep them)
_IMPORT_TIME_ENV = ("OMP_", "OPENBLAS_", "MKL_", "NUMEXPR_", "PYTHON", "MPL", "MLOPS_KIT_KERNELS")


def minutes() -> float:
    """``$MLOPS_KIT_WARM_MINUTES`` as a number of minutes (0: off)."""
    from ..errors import ParameterError, ParameterProblem

    value = os.environ.get(MINUTES_ENV, "").strip()
    if not value:
        return 0.0
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 24 * 60:
        raise ParameterError([ParameterProblem(f"${MINUTES_ENV}", MINUTES_ENV,
                                               "a number of minutes from 0 to 1440", repr(value))])
    return number


def folder() -> Path | None:
    """This user's folder of warm sockets, made if missing; None (with a note on stderr) when
    it is not safe to use: not a folder of this user's with mode 0700."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"mlops-kit-warm-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        _note(f"{path} could not be made ({exc})")
        return None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
        _note(f"{path} must be a folder of uid {os.getuid()} with mode 0700. Got "
              f"{'a symlink' if stat.S_ISLNK(info.st_mode) else 'uid %d, mode %o' % (info.st_uid, stat.S_IMODE(info.st_mode))} instead")
        return None
    return path


def _note(reason: str) -> None:
    print(f"mlops-kit: no warm kernels' parent ({MINUTES_ENV}): {reason}; this run starts its own.", file=sys.stderr)


def key() -> str:
    """The digest of what the warm parent's imports depend on (see the module's docstring)."""
    import mlops_kit

    kit = Path(mlops_kit.__file__).parent
    files = []
    for root, dirs, names in os.walk(kit):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                info = os.stat(os.path.join(root, name))
                files.append((os.path.relpath(os.path.join(root, name), kit), info.st_mtime_ns, info.st_size))
    paths = []
    for entry in sys.path[1:]:  # [0] is the script's folder or the working folder: the cwd below
        try:
            paths.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            paths.append((entry, None))
    env = sorted((name, value) for name, value in os.environ.items() if name.startswith(_IMPORT_TIME_ENV))
    state = [sys.executable, sys.version, str(kit), files, paths, os.getcwd(), env]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:24]


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[2]


def connect(path: Path) -> socket.socket | None:
    """A connection to the warm parent listening at ``path``, if one of this user's is."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
        if peer_uid(client) != os.getuid():
            raise OSError("the server is another user's")
        client.sendall((json.dumps({"op": "session", "env": dict(os.environ), "cwd": os.getcwd()}) + "\n").encode())
    except OSError:
        client.close()
        return None
    return client


# --- the warm parent (in the zygote's process, once its first run closed the pipe) ---------

def serve(path: str, idle_minutes: float, started_key: str, session, prepare) -> None:
    """Listen at ``path`` until idle for ``idle_minutes`` or stale (:func:`key` is no longer
    ``started_key``); ``prepare()`` once listening (the imports the next runs need); each
    connection is served by ``session(connection)`` in a fork. Returns at once if another
    warm parent listens there."""
    import signal

    listener = _bind(Path(path))
    if listener is None:
        return
    try:
        prepare()
        tick = float(os.environ.get(TICK_ENV, "30"))
        listener.settimeout(tick)
        idle_until = time.monotonic() + idle_minutes * 60
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sessions are reaped automatically
        while True:
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                if time.monotonic() >= idle_until or key() != started_key:
                    return
                continue
            if peer_uid(connection) != os.getuid() or key() != started_key:
                stale = key() != started_key
                connection.close()
                if stale:
                    return
                continue
            connection.settimeout(None)
            if os.fork() == 0:
                listener.close()
                session(connection)
                os._exit(0)
            connection.close()
            idle_until = time.monotonic() + idle_minutes * 60
    finally:
        _unbind(Path(path), listener)


def _bind(path: Path) -> socket.socket | None:
    """Listen at ``path`` unless another warm parent does (a stale socket file is replaced)."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return None  # another warm parent answers: it serves the next runs
        except OSError:
            pass
        finally:
            probe.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(16)
        path.with_suffix(".pid").write_text(str(os.getpid()))
        return listener


def _unbind(path: Path, listener: socket.socket) -> None:
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.with_suffix(".pid").read_text() == str(os.getpid()):
                os.unlink(path)
                os.unlink(path.with_suffix(".pid"))
        except OSError:
            pass
    listener.close()


def stop_all(where: Path | None = None) -> list[int]:
    """Stop this user's warm kernels' parents (tests, ``make clean``); their pids."""
    import signal

    where = where or folder()
    stopped = []
    for pidfile in sorted(where.glob("*.pid")) if where else []:
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except (OSError, ValueError):
            pass
        for leftover in (pidfile, pidfile.with_suffix(".sock")):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    return stopped
