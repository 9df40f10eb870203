"""`mlops-kit server check` and the SSH transport against a REAL sshd on 127.0.0.1 (tests/_sshd.py).

The test server has no MicroK8s: the `microk8s` command there is a STAND-IN script (ctr -> the
real ctr on a private containerd; status/version canned), see tests/_sshd.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _sshd import REPO, Sshd, ensure_group, free_port, install_microk8s, remove_microk8s

pytestmark = pytest.mark.ssh
KIT = [sys.executable, "-m", "mlops_kit.cli"]


def kit(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*KIT, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def containerd_socket():
    from test_image_support import start_containerd

    return start_containerd()


@pytest.fixture()
def sshd(containerd_socket):
    server = Sshd().start()
    install_microk8s(server, socket=containerd_socket, registry="enabled")
    yield server
    server.stop_all()


def checks_of(proc) -> dict:
    data = json.loads(proc.stdout)
    return {c["name"]: c for c in data["checks"]}


def test_check_all_pass_json(sshd):
    proc = kit("server", "check", *sshd.args(), "--json", "--min-free-gb", "0.01")
    no_traceback(proc)
    checks = checks_of(proc)
    assert list(checks) == ["ssh", "microk8s", "group", "containerd", "disk", "python"]
    assert all(c["ok"] for c in checks.values()), checks
    assert proc.returncode == 0
    assert "key authentication as root" in checks["ssh"]["detail"]
    assert "v1.32.3" in checks["microk8s"]["detail"] and "registry enabled" in checks["microk8s"]["detail"]
    assert "mlops-kit" in checks["python"]["detail"]


def test_check_reports_missing_addon_and_disk(sshd, containerd_socket):
    install_microk8s(sshd, socket=containerd_socket, registry="disabled")
    proc = kit("server", "check", *sshd.args(), "--json", "--min-free-gb", "1000000")
    checks = checks_of(proc)
    assert proc.returncode == 1
    assert not checks["microk8s"]["ok"] and checks["microk8s"]["fix"] == "microk8s enable registry"
    assert not checks["disk"]["ok"] and "df -h" in checks["disk"]["fix"]
    # the plain output names each failure and its fix
    proc = kit("server", "check", *sshd.args(), "--min-free-gb", "1000000")
    assert "FAIL microk8s" in proc.stdout and "fix: microk8s enable registry" in proc.stdout


def test_connection_refused():
    port = free_port()
    proc = kit("server", "check", f"ssh://root@127.0.0.1:{port}", "--json")
    no_traceback(proc)
    checks = checks_of(proc)
    assert proc.returncode == 1
    assert "connection refused" in checks["ssh"]["detail"] and f"port {port}" in checks["ssh"]["fix"]
    assert checks["microk8s"]["detail"] == "skipped: SSH failed"


def test_wrong_key(sshd):
    proc = kit("server", "check", *sshd.args(key=sshd.other_key))
    no_traceback(proc)
    assert proc.returncode == 1
    assert "must accept the key" in proc.stdout and "permission denied" in proc.stdout
    assert f"ssh-copy-id -i {sshd.other_key}.pub -p {sshd.port} root@127.0.0.1" in proc.stdout


def fingerprint(pub) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True).stdout.split()[1]


def test_unknown_host_key_is_refused_with_fingerprint(sshd):
    sshd.known_hosts.write_text("")
    proc = kit("server", "check", *sshd.args(), "--json")
    no_traceback(proc)
    ssh = checks_of(proc)["ssh"]
    assert proc.returncode == 1 and not ssh["ok"]
    assert "unknown key" in ssh["detail"] and fingerprint(f"{sshd.host_key}.pub") in ssh["detail"]
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 127.0.0.1 >> {sshd.known_hosts}" in ssh["fix"]
    assert sshd.known_hosts.read_text() == ""   # never accepted on the way
    # the command it names does trust the key
    subprocess.run(ssh["fix"].split("then: ", 1)[1], shell=True, check=True, capture_output=True)
    assert kit("server", "check", *sshd.args(), "--json").stdout.count('"ok": true') >= 1
    assert checks_of(kit("server", "check", *sshd.args(), "--json"))["ssh"]["ok"]


def test_changed_host_key_is_refused(sshd):
    old = fingerprint(f"{sshd.host_key}.pub")
    sshd.new_host_key()
    new = fingerprint(f"{sshd.host_key}.pub")
    assert old != new
    proc = kit("server", "check", *sshd.args(), "--json")
    no_traceback(proc)
    ssh = checks_of(proc)["ssh"]
    assert not ssh["ok"] and "CHANGED" in ssh["detail"] and new in ssh["detail"]
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in ssh["fix"]


def test_no_microk8s_on_the_server(sshd):
    remove_microk8s(sshd)
    checks = checks_of(kit("server", "check", *sshd.args(), "--json"))
    assert not checks["microk8s"]["ok"] and "no `microk8s` command" in checks["microk8s"]["detail"]
    assert "snap install microk8s" in checks["microk8s"]["fix"]
    assert not checks["containerd"]["ok"]


def test_user_not_in_microk8s_group(sshd):
    created = ensure_group("microk8s")
    try:
        user = sshd.add_user("mkcheck")
        proc = kit("server", "check", *sshd.args(user=user), "--json")
        no_traceback(proc)
        checks = checks_of(proc)
        assert checks["ssh"]["ok"]
        assert not checks["group"]["ok"] and checks["group"]["fix"].startswith("sudo usermod -a -G microk8s mkcheck")
        assert not checks["microk8s"]["ok"] and "usermod -a -G microk8s mkcheck" in checks["microk8s"]["fix"]
    finally:
        sshd.stop_all()
        if created:
            subprocess.run(["groupdel", "microk8s"], capture_output=True)


@pytest.mark.parametrize("host", ["gpu-box", "ssh://gpu-box", "http://a@b", "ssh://a@b:99999", "ssh://a b@c"])
def test_bad_host_is_a_clear_error(host):
    proc = kit("server", "check", host)
    no_traceback(proc)
    assert proc.returncode == 1
    assert "must be given as ssh://USER@HOST[:PORT]" in proc.stderr and repr(host) in proc.stderr


def test_server_host_parameter_is_validated():
    from mlops_kit.errors import ParameterError
    from mlops_kit.params import load_params

    assert load_params(None, ["server.host=ssh://alice@10.0.0.5:2222"]).params.server.host.endswith(":2222")
    with pytest.raises(ParameterError, match=r"server.host: expected ssh://USER@HOST\[:PORT\]; found 'alice@box'"):
        load_params(None, ["server.host=alice@box"])


def test_server_init_without_the_kit_on_the_server(tmp_path):
    """A server whose SSH sessions have no `mlops-kit` (a plain user, PATH without the venv)."""
    server = Sshd(kit_on_path=False).start()
    try:
        user = server.add_user("mkinit")
        repo = tmp_path / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        proc = kit("server", "init", *server.args(user=user), cwd=repo)
        no_traceback(proc)
        assert proc.returncode == 1
        assert "must have `mlops-kit` on the PATH of SSH sessions" in proc.stderr and "pip install" in proc.stderr
        outside = kit("server", "init", *server.args(user=user), cwd=tmp_path)
        assert outside.returncode == 1 and "must run inside a git repository" in outside.stderr
    finally:
        server.stop_all()
