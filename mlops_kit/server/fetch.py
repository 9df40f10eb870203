"""``mlops-kit runs fetch RUN_ID --server``: a run of the team's server, copied back.

The run folder of the server's runs folder (``~/mlops-kit/<project>/runs/RUN_ID``, where
:func:`mlops_kit.server.ledger.remote_runs` reads) comes over SSH as one ``tar -cf -`` stream
and becomes the local run folder of that id, so ``runs show|compare``, the executed notebooks
and the HTML reports work as for a local run.

Copied back rather than read through the API: the reports and notebooks are files a browser or
JupyterLab opens, ``runs compare`` reads records and artifacts from the local ledger, and a
fetched run stays readable when the server is gone.

What the server sends is hostile input: the run id is checked (:func:`mlops_kit.ledger.run_path`)
before a command is built; the stream is bounded in bytes (``max_bytes``), members and time;
every member must be a regular file or a folder with a relative name inside the run folder
(checked here, then extracted with tarfile's ``data`` filter); the folder is written to a
temporary folder beside the target and renamed at the end (a failed fetch leaves nothing);
its ``run.json`` must load as a :class:`~mlops_kit.artifacts.RunRecord` of that id.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path, PurePosixPath

from .. import _paths
from .._terminal import printable
from ..errors import ArtifactError, MlopsKitError, ServerError
from .ledger import server_from_git

MAX_FETCH_BYTES = 2 << 30       # the tar stream of one run (models included); `--max-mb` raises it
MAX_MEMBERS = 20_000            # files and folders of one run
FETCH_TIMEOUT = 1800            # seconds for the whole transfer


_KINDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


class _TooBig(Exception):
    pass


class _Bounded:
    """A pipe read by tarfile, stopped after ``limit`` bytes."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.count = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        block = self.raw.read(size)
        self.count += len(block)
        if self.count > self.limit:
            raise _TooBig()
        return block


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be part of a fetched run (None when it may)."""
    name = printable(member.name[:200])
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return f"an absolute member {name!r}"
    if ".." in path.parts:
        return f"a member {name!r} that leaves the run folder ('..')"
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        return f"a {kind} {name!r} (to {printable(member.linkname[:200])!r})"
    if not (member.isreg() or member.isdir()):
        kind = _KINDS.get(member.type, f"tar type {member.type.decode(errors='replace')!r}")
        return f"a member {name!r} that is neither a file nor a folder (a {kind})"
    return None


def fetch_run(run_id: str, *, force: bool = False, max_bytes: int = MAX_FETCH_BYTES,
              cwd: Path | None = None, timeout: float = FETCH_TIMEOUT) -> Path:
    """Copy run ``run_id`` of the server into the local runs folder; its folder."""
    from ..ledger import read_record, run_path

    root = _paths.runs_dir()
    target = run_path(run_id, root=root)             # the id is checked before any command is built
    if (target.exists() or target.is_symlink()) and not force:
        raise MlopsKitError(f"The local run {run_id} must not exist to be fetched. Got the folder {target} "
                            "instead.", hint=f"mlops-kit runs fetch {run_id} --server --force replaces it")
    ssh, project = server_from_git(cwd)
    folder = f"\"$HOME\"/mlops-kit/{shlex.quote(project)}/runs/{shlex.quote(run_id)}"
    command = f"tar -C {folder} -cf - ."
    host = ssh.target.url

    def refuse(found: str) -> ServerError:
        return ServerError(f"The run {run_id} from {ssh.target} must be a tar stream of at most {max_bytes} bytes "
                           f"and {MAX_MEMBERS} members, each a file or folder inside the run folder, with a "
                           f"run.json of that id. Got {found} instead; nothing was written.",
                           host=host, check="command")

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".fetch-{run_id}-", dir=root))
    try:
        proc = ssh.popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stderr_tail = bytearray()
        reader = threading.Thread(target=_keep_tail, args=(proc.stderr, stderr_tail), daemon=True)
        reader.start()
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
        timer.start()
        stream = _Bounded(proc.stdout, max_bytes)
        failure: str | None = None
        try:
            failure = _extract(stream, staging, max_bytes)
        except _TooBig:
            failure = f"more than {max_bytes} bytes (stopped)"
        finally:
            if failure:
                proc.kill()
            proc.stdout.close()
            code = proc.wait()
            timer.cancel()
            reader.join(10)
        stderr = bytes(stderr_tail).decode(errors="replace")
        if timed_out.is_set():
            raise ServerError(f"Fetching run {run_id} from {ssh.target} must finish within {timeout:.0f} s. "
                              "Got no end instead; it was stopped and nothing was written.", host=host, check="ssh")
        if code == 255:
            raise ssh.explain(stderr)
        if code != 0 and not failure:
            text = printable(stderr.strip()[-1500:]) or f"exit {code}"
            raise ServerError(f"The run {run_id} must exist on {ssh.target} (in ~/mlops-kit/{project}/runs). "
                              f"Got: {text}", host=host, check="command",
                              fix="mlops-kit runs list --server lists the runs there")
        if not failure and stream.count == 0:
            failure = "no tar stream (0 bytes)"
        if failure:
            raise refuse(failure)
        try:
            record = read_record(staging)
        except ArtifactError as exc:
            raise refuse(f"a run.json that is not a run record ({printable(str(exc).replace(str(staging), run_id))})"
                          ) from None
        if record.get("id") != run_id:
            raise refuse(f"a run.json of the run {printable(str(record.get('id'))[:80])!r}")
        _put_in_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract(stream: _Bounded, staging: Path, max_bytes: int) -> str | None:
    """Members of ``stream`` into ``staging``; why the stream is refused (None when it is not)."""
    members = size = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                members += 1
                size += member.size
                if members > MAX_MEMBERS:
                    return f"more than {MAX_MEMBERS} members"
                if size > max_bytes:
                    return f"members of more than {max_bytes} bytes"
                why = _refusal(member)
                if why:
                    return why
                # a folder's mode is not applied: a 000 folder would stop the files that follow it
                tar.extract(member, staging, set_attrs=not member.isdir(), filter="data")
    except tarfile.FilterError as exc:
        return f"a member tarfile's data filter refuses ({printable(str(exc)[:300])})"
    except tarfile.ReadError as exc:
        if stream.count == 0:
            return None         # no stream: the exit code and stderr tell why
        return f"a stream that is not a tar archive ({printable(str(exc)[:200])})"
    except OSError as exc:
        return f"a member that cannot be written ({printable(str(exc).replace(str(staging), '.')[:300])})"
    if members == 0:
        return "an empty tar stream"
    return None


def _keep_tail(pipe, tail: bytearray, keep: int = 4000) -> None:
    """Read ``pipe`` to its end, keeping its last ``keep`` bytes (the server's stderr: unbounded)."""
    with contextlib.suppress(OSError, ValueError):
        while block := pipe.read1(65536):
            tail += block
            del tail[:-keep]
    pipe.close()


def _put_in_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` (``--force``) is removed after."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".replaced-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.chmod(staging, 0o777 & ~_umask())         # mkdtemp made it 0700; run folders are the umask's
    os.replace(staging, target)
    if old is not None:
        with contextlib.suppress(OSError):
            old.unlink() if old.is_symlink() else shutil.rmtree(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
