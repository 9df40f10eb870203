"""The one boundary to the outside world: running commands.

Every external program (mmdebstrap, umoci, pip, ctr, buildah, ...) runs through a
:class:`Runner`; unit tests pass a fake one, the main tests a real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import IO, Callable, Mapping, Sequence

from ..errors import BuildError, MlopsKitError

Log = Callable[[str], None]


def tail(text: str | bytes | None, lines: int = 30) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Runner:
    """Runs commands; raises ``error`` (default :class:`BuildError`) when one fails."""

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def run(self, argv: Sequence[str], *, step: str, input: bytes | None = None,
            stdin: IO[bytes] | None = None, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike | None = None, timeout: float | None = None, check: bool = True,
            error: Callable[..., MlopsKitError] | None = None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        full_env = None if env is None else {**os.environ, **env}
        try:
            proc = subprocess.run(argv, input=input, stdin=stdin if input is None else None,
                                  capture_output=True, env=full_env, cwd=cwd, timeout=timeout)
        except FileNotFoundError as exc:
            raise (error or _build_error)(f"{step}: the command {argv[0]!r} is not installed.",
                                          command=argv, output=str(exc)) from None
        except subprocess.TimeoutExpired as exc:
            raise (error or _build_error)(f"{step}: {' '.join(argv[:3])} ... did not finish in {timeout} s.",
                                          command=argv, output=tail(exc.stderr)) from None
        if check and proc.returncode != 0:
            output = tail(proc.stderr) or tail(proc.stdout)
            raise (error or _build_error)(
                f"{step} failed: `{' '.join(argv[:4])}{' ...' if len(argv) > 4 else ''}` exited with "
                f"{proc.returncode}:\n{output}", command=argv, output=output)
        return proc

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen([str(a) for a in argv], **kwargs)


def _build_error(message: str, *, command=None, output=None) -> BuildError:
    return BuildError(message, command=command, output=output)


DEFAULT_RUNNER = Runner()
