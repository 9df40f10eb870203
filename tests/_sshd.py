"""Helpers for the SSH tests (this module holds no tests): a REAL sshd (Debian's openssh-server)
on 127.0.0.1 at a free port, with generated host and user keys and its own sshd_config (key
authentication only, no PAM), plus a real registry (Debian's docker-registry) on 127.0.0.1.

The test "server" is this same machine. It has no MicroK8s, so :func:`install_microk8s` puts
a small STAND-IN ``microk8s`` script on the sshd users' PATH: ``microk8s ctr ...`` runs the
REAL ``ctr`` against a private containerd; ``microk8s status``/``version``/``config`` print
canned answers (``config`` a kubeconfig that points at the FAKE Kubernetes API, kmock). The
script refuses users outside the ``microk8s`` group like MicroK8s does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _real import need, need_commands

REPO = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlops-kit-test", "-f", str(path)],
                   check=True)
    return path


class Sshd:
    """A private sshd on 127.0.0.1:``port`` (foreground, ``-D``), key authentication only."""

    def __init__(self, folder: Path | None = None, *, env: dict[str, str] | None = None, kit_on_path: bool = True):
        need_commands("ssh", "ssh-keygen", "ssh-keyscan")
        need(Path(SSHD).exists(), f"not installed: {SSHD} (apt-get install openssh-server)")
        need(os.geteuid() == 0, "a private sshd that logs users in needs root")
        self.dir = Path(folder or tempfile.mkdtemp(prefix="mk-sshd-"))
        self.dir.chmod(0o755)
        self.bin = self.dir / "bin"            # first on the sessions' PATH: the microk8s stand-in
        self.bin.mkdir(exist_ok=True)
        self.bin.chmod(0o755)
        self.port = free_port()
        self.host_key = keygen(self.dir / "host_key")
        self.user_key = keygen(self.dir / "user_key")
        self.other_key = keygen(self.dir / "other_key")     # a key the server does not accept
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text((self.dir / "user_key.pub").read_text())
        self.authorized_keys.chmod(0o644)
        self.known_hosts = self.dir / "known_hosts"
        self.trust()
        self.proc: subprocess.Popen | None = None
        self.users: list[str] = []
        extra = "".join(f" {k}={v}" for k, v in (env or {}).items())
        kit_bin = f"{Path(sys.executable).parent}:" if kit_on_path else ""
        path = f"{self.bin}:{kit_bin}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        (self.dir / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding yes
SetEnv PATH={path} PYTHONPATH={REPO} MLOPS_KIT_TEST_SERVER=1{extra}
""")

    def trust(self) -> None:
        """known_hosts holds the current host key (what an admin-verified entry looks like)."""
        key = " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key}\n")

    def start(self) -> Sshd:
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")],
                                     start_new_session=True)
        need(_wait_port(self.port, self.proc), f"sshd did not start; see {self.dir / 'sshd.log'}")
        return self

    def url(self, user: str = "root") -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}"

    def args(self, user: str = "root", key: Path | None = None) -> list[str]:
        """``HOST -i KEY --known-hosts FILE`` for the CLI."""
        return [self.url(user), "-i", str(key or self.user_key), "--known-hosts", str(self.known_hosts)]

    def new_host_key(self) -> None:
        """Replace the server's host key and restart it (known_hosts keeps the old one)."""
        self.stop()
        for suffix in ("", ".pub"):
            Path(f"{self.host_key}{suffix}").unlink()
        keygen(self.host_key)
        self.start()

    def add_user(self, name: str, *, groups: list[str] = (), home: Path | None = None) -> str:
        """A real login user (``useradd``), removed by :meth:`stop_all`."""
        need_commands("useradd", "userdel")
        subprocess.run(["userdel", "-r", name], capture_output=True)
        argv = ["useradd", "-M", "-p", "*", "-s", "/bin/sh", "-d", str(home or self.dir / f"home-{name}")]
        if groups:
            argv += ["-G", ",".join(groups)]
        subprocess.run([*argv, name], check=True)
        home = home or self.dir / f"home-{name}"
        home.mkdir(exist_ok=True)
        shutil.chown(home, name, name)
        self.users.append(name)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop_all(self) -> None:
        self.stop()
        for name in self.users:
            subprocess.run(["userdel", name], capture_output=True)
        self.users.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def ensure_group(name: str = "microk8s") -> bool:
    """Create the group when missing; True when this call created it."""
    if subprocess.run(["getent", "group", name], capture_output=True).returncode == 0:
        return False
    subprocess.run(["groupadd", name], check=True)
    return True


STATUS_TEMPLATE = """microk8s:
  running: {running}
high-availability:
  enabled: false
addons:
- name: dns
  repository: core
  status: {dns}
- name: registry
  repository: core
  status: {registry}
"""


def install_microk8s(sshd: Sshd, *, socket: Path | None, kubeconfig: str = "", running: bool = True,
                     dns: str = "enabled", registry: str = "disabled") -> Path:
    """The STAND-IN ``microk8s`` command on the test server's PATH (see the module docstring)."""
    state = sshd.dir / "microk8s"
    state.mkdir(exist_ok=True)
    state.chmod(0o755)
    (state / "status.yaml").write_text(STATUS_TEMPLATE.format(running=str(running).lower(), dns=dns,
                                                              registry=registry))
    (state / "kubeconfig").write_text(kubeconfig)
    script = sshd.bin / "microk8s"
    script.write_text(f"""#!/bin/sh
# STAND-IN for MicroK8s on the SSH test server (this is not MicroK8s): ctr is the real ctr on a
# private containerd; status/version/config are canned; users outside the microk8s group are
# refused as MicroK8s refuses them.
if [ "$(id -u)" != 0 ] && ! id -Gn | tr ' ' '\\n' | grep -qx microk8s; then
  echo "Insufficient permissions to access MicroK8s." >&2
  echo "You can either try again with sudo or add the user $(id -un) to the 'microk8s' group:" >&2
  exit 1
fi
case "$1" in
  status) shift; cat {state}/status.yaml ;;
  version) echo "MicroK8s v1.32.3 revision 0 (test stand-in)" ;;
  config) cat {state}/kubeconfig ;;
  ctr) shift; exec ctr -a {socket} "$@" ;;
  *) echo "stand-in microk8s: unsupported: $*" >&2; exit 2 ;;
esac
""")
    script.chmod(0o755)
    return script


def remove_microk8s(sshd: Sshd) -> None:
    (sshd.bin / "microk8s").unlink(missing_ok=True)


class Registry:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1:``port``, storage in a temp folder."""

    def __init__(self):
        need_commands("docker-registry")
        self.dir = Path(tempfile.mkdtemp(prefix="mk-registry-"))
        self.port = free_port()
        (self.dir / "config.yml").write_text(f"""version: 0.1
log: {{level: error}}
storage:
  filesystem: {{rootdirectory: {self.dir}/data}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{self.port}
""")
        self.log = open(self.dir / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")], stdout=self.log,
                                     stderr=self.log, start_new_session=True)
        need(_wait_port(self.port, self.proc), f"docker-registry did not start; see {self.dir / 'registry.log'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
