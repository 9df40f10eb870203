"""containerd: import an image, check its digest, run and stop containers (``ctr``).

Which containerd: ``package.containerd_socket`` when set (``ctr -a SOCKET``), else MicroK8s's
(``microk8s ctr``) when it is installed, else the system socket when it exists. Images go
into namespace ``k8s.io``, the one the kubelet (and MicroK8s) uses.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from ..errors import ContainerdError
from ._runner import DEFAULT_RUNNER, Runner, tail

SYSTEM_SOCKET = "/run/containerd/containerd.sock"


def _hint(output: str, socket: str | None, via: str) -> str | None:
    low = output.lower()
    if "permission denied" in low or "insufficient permissions" in low:
        if via == "microk8s":
            return ("your user may not use MicroK8s: `sudo usermod -a -G microk8s $USER`, then log in again "
                    "(or `newgrp microk8s`), or run with sudo.")
        return (f"your user may not open {socket}: add it to the group that owns the socket (`ls -l {socket}`; "
                "`sudo usermod -a -G <group> $USER`, then log in again), or run with sudo.")
    if any(s in low for s in ("no such file", "connection refused", "failed to dial", "deadline exceeded",
                              "connect: ")):
        return (f"is containerd running? No containerd answers at {socket}. Set package.containerd_socket to "
                "the socket of a running containerd (MicroK8s: /var/snap/microk8s/common/run/containerd.sock).")
    return None


class Containerd:
    """One containerd and namespace, through ``ctr``."""

    def __init__(self, socket: str | os.PathLike | None = None, namespace: str = "k8s.io", *,
                 runner: Runner = DEFAULT_RUNNER):
        self.namespace = namespace
        self.runner = runner
        self.socket = str(socket) if socket else None
        self.via = "ctr"
        if self.socket is None:
            if runner.which("microk8s"):
                self.via = "microk8s"
            elif os.path.exists(SYSTEM_SOCKET):
                self.socket = SYSTEM_SOCKET

    @property
    def available(self) -> bool:
        return self.via == "microk8s" or (self.socket is not None and self.runner.which("ctr") is not None)

    def describe(self) -> str:
        where = "MicroK8s" if self.via == "microk8s" else self.socket
        return f"containerd at {where}, namespace {self.namespace}"

    def command(self, *args: str) -> list[str]:
        if self.via == "microk8s":
            return ["microk8s", "ctr", "--namespace", self.namespace, *args]
        if self.socket is None:
            raise ContainerdError(
                "No containerd found: package.containerd_socket must name a containerd socket. Got none "
                f"(no MicroK8s, no {SYSTEM_SOCKET}) instead.",
                hint="install MicroK8s (`snap install microk8s --classic`) or containerd, or set "
                     "package.containerd_socket; `mlops-kit build RUN --no-import` builds without importing.")
        if self.runner.which("ctr") is None:
            raise ContainerdError("The command `ctr` must be installed to talk to containerd. Got no `ctr` on PATH "
                                  "instead.", hint="apt-get install containerd")
        return ["ctr", "-a", self.socket, "--namespace", self.namespace, *args]

    def ctr(self, *args: str, step: str, check: bool = True, stdin=None, timeout: float = 120):
        argv = self.command(*args)
        proc = self.runner.run(argv, step=step, check=False, stdin=stdin, timeout=timeout,
                               error=lambda m, **k: ContainerdError(m, **k))
        if check and proc.returncode != 0:
            output = tail(proc.stderr) or tail(proc.stdout)
            raise ContainerdError(f"{step} failed ({self.describe()}): {output or 'exit ' + str(proc.returncode)}",
                                  command=argv, output=output, hint=_hint(output, self.socket, self.via))
        return proc

    def check(self) -> None:
        """Raise with a plain hint when containerd cannot be reached."""
        self.ctr("version", step="connecting to containerd", timeout=20)

    # --- images ---------------------------------------------------------------------------------
    def import_archive(self, write_archive, *, step: str = "ctr images import") -> None:
        """Import an OCI/docker archive produced by ``write_archive(fileobj)`` (streamed, no temp file)."""
        argv = self.command("images", "import", "-")
        proc = self.runner.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        broken = None
        try:
            write_archive(proc.stdin)
        except BrokenPipeError as exc:
            broken = exc
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.stdin = None
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or broken:
            output = tail(err) or tail(out)
            raise ContainerdError(f"Importing the image into {self.describe()} was refused: {output}",
                                  command=argv, output=output, hint=_hint(output, self.socket, self.via))

    def image_digest(self, ref: str) -> str | None:
        proc = self.ctr("images", "ls", f"name=={ref}", step="ctr images ls")
        for line in proc.stdout.decode().splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == ref:
                return parts[2]
        return None

    def remove_image(self, ref: str) -> None:
        self.ctr("images", "rm", ref, step="ctr images rm", check=False)

    # --- containers -------------------------------------------------------------------------------
    def run(self, ref: str, name: str, *, env: dict[str, str], log_file: Path, read_only: bool = True,
            net_host: bool = True, command: list[str] | None = None,
            mounts: list[tuple[str, str]] = ()) -> None:
        """Start container ``name`` of image ``ref``; ``mounts``: (host folder, container path)
        bind mounts, writable (the root file system stays read-only)."""
        args = ["run", "-d", "--log-uri", f"file://{Path(log_file).resolve()}"]
        for source, target in mounts:
            args += ["--mount", f"type=bind,src={source},dst={target},options=rbind:rw"]
        if net_host:
            args.append("--net-host")
        if read_only:
            args.append("--read-only")
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        self.ctr(*args, ref, name, *(command or []), step=f"starting container {name}")

    def task_status(self, name: str) -> str | None:
        """RUNNING, STOPPED, ... or None when the container has no task."""
        proc = self.ctr("tasks", "ls", step="ctr tasks ls", check=False)
        for line in proc.stdout.decode().splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == name:
                return parts[-1]
        return None

    def containers(self) -> list[str]:
        proc = self.ctr("containers", "ls", "-q", step="ctr containers ls", check=False)
        return proc.stdout.decode().split()

    def stop(self, name: str, *, grace: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL if needed; then remove the task and the container."""
        if self.task_status(name) == "RUNNING":
            self.ctr("tasks", "kill", "-s", "SIGTERM", name, step=f"stopping {name}", check=False)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.task_status(name) == "RUNNING":
                time.sleep(0.1)
            if self.task_status(name) == "RUNNING":
                self.ctr("tasks", "kill", "-s", "SIGKILL", name, step=f"killing {name}", check=False)
                time.sleep(0.2)
        self.ctr("tasks", "rm", "-f", name, step=f"removing task {name}", check=False)
        self.ctr("containers", "rm", name, step=f"removing container {name}", check=False)
