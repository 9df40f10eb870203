"""The transport to the team's server: the OpenSSH client, key authentication only.

Every call runs ``ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=FILE``
(never a password prompt, never a host key accepted on the way). A failure becomes a
:class:`~mlops_kit.errors.ServerError` that says what happened and how to fix it: an unknown or
changed host key names its SHA256 fingerprint and the command that trusts it.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._terminal import printable
from ..errors import ServerError

_HOST_RE = re.compile(r"^ssh://(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,31})@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
                      r"(?::(?P<port>[0-9]{1,5}))?/?\Z")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
MAX_OUTPUT_BYTES = 16 << 20     # what SSH.run reads of a command's output (stdout and stderr together)


@dataclass(frozen=True)
class Target:
    """``ssh://USER@HOST[:PORT]``, parsed."""

    user: str
    host: str
    port: int = 22

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host (``[host]:port`` unless the port is 22)."""
        host = self.host.strip("[]")
        return host if self.port == 22 else f"[{host}]:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_target(text: str) -> Target:
    """``ssh://USER@HOST[:PORT]`` -> :class:`Target`; anything else is a ServerError."""
    match = _HOST_RE.match(str(text or "").strip())
    port = int(match["port"]) if match and match["port"] else 22
    if not match or not 1 <= port <= 65535:
        raise ServerError(f"The server must be given as ssh://USER@HOST[:PORT]. Got {text!r} instead.",
                          check="host", fix="e.g. ssh://alice@gpu-box.example.org or ssh://alice@10.0.0.5:2222")
    return Target(match["user"], match["host"], port)


def ssh_option_path(path: str) -> str:
    """A file path as the value of an ssh ``-o`` option: ssh splits such values at spaces (several
    known_hosts files) and expands ``%`` tokens, so the path is quoted and escaped for ssh."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"' if escaped != path or any(c.isspace() for c in path) else path


def validate_target(text: str) -> str:
    """For the parameter validator: the text when it parses, else ValueError (expected; found)."""
    try:
        parse_target(text)
    except ServerError:
        raise ValueError(f"ssh://USER@HOST[:PORT]; found {text!r}") from None
    return text


class SSH:
    """Commands on one server, through the OpenSSH client."""

    def __init__(self, target: Target | str, *, identity_file: str | os.PathLike | None = None,
                 known_hosts: str | os.PathLike | None = None, connect_timeout: int = 15):
        self.target = parse_target(target) if isinstance(target, str) else target
        self.identity_file = str(Path(identity_file).expanduser()) if identity_file else None
        self.known_hosts = str(Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser())
        self.connect_timeout = connect_timeout
        self.control_path: str | None = None      # set inside multiplexed()
        if self.identity_file and not Path(self.identity_file).is_file():
            raise ServerError(f"server.identity_file must be an existing private key. Got no file at "
                              f"{self.identity_file} instead.", host=self.target.url, check="auth",
                              fix=f"ssh-keygen -t ed25519 -f {shlex.quote(self.identity_file)}")

    @classmethod
    def from_params(cls, server) -> SSH:
        """From the ``server`` parameter section (``host``, ``identity_file``, ``known_hosts``)."""
        if not server.host:
            raise ServerError("server.host must be set (ssh://USER@HOST[:PORT]). Got none instead.", check="host")
        return cls(server.host, identity_file=server.identity_file, known_hosts=server.known_hosts)

    # --- the ssh command line ---------------------------------------------------------------
    def options(self, *, mux: bool = True) -> list[str]:
        """The client options; inside :meth:`multiplexed` (and ``mux``) they reuse its connection."""
        opts = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_path}"] if mux and self.control_path else []
        opts += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={ssh_option_path(self.known_hosts)}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-o", "LogLevel=ERROR",
                "-o", "ServerAliveInterval=15", "-p", str(self.target.port)]
        if self.identity_file:
            opts += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        return opts

    @property
    def destination(self) -> str:
        return f"{self.target.user}@{self.target.host.strip('[]')}"

    def argv(self, command: str | Sequence[str], *, extra: Sequence[str] = ()) -> list[str]:
        """``ssh ... USER@HOST -- COMMAND``; a list is quoted for the remote shell."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return ["ssh", *self.options(), *extra, self.destination, "--", remote]

    @contextlib.contextmanager
    def multiplexed(self):
        """One SSH connection for every command inside the ``with`` (a ControlMaster started with
        ``-f -N``: ready when it returns; closed with ``-O exit``)."""
        if self.control_path is not None:
            yield self
            return
        folder = Path(tempfile.mkdtemp(prefix="mlops-kit-ssh-"))
        control = str(folder / "cm")
        argv = ["ssh", *self.options(mux=False), "-f", "-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
                self.destination]
        try:
            with open(folder / "ssh.log", "wb") as err:     # not a pipe: the backgrounded master keeps it open
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.connect_timeout + 30)
            if proc.returncode != 0:
                raise self.explain((folder / "ssh.log").read_text(errors="replace"))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.control_path = control
        try:
            yield self
        finally:
            self.control_path = None
            subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", self.destination],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
            shutil.rmtree(folder, ignore_errors=True)

    # --- running ---------------------------------------------------------------------------
    def run(self, command: str | Sequence[str], *, input: bytes | str | None = None, timeout: float = 120,
            check: bool = True, step: str | None = None,
            max_bytes: int = MAX_OUTPUT_BYTES) -> subprocess.CompletedProcess:
        """Run ``command`` on the server; output as text (at most ``max_bytes``: the server may be
        hostile). SSH failures (exit 255) always raise; the command's own failure raises when ``check``."""
        data = input.encode() if isinstance(input, str) else input
        what = step or "The command"
        try:
            proc = _bounded_run(self.argv(command), data, timeout=timeout, max_bytes=max_bytes)
        except subprocess.TimeoutExpired:
            raise ServerError(f"{what} on {self.target} must finish within {timeout:.0f} s. Got "
                              "no answer instead.", host=self.target.url, check="ssh",
                              fix="is the server overloaded or the network down?") from None
        except _TooMuchOutput:
            raise ServerError(f"{what} on {self.target} must print at most {max_bytes} bytes. Got more instead; "
                              "it was stopped.", host=self.target.url, check="command") from None
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if proc.returncode == 255:
            raise self.explain(err)
        if check and proc.returncode != 0:
            text = printable((err.strip() or out.strip())[-1500:])
            what = step or (command if isinstance(command, str) else shlex.join(command))
            raise ServerError(f"{what} failed on {self.target} (exit {proc.returncode}): {text}",
                              host=self.target.url, check="command", output=text)
        return result

    def popen(self, command: str | Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(command), **kwargs)

    # --- failures ----------------------------------------------------------------------------
    def explain(self, stderr: str) -> ServerError:
        """The ServerError for an ssh failure (exit 255) with ``stderr``."""
        t = self.target
        stderr = printable(stderr)
        low = stderr.lower()
        where = f"{t.host}:{t.port}"
        if "remote host identification has changed" in low or (
                "host key verification failed" in low and self._known_entry()):
            fingerprint = self.fingerprint()
            return ServerError(
                f"The host key of {where} must match the one in {self.known_hosts}. Got a CHANGED key instead "
                f"(now {fingerprint}). Someone may be intercepting the connection, or the server was reinstalled.",
                host=t.url, check="host-key",
                fix=f"confirm {fingerprint} with the server's admin (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
                    f"on the server), then: ssh-keygen -R {shlex.quote(t.known_hosts_name)} "
                    f"-f {shlex.quote(self.known_hosts)} && "
                    f"{self.trust_command()}")
        if "host key verification failed" in low or "no matching host key" in low:
            fingerprint = self.fingerprint()
            return ServerError(
                f"The host key of {where} must be in {self.known_hosts}. Got an unknown key instead ({fingerprint}); "
                "it is never accepted automatically.", host=t.url, check="host-key",
                fix=f"confirm {fingerprint} with the server's admin, then: {self.trust_command()}")
        if "connection refused" in low:
            return ServerError(f"SSH must answer at {where}. Got 'connection refused' instead.", host=t.url,
                               check="ssh", fix=f"is sshd running on {t.host} and listening on port {t.port}? "
                               "(`sudo systemctl status ssh` on the server)")
        if "permission denied" in low:
            key = self.identity_file or "your default key (~/.ssh/id_ed25519)"
            pub = shlex.quote(f"{self.identity_file}.pub") if self.identity_file else "~/.ssh/id_ed25519.pub"
            return ServerError(f"The server {where} must accept the key {key} for user {t.user}. Got 'permission "
                               "denied' instead (key authentication only; passwords are never tried).",
                               host=t.url, check="auth",
                               fix=f"add {pub} to ~{t.user}/.ssh/authorized_keys on the server: "
                                   f"ssh-copy-id -i {pub} -p {t.port} {self.destination}")
        if "could not resolve hostname" in low or "name or service not known" in low:
            return ServerError(f"The host name {t.host} must resolve. Got no such host instead.", host=t.url,
                               check="ssh", fix="check the spelling of server.host, or use the server's IP address")
        if "timed out" in low or "no route to host" in low or "network is unreachable" in low:
            return ServerError(f"SSH must answer at {where}. Got '{stderr.strip()[-200:]}' instead.", host=t.url,
                               check="ssh", fix="is the server up and the port open in its firewall?")
        return ServerError(f"SSH to {where} failed: {stderr.strip()[-1000:] or 'exit 255'}", host=t.url,
                           check="ssh", output=stderr)

    def _known_entry(self) -> bool:
        if not Path(self.known_hosts).is_file():
            return False
        proc = subprocess.run(["ssh-keygen", "-F", self.target.known_hosts_name, "-f", self.known_hosts],
                              capture_output=True, text=True)
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def scan(self, timeout: int = 10) -> str:
        """The server's host key lines (``ssh-keyscan``), ed25519 first."""
        proc = subprocess.run(["ssh-keyscan", "-T", str(timeout), "-p", str(self.target.port), "-t", "ed25519",
                               self.target.host.strip("[]")], capture_output=True, text=True, timeout=timeout + 5)
        return proc.stdout

    def fingerprint(self) -> str:
        """``SHA256:...`` of the host key the server offers now (or a note why it is unknown)."""
        try:
            lines = self.scan()
            if not lines.strip():
                return "fingerprint unavailable: ssh-keyscan got no key"
            proc = subprocess.run(["ssh-keygen", "-lf", "-"], input=lines, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"fingerprint unavailable: {exc}"
        match = re.search(r"SHA256:[A-Za-z0-9+/=]+", proc.stdout)
        return f"ED25519 key {match.group(0)}" if match else "fingerprint unavailable"

    def trust_command(self) -> str:
        t = self.target
        return (f"ssh-keyscan -p {t.port} -t ed25519 {shlex.quote(t.host.strip('[]'))} "
                f">> {shlex.quote(self.known_hosts)}")

    def __repr__(self) -> str:
        return f"SSH({self.target.url})"


class _TooMuchOutput(Exception):
    pass


def _bounded_run(argv: list[str], data: bytes | None, *, timeout: float, max_bytes: int) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, input=data, capture_output=True, timeout=timeout)`` that stops the
    process (and raises :class:`_TooMuchOutput`) once it printed more than ``max_bytes``."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed() -> None:
        with contextlib.suppress(OSError):
            proc.stdin.write(data)
            proc.stdin.close()

    if data is not None:
        threading.Thread(target=feed, daemon=True).start()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    total = 0
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            for fd in chunks:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout)
                for key, _ in sel.select(left):
                    block = os.read(key.fd, 65536)
                    if not block:
                        sel.unregister(key.fd)
                        continue
                    total += len(block)
                    if total > max_bytes:
                        raise _TooMuchOutput()
                    chunks[key.fd].append(block)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return subprocess.CompletedProcess(argv, code, b"".join(chunks[out_fd]), b"".join(chunks[err_fd]))

