"""Local port forwards (``ssh -N -L``) with explicit readiness and teardown.

``ssh -f -N -o ExitOnForwardFailure=yes`` returns only once the forward listens (or fails),
which is the readiness signal; the master is addressed through a private ControlPath and
closed with ``ssh -O exit``. Used as a context manager::

    with Tunnel(ssh, 32000) as port:     # 127.0.0.1:<port> here -> 127.0.0.1:32000 there
        ...
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import ServerError
from ._ssh import SSH


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tunnel:
    """127.0.0.1:``local_port`` here forwards to ``remote_host``:``remote_port`` as seen by the server."""

    def __init__(self, ssh: SSH, remote_port: int, *, remote_host: str = "127.0.0.1", local_port: int | None = None,
                 timeout: float = 30):
        self.ssh = ssh
        self.remote_host = remote_host
        self.remote_port = int(remote_port)
        self.local_port = local_port
        self.timeout = timeout
        self._dir: Path | None = None

    @property
    def control_path(self) -> str:
        assert self._dir is not None
        return str(self._dir / "cm")

    def open(self) -> int:
        """Start the forward; returns the local port once it listens."""
        self._dir = Path(tempfile.mkdtemp(prefix="mlops-kit-tunnel-"))
        last = ""
        for _ in range(3):  # a chosen free port can be taken before ssh binds it
            port = self.local_port or free_port()
            log = self._dir / "ssh.log"
            argv = ["ssh", *self.ssh.options(mux=False), "-f", "-N", "-o", "ExitOnForwardFailure=yes",
                    "-o", "ControlMaster=yes", "-o", f"ControlPath={self.control_path}",
                    "-L", f"127.0.0.1:{port}:{self.remote_host}:{self.remote_port}", self.ssh.destination]
            with open(log, "wb") as err:   # not a pipe: the backgrounded ssh keeps it open
                try:
                    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                          timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    self.close()
                    raise ServerError(f"The SSH tunnel to {self.ssh.target} must open within {self.timeout:.0f} s. "
                                      "Got no answer instead.", host=self.ssh.target.url, check="tunnel") from None
            last = log.read_text(errors="replace")
            if proc.returncode == 0:
                self.local_port = port
                return port
            if proc.returncode == 255 and "forward" not in last.lower():
                self.close()
                raise self.ssh.explain(last)
            if self.local_port:
                break
        self.close()
        raise ServerError(f"The SSH tunnel 127.0.0.1:{self.local_port or '?'} -> {self.remote_host}:"
                          f"{self.remote_port} on {self.ssh.target} could not be opened: {last.strip()[-500:]}",
                          host=self.ssh.target.url, check="tunnel",
                          fix="does the server allow TCP forwarding (AllowTcpForwarding yes in sshd_config)?")

    def close(self) -> None:
        if self._dir is None:
            return
        if Path(self.control_path).exists():
            subprocess.run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit", self.ssh.destination],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> int:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
