"""A kubeconfig from another machine is checked field by field before any Kubernetes client is
built (mlops_kit/kube/_kubeconfig.py: parse_foreign_kubeconfig): only inline certificates
or a token for one cluster. A credential plugin (`exec`, `auth-provider`) would run on THIS
machine while the client is built; a file reference would read one of its files; a proxy would
send the credentials elsewhere.

The end-to-end attack: a REAL sshd (tests/_sshd.py) whose STAND-IN `microk8s config` prints a
kubeconfig with an `exec` plugin that writes a marker file; `mlops-kit status` against that
server must refuse it, name the field, and the marker must never appear. Also the same for
`microk8s config` on this machine (a stand-in script on PATH)."""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_kit.deploy.k8s import ForeignKubeconfig, load_api_client, parse_foreign_kubeconfig
from mlops_kit.errors import K8sDeployError, UnsafeKubeconfig

pytestmark = pytest.mark.security
REPO = Path(__file__).resolve().parent.parent
B64 = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n").decode()


def microk8s_config(**user) -> dict:
    """What `microk8s config` prints (MicroK8s 1.2x: inline CA, client certificate and key)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "microk8s", "preferences": {},
            "clusters": [{"name": "microk8s-cluster",
                          "cluster": {"certificate-authority-data": B64, "server": "https://10.0.0.5:16443"}}],
            "contexts": [{"name": "microk8s", "context": {"cluster": "microk8s-cluster", "user": "admin"}}],
            "users": [{"name": "admin", "user": user or {"client-certificate-data": B64, "client-key-data": B64}}]}


def exec_plugin(marker: Path) -> dict:
    """A credential plugin that would write ``marker`` (and print a token) if it ever ran."""
    return {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "/bin/sh",
            "args": ["-c", f"touch {marker}; echo '{{\"apiVersion\": \"client.authentication.k8s.io/v1beta1\", "
                           f"\"kind\": \"ExecCredential\", \"status\": {{\"token\": \"x\"}}}}'"],
            "interactiveMode": "Never"}


def parse(document) -> ForeignKubeconfig:
    return parse_foreign_kubeconfig(document if isinstance(document, str) else yaml.safe_dump(document),
                                    source="`microk8s config` on ssh://alice@server:22")


def test_microk8s_certificates_and_a_token_are_accepted():
    checked = parse(microk8s_config())
    assert checked.server == "https://10.0.0.5:16443" and checked.client_key_data == B64
    assert "client-key-data" in checked.to_dict()["users"][0]["user"]
    assert B64 not in repr(checked)                 # never the credentials in a repr
    token = parse(microk8s_config(token="abc.DEF-123_456"))
    assert token.to_dict()["users"][0]["user"] == {"token": "abc.DEF-123_456"}
    assert "abc.DEF" not in repr(token)


def test_the_client_gets_only_the_checked_fields():
    document = microk8s_config()
    document["contexts"][0]["context"]["namespace"] = "team"
    built = parse(document).to_dict()
    assert set(built) == {"apiVersion", "kind", "current-context", "clusters", "users", "contexts"}
    assert built["clusters"][0]["cluster"] == {"server": "https://10.0.0.5:16443", "certificate-authority-data": B64}
    assert built["contexts"][0]["context"]["namespace"] == "team"


def _with(path: str, value) -> dict:
    """microk8s_config() with ``value`` set at ``path`` (``users.user.exec``: the first entry)."""
    document = copy.deepcopy(microk8s_config())
    node = document
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part][0] if isinstance(node[part], list) else node[part]
    node[parts[-1]] = value
    return document


@pytest.mark.parametrize("path, value, why", [
    ("users.user.exec", {"command": "/bin/sh", "args": ["-c", "id"]}, "credential plugin"),
    ("users.user.auth-provider", {"name": "oidc", "config": {}}, "authentication provider"),
    ("users.user.client-certificate", "/home/alice/.ssh/id_ed25519", "a file on THIS machine"),
    ("users.user.client-key", "/etc/shadow", "a file on THIS machine"),
    ("users.user.tokenFile", "/home/alice/.aws/credentials", "a file on THIS machine"),
    ("users.user.username", "admin", "basic authentication"),
    ("users.user.password", "admin", "basic authentication"),
    ("users.user.as", "system:admin", "impersonation"),
    ("users.user.as-groups", ["system:masters"], "impersonation"),
    ("clusters.cluster.certificate-authority", "/etc/ssl/private/key.pem", "a file on THIS machine"),
    ("clusters.cluster.proxy-url", "socks5://evil.example:1080", "a proxy"),
    ("clusters.cluster.insecure-skip-tls-verify", True, "not be checked"),
    ("clusters.cluster.extensions", [], "extensions"),
    ("clusters.cluster.tls-server-name", "x", "a field the kit does not accept"),
    ("contexts.context.extensions", [], "extensions"),
    ("extensions", [], "extensions"),
    ("unknown-top-level", 1, "a field the kit does not accept"),
])
def test_each_refused_field_is_named(path, value, why):
    with pytest.raises(UnsafeKubeconfig) as err:
        parse(_with(path, value))
    field = (path.replace("users.user", "users[0].user").replace("clusters.cluster", "clusters[0].cluster")
             .replace("contexts.context", "contexts[0].context"))
    assert err.value.field == field
    message = str(err.value)
    assert f"Got {field}: " in message and why in message
    assert "`microk8s config` on ssh://alice@server:22 must hold only certificate or token credentials" in message
    assert err.value.reason == "NoKubeconfig" and isinstance(err.value, K8sDeployError)


@pytest.mark.parametrize("change, field, found", [
    (lambda d: d["clusters"].append(copy.deepcopy(d["clusters"][0])), "clusters", "2 entries"),
    (lambda d: d["users"].append(copy.deepcopy(d["users"][0])), "users", "2 entries"),
    (lambda d: d["contexts"].append(copy.deepcopy(d["contexts"][0])), "contexts", "2 entries"),
    (lambda d: d.pop("users"), "users", "NoneType"),
    (lambda d: d.update({"current-context": "other"}), "current-context", "a context the file does not define"),
    (lambda d: d["contexts"][0]["context"].update(user="other"), "contexts[0].context", "does not define"),
    (lambda d: d["clusters"][0]["cluster"].update(server="file:///etc/passwd"), "clusters[0].cluster.server",
     "not an https:// URL"),
    (lambda d: d["clusters"][0]["cluster"].update(server="https://h:99999"), "clusters[0].cluster.server",
     "not an https:// URL"),
    (lambda d: d["users"][0]["user"].pop("client-key-data"), "users[0].user", "neither a token alone"),
    (lambda d: d["users"][0]["user"].update(token="t"), "users[0].user", "neither a token alone"),
    (lambda d: d["users"][0].update(user={"token": "abc\r\nX-Injected: 1"}), "users[0].user.token",
     "a malformed value"),
    (lambda d: d["users"][0]["user"].update({"client-key-data": "not base64!"}), "users[0].user.client-key-data",
     "not base64"),
    (lambda d: d["contexts"][0]["context"].update(namespace="../kube-system"), "contexts[0].context.namespace",
     "a malformed value"),
    (lambda d: d.update(kind="Pod"), "kind", "not a v1 Config"),
])
def test_shapes_other_than_one_cluster_user_context_are_refused(change, field, found):
    document = microk8s_config()
    change(document)
    with pytest.raises(UnsafeKubeconfig) as err:
        parse(document)
    assert err.value.field == field and found in str(err.value)
    assert "X-Injected" not in str(err.value) and "not base64!" not in str(err.value)   # values are not echoed


@pytest.mark.parametrize("text, found", [("a: [", "not YAML"), ("- a\n- b\n", "list where a mapping belongs"),
                                         ("x" * (1 << 20 + 1), "more than")])
def test_not_a_kubeconfig_is_refused(text, found):
    with pytest.raises(UnsafeKubeconfig, match=found):
        parse(text)


# --- microk8s config on this machine -------------------------------------------------------------

def _stand_in_microk8s(folder: Path, document: dict) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    (folder / "kubeconfig").write_text(yaml.safe_dump(document))
    script = folder / "microk8s"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = config ] && exec cat {folder / 'kubeconfig'}\nexit 2\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin", "HOME": str(folder)}


def test_local_microk8s_config_with_an_exec_plugin_never_runs_it(tmp_path):
    marker = tmp_path / "PLUGIN-RAN"
    environ = _stand_in_microk8s(tmp_path / "bin", microk8s_config(exec=exec_plugin(marker)))
    with pytest.raises(UnsafeKubeconfig) as err:
        load_api_client(environ=environ)
    assert err.value.field == "users[0].user.exec" and "`microk8s config`" in str(err.value)
    assert not marker.exists()


def test_local_microk8s_config_with_certificates_builds_a_client(tmp_path):
    client, where = load_api_client(environ=_stand_in_microk8s(tmp_path / "bin", microk8s_config()))
    try:
        assert where == "`microk8s config`" and client.configuration.host == "https://10.0.0.5:16443"
    finally:
        client.close()


def test_the_users_own_kubeconfig_may_use_a_plugin(tmp_path):
    """The decision in docs/security.md: KUBECONFIG and ~/.kube/config are the user's own files,
    used as they are (cloud providers log in through exec plugins)."""
    marker = tmp_path / "PLUGIN-RAN"
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump(microk8s_config(exec=exec_plugin(marker))))
    client, where = load_api_client(environ={"KUBECONFIG": str(config), "HOME": str(tmp_path)})
    client.close()
    assert where.endswith("(KUBECONFIG)") and marker.exists()


# --- the team's server: a real sshd ------------------------------------------------------------

@pytest.mark.ssh
def test_servers_kubeconfig_with_an_exec_plugin_never_runs_on_the_laptop(_isolated_runs, tmp_path):
    from _sshd import Sshd, install_microk8s
    from test_k8s_fakes import make_run

    marker = tmp_path / "laptop" / "PLUGIN-RAN"
    marker.parent.mkdir()
    sshd = Sshd().start()
    try:
        install_microk8s(sshd, socket=None, kubeconfig=yaml.safe_dump(microk8s_config(exec=exec_plugin(marker))))
        make_run(_isolated_runs, "run-1")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
        for command in (["status", "-p", "parameters/microk8s.yaml"], ["deploy", "run-1", "--target", "microk8s"]):
            proc = subprocess.run([sys.executable, "-m", "mlops_kit.cli", *command,
                                   "--set", f"server.host={sshd.url()}",
                                   "--set", f"server.identity_file={sshd.user_key}",
                                   "--set", f"server.known_hosts={sshd.known_hosts}"],
                                  capture_output=True, text=True, env=env, timeout=180)
            assert not marker.exists(), f"{command}: the server's exec plugin ran on the laptop"
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert (f"The kubeconfig from `microk8s config` on {sshd.url()} must hold only certificate or token "
                    "credentials for one cluster. Got users[0].user.exec: a credential plugin") in proc.stderr
    finally:
        sshd.stop_all()
