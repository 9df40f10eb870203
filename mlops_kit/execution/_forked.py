"""The manager and client of a kernel forked by the zygote (:mod:`._kernels`), as nbclient
and papermill use any kernel's."""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

from .._timing import mark
from ..errors import ZygoteError
from ._kernels import _pid_alive, _signal

if TYPE_CHECKING:
    from ._kernels import KernelZygote


class ReadyKernelClient(AsyncKernelClient):
    """A client that knows the kernel is ready as soon as it is, not 0.2 s later.

    jupyter_client's ``wait_for_ready`` drains IOPub until it has been silent for 0.2 s (a
    fifth of a second per stage). Here the proof that both channels work is exact: the
    ``kernel_info`` reply on shell, then the kernel's ``idle`` status *for that request*
    on IOPub (the last message the kernel sends about it). If IOPub missed it (the
    subscription was not connected yet), ask again."""

    async def wait_for_ready(self, timeout: float | None = None) -> None:  # type: ignore[override]
        import time
        from queue import Empty

        deadline = time.monotonic() + (timeout if timeout is not None else 120.0)
        while time.monotonic() < deadline:
            request = self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                continue
            if reply["msg_type"] != "kernel_info_reply":
                continue
            self._handle_kernel_info_reply(reply)
            while time.monotonic() < deadline:
                try:
                    message = await self.iopub_channel.get_msg(timeout=0.5)
                except Empty:
                    break  # IOPub was not subscribed in time: ask again
                if (message["msg_type"] == "status" and message["content"].get("execution_state") == "idle"
                        and message["parent_header"].get("msg_id") == request):
                    mark("cli: kernel ready (kernel_info answered)")
                    return
        raise RuntimeError(f"the kernel did not answer on both channels within {timeout} s")


class ForkedKernelManager(AsyncKernelManager):
    """A kernel manager for a kernel forked by :class:`KernelZygote` (nbclient/papermill
    use it like any other: ``has_kernel``, ``client()``, ``is_alive()``)."""

    client_class = DottedObjectName("mlops_kit.execution._forked.ReadyKernelClient")
    client_factory = Type(klass="mlops_kit.execution._forked.ReadyKernelClient")

    _pid: int | None = None
    _zygote: "KernelZygote | None" = None
    _ticket: int | None = None

    def start_forked(self, zygote: "KernelZygote", cwd: str, modules: list[str] = (),
                     folder: str | None = None) -> None:
        """Ask for the fork, after the zygote imported ``modules``; returns at once (the pid
        is read when first needed).

        The connection file names port 0 for every channel: the kernel binds free ports
        itself and writes them back, so no port can be taken by someone else between
        choosing it here and binding it there (the kernel may start seconds later)."""
        import tempfile

        from jupyter_client.connect import write_connection_file

        fd, self.connection_file = tempfile.mkstemp(prefix="mlops-kit-kernel-", suffix=".json", dir=folder)
        os.close(fd)
        os.unlink(self.connection_file)
        write_connection_file(self.connection_file, ip="127.0.0.1", key=self.session.key, transport="tcp",
                              shell_port=0, iopub_port=0, stdin_port=0, hb_port=0, control_port=0)
        _zero_ports(self.connection_file)
        self._zygote = zygote
        self._ticket = zygote.send({"op": "kernel", "connection_file": self.connection_file, "cwd": cwd,
                                    "modules": list(modules)})

    @property
    def pid(self) -> int | None:
        if self._pid is None and self._ticket is not None:
            ticket, self._ticket = self._ticket, None
            self._pid = self._zygote.reply(ticket)["pid"]
            self._await_ports()
        return self._pid

    def _await_ports(self, timeout: float = 120.0) -> None:
        """Wait until the kernel has written the ports it bound, then take them."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = json.loads(open(self.connection_file).read())
            except (OSError, ValueError):
                info = {}
            if info.get("shell_port"):
                self.load_connection_file()
                return
            if not _pid_alive(self._pid):
                raise ZygoteError(f"the kernel (pid {self._pid}) exited before it was ready")
            time.sleep(0.005)
        raise ZygoteError(f"the kernel (pid {self._pid}) did not start within {timeout:.0f} s")

    @pid.setter
    def pid(self, value: int | None) -> None:
        self._pid = value

    @property
    def has_kernel(self) -> bool:
        return self.pid is not None

    async def _async_is_alive(self) -> bool:  # type: ignore[override]
        """The liveness check clients use (``kc.is_alive()`` asks the manager's
        ``_async_is_alive``; jupyter_client's own asks a provisioner a forked kernel does not
        have, so nbclient's poll for a dead kernel stopped and a killed kernel hung the run)."""
        return self.pid is not None and _pid_alive(self.pid)

    is_alive = _async_is_alive

    async def interrupt_kernel(self) -> None:  # type: ignore[override]
        if self.pid is not None:
            _signal(self.pid, signal.SIGINT)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
        if self.pid is not None:
            _signal(self.pid, signal.SIGKILL)
            self.pid = None
        self._ticket = None
        try:
            os.unlink(self.connection_file)  # written here, not by jupyter_client: removed here
        except (OSError, TypeError):
            pass
        if getattr(self, "_control_socket", None) is not None:
            self._control_socket.close(linger=0)
            self._control_socket = None


def _zero_ports(path: str) -> None:
    """jupyter_client fills in random ports for 0: put the zeros back."""
    info = json.loads(open(path).read())
    info.update({name: 0 for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")})
    with open(path, "w") as fh:
        json.dump(info, fh)
