"""The run ledger: one ``run.json`` per run folder, written atomically.

This module is the one place that reads and writes the run records: a run's ``run.json``
(typed by :class:`mlops_kit.artifacts.RunRecord`) and the runs folder's ``champion.json``
(:class:`mlops_kit.artifacts.Champion`). Others ask it: :func:`read_record`,
:func:`recorded_params`, :func:`recorded_outputs`, :func:`champion`. The last two lookups
need no pydantic (the model server asks the second).

A run that is ``running`` holds an exclusive lock on its folder's ``.lock`` file for as
long as its process lives. A reader that finds a ``running`` run whose lock is free knows
the process is gone (killed, crashed) and marks the run ``interrupted``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import secrets
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

from . import _atomic, _paths
from .errors import ArtifactError, InvalidRunId, RunNotFound

STATUSES = ("running", "succeeded", "failed", "interrupted")
#: What a run is: the pipeline's stages, or a deployed model watched (06_monitor). A monitor
#: run takes the watched model's schema, profile and metrics as its inputs: its metrics are
#: no model's own, so it is never compared, listed by metric nor promoted.
KINDS = ("pipeline", "monitor")
MONITOR_STAGE = "monitor"


def run_kind(stages: list[str] | tuple[str, ...]) -> str:
    """The kind of a run of these stages."""
    return "monitor" if MONITOR_STAGE in stages else "pipeline"


def kind_of(record: dict[str, Any]) -> str:
    """A record's kind (records written before kinds existed are pipelines)."""
    return record.get("kind") or "pipeline"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_run_id() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


@contextlib.contextmanager
def writable(folder: Path, action: str) -> Iterator[None]:
    """Turn a PermissionError into an error that names the folder and what is needed."""
    from .errors import MlopsKitError

    try:
        yield
    except PermissionError as exc:
        raise MlopsKitError(
            f"The kit cannot {action}: {folder} must be writable by you. Got "
            f"{exc.strerror or 'permission denied'} on {exc.filename or folder} instead.",
            hint=f"make {folder} writable (chmod u+w), or set {_paths.RUNS_DIR_ENV} to a folder you can write.") from None


class RunFolder:
    """A run's folder and its record. Create with :func:`create_run`, open with :func:`open_run`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.id = self.path.name
        self._lock_fd: int | None = None

    @property
    def record_path(self) -> Path:
        return self.path / _paths.RUN_RECORD

    @property
    def artifacts(self) -> Path:
        return self.path / _paths.ARTIFACTS_SUBDIR

    @property
    def notebooks(self) -> Path:
        return self.path / _paths.NOTEBOOKS_SUBDIR

    @property
    def reports(self) -> Path:
        return self.path / _paths.REPORTS_SUBDIR

    def read(self) -> dict[str, Any]:
        return read_record(self.path)

    def write(self, record: dict[str, Any]) -> None:
        with writable(self.path, "record the run"):
            write_record(self.path, record)

    def update(self, **changes: Any) -> dict[str, Any]:
        record = self.read()
        record.update(changes)
        self.write(record)
        return record

    def update_stage(self, stage: str, **changes: Any) -> dict[str, Any]:
        record = self.read()
        record.setdefault("stages", {}).setdefault(stage, {}).update(changes)
        self.write(record)
        return record

    # --- the liveness lock ---
    def acquire(self) -> None:
        with writable(self.path, "lock the run"):
            fd = os.open(self.path / _paths.RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_alive(self) -> bool:
        """True while some process holds the run's lock."""
        lock = self.path / _paths.RUN_LOCK
        if not lock.exists():
            return False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)


# --- the records, read and written here only ------------------------------------------------

#: A record is never larger than this (a crafted run folder must not exhaust memory).
MAX_RECORD_BYTES = 16 * 1024 * 1024


def _load_json(path: Path) -> Any:
    """A record file parsed, bounded in size (no validation: no pydantic needed);
    ArtifactError naming the file when it is missing, too large or not JSON."""
    from .errors import ArtifactError

    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise ArtifactError(f"{path} must be at most {MAX_RECORD_BYTES} bytes. Got {size} bytes instead.",
                                path=path)
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path} must exist. Got no file there instead.", path=path) from None
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} must be a JSON document. Got unreadable text instead ({exc}).",
                            path=path) from None


def read_record(folder: Path) -> dict[str, Any]:
    """A run folder's ``run.json``, validated (:class:`~mlops_kit.artifacts.RunRecord`: the
    field that is wrong is named in the ArtifactError), as a dict."""
    from . import artifacts

    path = artifacts.RUN.path(folder)
    data = _load_json(path)
    artifacts.validate_document(data, artifacts.RunRecord, source=str(path))
    return data


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Validate and write a run's record atomically."""
    from . import artifacts

    artifacts.validate_document(record, artifacts.RunRecord, source=str(artifacts.RUN.path(folder)))
    _atomic.write_json(Path(folder) / _paths.RUN_RECORD, record)


def _record_part(folder: Path, key: str) -> Any:
    """One key of a folder's record (None without a record); ArtifactError when unreadable."""
    path = Path(folder) / _paths.RUN_RECORD
    if not path.is_file():
        return None
    record = _load_json(path)
    return record.get(key) if isinstance(record, dict) else None


def recorded_params(folder: Path) -> dict[str, Any] | None:
    """The parameters a run was started with (``params`` of its record); None when the folder
    has no record (the scratch run, a folder made by hand) or the record none. ArtifactError
    when the record cannot be read."""
    params = _record_part(folder, "params")
    if params is not None and not isinstance(params, dict):
        from .errors import ArtifactError

        path = Path(folder) / _paths.RUN_RECORD
        raise ArtifactError(f"{path}: params must be a mapping. Got {type(params).__name__} instead.", path=path)
    return params


def recorded_stage(folder: Path, stage: str) -> dict[str, Any] | None:
    """A stage's entry in the run's record: None when the folder has no record (a model folder,
    an image, the scratch run); empty when the record has no such stage or cannot be read
    (needs no pydantic)."""
    from .errors import ArtifactError

    if not (Path(folder) / _paths.RUN_RECORD).is_file():
        return None
    try:
        stages = _record_part(folder, "stages")
    except (ArtifactError, OSError):
        return {}
    info = stages.get(stage) if isinstance(stages, dict) else None
    return info if isinstance(info, dict) else {}


def recorded_outputs(folder: Path, stage: str) -> dict[str, str]:
    """The sha256 of each output a stage recorded in the run's record; empty when there is no
    record, no such stage or the record cannot be read (needs no pydantic)."""
    outputs = (recorded_stage(folder, stage) or {}).get("outputs")
    return {k: v for k, v in outputs.items() if isinstance(v, str)} if isinstance(outputs, dict) else {}


#: A run id is a plain folder name: the kit makes ``YYYYmmdd-HHMMSS-xxxx``; letters, digits,
#: ``-``, ``_`` and ``.`` are accepted, never a separator, nor a leading dot (``..``).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: The word that names the promoted run wherever a command takes a run id to read.
CHAMPION = "champion"


def run_path(run_id: str, *, champion: bool = False, scratch: bool = False,
             root: Path | None = None) -> Path:
    """The folder of run ``run_id``, confined to the runs folder: the one resolver of run ids.

    ``run_id`` must match :data:`RUN_ID_PATTERN`; with ``champion``, the word ``champion``
    names the promoted run; with ``scratch``, ``scratch`` (the folder notebooks opened by
    hand write to) is accepted. A run folder that is a symbolic link, or that resolves
    outside the runs folder, is refused. Raises InvalidRunId; the folder need not exist.
    """
    root = Path(root) if root is not None else _paths.runs_dir()
    if champion and run_id == CHAMPION:
        current = champion_id(root)
        if current is None:
            raise RunNotFound(CHAMPION, root)
        run_id = current
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidRunId(str(run_id), root, "letters, digits, '-', '_' and '.', no separators, "
                                              "no leading dot")
    if run_id == _paths.SCRATCH_RUN and not scratch:
        raise InvalidRunId(run_id, root, "the scratch folder of notebooks opened by hand is not a run here")
    path = root / run_id
    if path.is_symlink():
        raise InvalidRunId(run_id, root, f"{path} is a symbolic link (to {os.readlink(path)}); "
                                         "the kit does not follow run folders out of the runs folder")
    if path.exists() and path.resolve().parent != root.resolve():
        raise InvalidRunId(run_id, root, f"{path} resolves to {path.resolve()}")
    return path


def create_run(record: dict[str, Any], run_id: str | None = None) -> RunFolder:
    """Make a new run folder (never an existing one), lock it and write its first record."""
    root = _paths.runs_dir()
    with writable(root, "create a run folder"):
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            candidate = run_id or new_run_id()
            try:
                (root / candidate).mkdir()
            except FileExistsError:
                if run_id:
                    raise
                continue
            break
        else:  # pragma: no cover - 20 collisions of a 16-bit suffix within a second
            raise RuntimeError("could not allocate a run id")
    run = RunFolder(root / candidate)
    with writable(run.path, "create the run's notebooks/, reports/ and artifacts/"):
        for sub in (run.notebooks, run.reports, run.artifacts):
            sub.mkdir()
    run.acquire()
    run.write({"id": run.id, "created": now(), "status": "running", "pid": os.getpid(),
               "host": socket.gethostname(), **record})
    return run


def open_run(run_id: str, *, champion: bool = False) -> RunFolder:
    """The run ``run_id`` (resolved by :func:`run_path`); RunNotFound without a record."""
    root = _paths.runs_dir()
    path = run_path(run_id, champion=champion, root=root)
    if not (path / _paths.RUN_RECORD).is_file():
        raise RunNotFound(run_id, root)
    return RunFolder(path)


def read_run(run_id: str, *, champion: bool = True) -> dict[str, Any]:
    """A run's record (settled); ``champion`` names the promoted run."""
    record = _settle(open_run(run_id, champion=champion))
    record["champion"] = record["id"] == champion_id()
    return record


def _settle(run: RunFolder) -> dict[str, Any]:
    """The record, with a ``running`` run whose process is gone marked ``interrupted``."""
    record = run.read()
    record["id"] = run.id  # the folder's name, whatever the file says
    if record.get("status") == "running" and not run.is_alive():
        record["status"] = "interrupted"
        record["finished"] = record.get("finished") or now()
        for stage in record.get("stages", {}).values():
            if stage.get("status") == "running":
                stage["status"] = "interrupted"
        run.write(record)
    return record


def iter_runs() -> Iterator[RunFolder]:
    root = _paths.runs_dir()
    if not root.is_dir():
        return
    for path in sorted(root.iterdir(), reverse=True):
        # a symbolic link is not a run of this folder (gc and rm would follow it elsewhere)
        if (path.name != _paths.SCRATCH_RUN and RUN_ID_PATTERN.fullmatch(path.name) and not path.is_symlink()
                and (path / _paths.RUN_RECORD).is_file()):
            yield RunFolder(path)


def list_runs() -> list[dict[str, Any]]:
    """Every run's record, newest first; the champion's has ``"champion": True``."""
    records = []
    current = champion_id()
    for run in iter_runs():
        try:
            record = _settle(run)
        except (ArtifactError, OSError):
            continue  # a folder being created right now (or a record that is not one)
        record["champion"] = record["id"] == current
        records.append(record)
    return records


def read_metrics(record: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (validated through the catalog), or None when it has none or it
    cannot be read."""
    from . import artifacts
    from .errors import ArtifactError

    if kind_of(record) == "monitor":
        return None  # the watched model's metrics, taken as an input: not this run's
    try:
        metrics = artifacts.METRICS.load_if_present(run_path(record["id"]))
    except (ArtifactError, RunNotFound):
        return None
    return metrics.to_json() if metrics else None


def git_state(folder: Path | None = None, *, wait: float = 1.0) -> dict[str, Any] | None:
    """The commit of the project checkout and whether it has uncommitted changes.

    The commit is always recorded. ``dirty`` is ``None`` when ``git status`` takes longer than
    ``wait`` seconds: with a clean filter configured (nbstripout), the first status after a
    clone runs the filter over every notebook. That git is left to finish in the background,
    so it refreshes the index and the next run gets an answer at once; a run never stalls.
    """
    folder = folder or _paths.project_dir()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    state: dict[str, Any] = {"commit": commit.stdout.strip(), "dirty": None}
    try:
        status = subprocess.Popen(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  start_new_session=True)
    except OSError:
        return state
    try:
        out, _ = status.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        threading.Thread(target=status.communicate, name="git-status", daemon=True).start()
        return state
    if status.returncode == 0:
        state["dirty"] = bool(out.strip())
    return state


# --- the champion --------------------------------------------------------------------------

CHAMPION_FILE = _paths.CHAMPION_RECORD


def _champion_path(root: Path | None = None) -> Path:
    return (root if root is not None else _paths.runs_dir()) / CHAMPION_FILE


def champion(root: Path | None = None) -> dict[str, Any] | None:
    """The promoted run: ``{"run": id, "who", "when", "why", "history": [...]}``, or None
    (also when ``champion.json`` is unreadable or not a :class:`~mlops_kit.artifacts.Champion`)."""
    from . import artifacts

    path = _champion_path(root)
    try:
        data = _load_json(path)
        artifacts.validate_document(data, artifacts.Champion, source=str(path))
    except (OSError, ArtifactError):
        return None
    return data


def champion_id(root: Path | None = None) -> str | None:
    current = champion(root)
    return current["run"] if current else None


def run_dir_or_champion(run_id: str | None) -> Path:
    """The folder of the named run, else of the champion (what build and deploy take)."""
    from .errors import MlopsKitError

    run_id = run_id or champion_id()
    if run_id is None:
        raise MlopsKitError("No RUN_ID given and no champion promoted.",
                            hint="name a run, or promote one: `mlops-kit runs promote RUN_ID`.")
    path = run_path(run_id, champion=True, scratch=True)
    if not path.is_dir():  # a folder of artifacts without a record (made by hand) is fine
        raise RunNotFound(run_id, _paths.runs_dir())
    return path


def promote(run_id: str, *, who: str | None = None, why: str = "") -> dict[str, Any]:
    """Make a succeeded run the champion; evaluation compares against it, and packaging and
    deploy take it when no run is named. The previous champion is kept in the history."""
    from .errors import MlopsKitError

    record = read_run(run_id, champion=False)
    if kind_of(record) == "monitor":
        raise MlopsKitError(f"Run {run_id} must be a pipeline run to be promoted. Got a monitor run instead "
                            "(it watched a model; promote the run that trained it).")
    if record["status"] != "succeeded":
        raise MlopsKitError(f"Run {run_id} must have succeeded to be promoted. Got status "
                            f"{record['status']!r} instead.")
    if not (record.get("metrics") or {}).get("gate_passed", False):
        raise MlopsKitError(f"Run {run_id} has no passed quality gate (no evaluate stage, or it failed): "
                            "it cannot be the champion.")
    previous = champion()
    entry = {"run": run_id, "who": who or _whoami(), "when": now(), "why": why}
    history = ([*previous.get("history", []), {k: previous[k] for k in ("run", "who", "when", "why")}]
               if previous else [])
    from . import artifacts

    artifacts.CHAMPION.save(_champion_path().parent, {**entry, "history": history})
    return {**entry, "history": history}


def _whoami() -> str:
    import getpass

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return socket.gethostname()


# --- sweeps ------------------------------------------------------------------------------------

class SweepFolder(RunFolder):
    """A sweep's folder (``<runs>/sweeps/<id>/``): its record (``sweep.json``, a
    :class:`~mlops_kit.artifacts.SweepRecord`) and its report. Its trials are runs of the
    ledger, each naming the sweep in its record (``sweep: {id, trial}``). The liveness lock
    is a run's. Its trials are run from threads: :meth:`update` and :meth:`update_trial`
    are serialised."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._lock = threading.Lock()

    @property
    def record_path(self) -> Path:
        return self.path / _paths.SWEEP_RECORD

    def read(self) -> dict[str, Any]:
        from . import artifacts

        data = _load_json(self.record_path)
        artifacts.validate_document(data, artifacts.SweepRecord, source=str(self.record_path))
        return data

    def write(self, record: dict[str, Any]) -> None:
        from . import artifacts

        with writable(self.path, "record the sweep"):
            artifacts.SWEEP.save(self.path, record)

    def update(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            return super().update(**changes)

    def update_trial(self, index: int, **changes: Any) -> dict[str, Any]:
        with self._lock:
            record = self.read()
            record["trials"][index].update(changes)
            self.write(record)
            return record


def create_sweep(record: dict[str, Any]) -> SweepFolder:
    """Make a new sweep folder, lock it and write its first record (``running``)."""
    root = _paths.sweeps_dir()
    with writable(root.parent, "create a sweep folder"):
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            candidate = new_run_id()
            try:
                (root / candidate).mkdir()
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 20 collisions of a 16-bit suffix within a second
            raise RuntimeError("could not allocate a sweep id")
    sweep = SweepFolder(root / candidate)
    sweep.acquire()
    sweep.write({"id": sweep.id, "created": now(), "status": "running", "pid": os.getpid(),
                 "host": socket.gethostname(), **record})
    return sweep


def open_sweep(sweep_id: str | None = None) -> SweepFolder:
    """The sweep ``sweep_id`` (a folder name, confined like a run id), else the newest;
    RunNotFound when there is none."""
    from .errors import MlopsKitError

    root = _paths.sweeps_dir()
    if sweep_id is None:
        newest = next(iter(sorted((p for p in root.iterdir() if (p / _paths.SWEEP_RECORD).is_file()
                                   and not p.is_symlink()), reverse=True)), None) if root.is_dir() else None
        if newest is None:
            raise MlopsKitError(f"No sweep in {root} yet.", hint="`mlops-kit sweep -p FILE --grid KEY=[...]` makes one.")
        return SweepFolder(newest)
    path = run_path(sweep_id, root=root)
    if not (path / _paths.SWEEP_RECORD).is_file():
        raise MlopsKitError(f"No sweep {sweep_id!r} in {root}.", hint="`mlops-kit sweep show` shows the newest.")
    return SweepFolder(path)


def read_sweep(sweep_id: str | None = None) -> dict[str, Any]:
    """A sweep's record (default: the newest), a ``running`` one whose process is gone marked
    ``interrupted`` (and its running trials)."""
    sweep = open_sweep(sweep_id)
    record = sweep.read()
    if record["status"] == "running" and not sweep.is_alive():
        for trial in record["trials"]:
            if trial["status"] == "running":
                trial["status"] = "interrupted"
        record.update(status="interrupted", finished=record.get("finished") or now())
        sweep.write(record)
    return record


# --- removing runs -------------------------------------------------------------------------

def remove_run(run_id: str, *, force: bool = False) -> None:
    """Delete a run's folder; never a run still going, nor the champion unless ``force``."""
    from .errors import MlopsKitError

    run = open_run(run_id)
    if run.is_alive():
        raise MlopsKitError(f"Run {run_id} is still running; it is not removed.")
    if champion_id() == run_id and not force:
        raise MlopsKitError(f"Run {run_id} is the champion; it is not removed.",
                            hint="promote another run first, or pass --force.")
    _remove_folder(run.path)


def collect_garbage(keep: int, *, dry_run: bool = False) -> list[str]:
    """Remove all runs but the newest ``keep``, the champion and any still running."""
    keep_ids = {r["id"] for r in list_runs()[:keep]}
    keep_ids.add(champion_id() or "")
    removed = []
    for run in list(iter_runs()):
        try:
            if run.id in keep_ids or run.is_alive():
                continue
        except FileNotFoundError:
            continue  # removed meanwhile (another gc, `runs rm`)
        removed.append(run.id)
        if not dry_run:
            _remove_folder(run.path)
    return removed


def _remove_folder(path: Path) -> None:
    """Delete a run folder; one removed meanwhile is fine, one we may not delete is named."""
    import shutil

    from .errors import MlopsKitError

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        raise MlopsKitError(f"Run folder {path} cannot be removed: {exc.strerror} ({exc.filename}).",
                            hint=f"removing a run needs write permission on {path.parent} and {path}.") from None
