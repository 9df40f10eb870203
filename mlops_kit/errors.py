"""The kit's exceptions.

Every error a user can cause is a :class:`MlopsKitError`: its message says what was
expected and what was found, and its fields carry the same facts for programs (the CLI
prints the message without a traceback; panels show it).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any


class MlopsKitError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the whole explanation.

    A subclass lists the facts it carries in ``fields``; the constructor takes each as a
    keyword and keeps it as an attribute (``None`` when not given), so most subclasses need
    no constructor of their own.
    """

    #: the keyword facts this kind of error carries, each an attribute of the same name
    fields: tuple[str, ...] = ()

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any):
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise TypeError(f"{type(self).__name__} takes the fields {self.fields}. Got {unknown[0]!r} instead.")
        for name in self.fields:
            setattr(self, name, fields.get(name))
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\nHint: {hint}")


class ParameterError(MlopsKitError):
    """A parameter file or ``--set`` override is wrong.

    ``problems`` lists each ``(file, key, expected, found)``; the message has one line each.
    """

    def __init__(self, problems: list["ParameterProblem"]):
        self.problems = problems
        lines = [p.describe() for p in problems]
        noun = "problem" if len(lines) == 1 else "problems"
        super().__init__(f"{len(lines)} parameter {noun}:\n" + "\n".join(f"  - {line}" for line in lines))


class ParameterProblem:
    __slots__ = ("file", "key", "expected", "found", "suggestion")

    def __init__(self, file: str, key: str, expected: str, found: str, suggestion: str | None = None):
        self.file, self.key, self.expected, self.found, self.suggestion = file, key, expected, found, suggestion

    def describe(self) -> str:
        text = f"{self.file}: {self.key}: expected {self.expected}; found {self.found}."
        if self.suggestion:
            text += f" Did you mean {self.suggestion!r}?"
        return text

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ParameterProblem({self.describe()!r})"


class DataError(MlopsKitError):
    """The data set cannot be used: names the source, the column and what is wrong."""

    fields = ("source", "column")


class ArtifactError(MlopsKitError):
    """An artifact is missing, tampered with or of the wrong kind (``path`` says which)."""

    fields = ("path",)


class RunNotFound(MlopsKitError):
    def __init__(self, run_id: str, runs_dir: Path):
        self.run_id = run_id
        super().__init__(f"No run {run_id!r} in {runs_dir}.", hint="`mlops-kit runs list` shows the runs.")


class InvalidRunId(RunNotFound):
    """A run id that is not the name of a folder inside the runs folder (``..``, a path, a
    symbolic link leading elsewhere): refused before anything is read or written."""

    def __init__(self, run_id: str, runs_dir: Path, reason: str):
        self.run_id = run_id
        self.reason = reason
        shown = run_id if len(str(run_id)) <= 80 else str(run_id)[:80] + "..."
        MlopsKitError.__init__(
            self, f"A run id must name a run folder inside {runs_dir} ({reason}). Got {shown!r} instead.",
            hint="`mlops-kit runs list` shows the runs; `champion` names the promoted one.")


class RunNotResumable(MlopsKitError):
    def __init__(self, run_id: str, reason: str):
        self.run_id, self.reason = run_id, reason
        super().__init__(f"Run {run_id} cannot be resumed: {reason}.")


class StageFailed(MlopsKitError):
    """A stage notebook raised. The executed notebook is kept with the error in it."""

    def __init__(self, stage: str, *, notebook: Path, cell_index: int | None, exception: str,
                 detail: str):
        self.stage = stage
        self.notebook = Path(notebook)
        self.cell_index = cell_index
        self.exception = exception
        self.detail = detail
        where = f" in cell {cell_index}" if cell_index is not None else ""
        super().__init__(
            f"Stage {stage!r} failed{where}: {exception}: {detail}\n"
            f"The executed notebook, with the error, is {notebook}"
        )


class GateFailed(MlopsKitError):
    """The model did not pass ``evaluate.gate``; it will not be packaged."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("The model failed the quality gate: " + "; ".join(failures) + ".")


class BuildError(MlopsKitError):
    """The container image could not be built (04_package): names the step, the command and
    the end of its output."""

    fields = ("step", "command", "output")


class BuilderNotFound(BuildError):
    """``package.builder`` names no builder, or none of them works on this machine."""


class VersionMismatch(BuildError):
    """The model was trained with other library versions than the image would hold."""

    def __init__(self, mismatches: dict[str, tuple[str, str]], *, hint: str | None = None):
        self.mismatches = mismatches
        parts = [f"{name} must be {trained} (the version the model was trained with). Got {image} instead"
                 for name, (trained, image) in sorted(mismatches.items())]
        super().__init__("The image would not match the model: " + "; ".join(parts) + ".",
                         step="versions", hint=hint)


class ContainerdError(MlopsKitError):
    """containerd refused or could not be reached (socket, permission, MicroK8s)."""

    fields = ("command", "output")


class DeployError(MlopsKitError):
    """A deployment did not become ready or answered its smoke test wrongly. ``log`` holds the
    end of the new server's log; the previous deployment keeps serving."""

    fields = ("log", "status")

    def __init__(self, message: str, *, log: str | None = None, hint: str | None = None, **fields: Any):
        if log:
            message = f"{message}\n--- server log (last lines) ---\n{log.rstrip()}"
        super().__init__(message, hint=hint, log=log, **fields)


class FailureReason(str, enum.Enum):
    """Why a deployment failed, as a type: the API server's answers, a pod's waiting reasons
    the kit explains, and the kit's own checks. A ``str`` enum, so it prints as the word
    Kubernetes uses; a reason the kit does not know is ``OTHER`` (its word kept in
    ``K8sDeployError.raw_reason``)."""

    UNREACHABLE = "Unreachable"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    NOT_FOUND = "NotFound"
    CONFLICT = "Conflict"
    INVALID = "Invalid"
    NO_KUBECONFIG = "NoKubeconfig"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    INVALID_IMAGE_NAME = "InvalidImageName"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    TIMEOUT = "Timeout"
    SMOKE_TEST_FAILED = "SmokeTestFailed"
    OOM_KILLED = "OOMKilled"                    # a stage's Job: over its memory limit
    EVICTED = "Evicted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"      # a stage's Job: over execution.timeout
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    OTHER = "Other"

    @classmethod
    def parse(cls, value: Any) -> "FailureReason":
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER

    def __str__(self) -> str:
        return self.value


class K8sDeployError(DeployError):
    """A deployment to Kubernetes (MicroK8s) failed or cannot start.

    ``reason`` is a :class:`FailureReason` (``Unreachable``, ``Forbidden``, ``Conflict``,
    ``NotFound``, ``Invalid``, ``ImagePullBackOff``, ``ErrImageNeverPull``, ``CrashLoopBackOff``,
    ``ProgressDeadlineExceeded``, ``Timeout``, ``SmokeTestFailed``, ...); ``kind``/``namespace``/
    ``name`` say which object; ``status`` is the HTTP status when the API server answered;
    ``logs`` holds a container's last log lines; ``rolled_back_to`` the release restored.
    """

    fields = DeployError.fields + ("kind", "namespace", "name", "logs", "rolled_back_to")

    def __init__(self, message: str, *, reason: str, hint: str | None = None, **fields: Any):
        self.reason = FailureReason.parse(reason)
        self.raw_reason = str(reason)
        super().__init__(message, hint=hint, **fields)  # ``logs`` stays a field, out of the message
        self.log = self.logs


class ManifestError(K8sDeployError):
    """Rendered manifests break the Kubernetes schema or a rule the schema cannot express.

    ``problems`` lists each ``(source, kind/name, field, message)``; one line each in the message.
    """

    def __init__(self, problems: list[tuple[str, str, str, str]], *, version: str):
        self.problems = problems
        self.version = version
        lines = [f"{src}: {obj}: {field}: {msg}" for src, obj, field, msg in problems]
        noun = "problem" if len(lines) == 1 else "problems"
        super().__init__(f"{len(lines)} manifest {noun} (Kubernetes {version}):\n"
                         + "\n".join(f"  - {line}" for line in lines), reason="Invalid")


class RunCancelled(MlopsKitError):
    """The run was cancelled (Ctrl-C, SIGTERM, a panel's Cancel) before or during ``stage``."""

    def __init__(self, run_id: str, stage: str | None):
        self.run_id, self.stage = run_id, stage
        super().__init__(f"Run {run_id} was cancelled" + (f" before stage {stage!r}." if stage else "."))


class ZygoteError(RuntimeError):
    """The process that forks the stage kernels stopped or a kernel did not start."""


class InvalidRequest(Exception):
    """A client's mistake: answered with ``status`` (4xx) and :meth:`body`."""

    def __init__(self, message: str, *, status: int = 422, field: str | None = None,
                 row: int | None = None, expected: str | None = None, got: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.row = row
        self.expected = expected
        self.got = got

    def body(self) -> dict[str, Any]:
        """``{"error": message, "detail": {...}}``: ``error`` is the Open Inference Protocol's
        error string; ``detail`` carries the same facts for programs."""
        return {"error": self.message,
                "detail": {"field": self.field, "row": self.row, "expected": self.expected, "got": self.got}}


class CiTemplateError(MlopsKitError):
    """``mlops-kit ci init`` cannot write the CI file: names the file or the option that is wrong."""


class ServerError(MlopsKitError):
    """The team's server (``server.host``, over SSH) refused or lacks something.

    ``host`` is ``ssh://USER@HOST:PORT``; ``check`` names what failed (``ssh``, ``host-key``,
    ``auth``, ``microk8s``, ``group``, ``containerd``, ``disk``, ``python``, ``lock``, ...);
    ``fix`` is the command or step that fixes it (also the message's hint).
    """

    fields = ("host", "check", "fix", "output")

    def __init__(self, message: str, **fields: Any):
        super().__init__(message, hint=fields.get("fix"), **fields)


class UnsafeKubeconfig(K8sDeployError):
    """A kubeconfig from another machine (``microk8s config``, here or on the team's server) asks
    for more than a certificate or a token: a credential plugin (``exec``, ``auth-provider``, run
    on THIS machine by the Kubernetes client), a file of this machine, a proxy, more than one
    cluster. Refused before any client is built. ``field`` is the path of the refused field
    (``users[0].user.exec``), ``source`` where the kubeconfig came from."""

    fields = K8sDeployError.fields + ("field", "source")

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any):
        super().__init__(message, reason="NoKubeconfig", hint=hint, **fields)
