"""The kit's exceptions.

Every error a user can cause is a :class:`MlopsKitError`: its message says what was
expected and what was found, and its fields carry the same facts for programs (the CLI
prints the message without a traceback; panels show it).
"""

from __future__ import annotations

from pathlib import Path


class MlopsKitError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the whole explanation."""

    def __init__(self, message: str, *, hint: str | None = None):
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

    def __init__(self, message: str, *, source: str | None = None, column: str | None = None,
                 hint: str | None = None):
        self.source = source
        self.column = column
        super().__init__(message, hint=hint)


class ArtifactError(MlopsKitError):
    """An artifact is missing, tampered with or of the wrong kind."""

    def __init__(self, message: str, *, path: Path | str | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(message, hint=hint)


class RunNotFound(MlopsKitError):
    def __init__(self, run_id: str, runs_dir: Path):
        self.run_id = run_id
        super().__init__(f"No run {run_id!r} in {runs_dir}.", hint="`mlops-kit runs list` shows the runs.")


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
