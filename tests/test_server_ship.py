"""Images to the team's server over SSH - a REAL sshd, containerd, registry and skopeo.

The test server is this machine reached through a private sshd (tests/_sshd.py). It has no
MicroK8s: its `microk8s` command is a STAND-IN script whose `microk8s ctr` is the real ctr on
a private containerd and whose `microk8s status` says whether the registry addon is on; the
addon itself is Debian's docker-registry on 127.0.0.1, reached through a real SSH tunnel."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest
from _real import need, need_commands
from _sshd import Registry, Sshd, ensure_group, install_microk8s, remove_microk8s
from test_image_support import (
    make_run,
    need_layers_builder,
    start_containerd,
)

from mlops_kit import image as mk_image
from mlops_kit.errors import ServerError
from mlops_kit.params import PackageParams, RunParams, ServerParams

pytestmark = [pytest.mark.ssh, pytest.mark.containerd]


@pytest.fixture(scope="module")
def socket_path(image_env):
    return start_containerd()


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    yield reg
    reg.stop()


@pytest.fixture()
def sshd(socket_path):
    server = Sshd().start()
    install_microk8s(server, socket=socket_path, registry="disabled")
    yield server
    server.stop_all()


def params_for(sshd, *, user="root", registry_port=32000) -> RunParams:
    params = RunParams()
    params.package = PackageParams(builder="layers")
    params.server = ServerParams(host=sshd.url(user), identity_file=str(sshd.user_key),
                                 known_hosts=str(sshd.known_hosts), registry_port=registry_port)
    return params


def ctr_digest(socket_path, ref: str) -> str | None:
    out = subprocess.run(["ctr", "-a", str(socket_path), "-n", "k8s.io", "images", "ls", f"name=={ref}"],
                         capture_output=True, text=True).stdout.splitlines()[1:]
    return out[0].split()[2] if out else None


def test_import_over_ssh_sends_only_missing_blobs(sshd, socket_path, model_dir, mixed_model_dir, tmp_path):
    need_layers_builder()
    lines: list[str] = []
    first = mk_image.package(make_run(tmp_path, model_dir, "20250201-000000-aaaa"), params_for(sshd),
                             log=lines.append)
    assert first["imported"]["server"] == sshd.url() and first["imported"]["containerd"] == "microk8s"
    assert ctr_digest(socket_path, first["ref"]) == first["digest"]          # in the server's containerd
    # a model-only rebuild: the base and app blobs stay home
    second = mk_image.package(make_run(tmp_path, mixed_model_dir, "20250201-000000-bbbb"), params_for(sshd),
                              log=lines.append)
    assert ctr_digest(socket_path, second["ref"]) == second["digest"]
    model_layer = second["layers"][-1]["size"]
    base = sum(l["size"] for l in second["layers"][:2])
    assert second["imported"]["bytes_sent"] < model_layer + 2_000_000 < base
    assert any("verified there" in line for line in lines)


def test_registry_through_tunnel_sends_only_missing_blobs(sshd, socket_path, registry, model_dir,
                                                          mixed_model_dir, tmp_path):
    need_layers_builder()
    need_commands("skopeo")
    install_microk8s(sshd, socket=socket_path, registry="enabled")
    params = params_for(sshd, registry_port=registry.port)
    first = mk_image.package(make_run(tmp_path, model_dir, "20250202-000000-aaaa"), params)
    assert first["ref"].startswith(f"localhost:{registry.port}/mlops-kit/model:")
    assert first["imported"]["registry"] == f"localhost:{registry.port}"
    repo, tag = first["ref"].split("/", 1)[1].rsplit(":", 1)
    req = urllib.request.Request(f"http://127.0.0.1:{registry.port}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert urllib.request.urlopen(req).headers["Docker-Content-Digest"] == first["digest"]
    second = mk_image.package(make_run(tmp_path, mixed_model_dir, "20250202-000000-bbbb"), params)
    assert second["imported"]["blobs_sent"] <= 3          # config, model layer, app layer at most
    assert second["imported"]["bytes_sent"] < second["layers"][-1]["size"] + 2_000_000
    # the deploy code pulls it from the registry (IfNotPresent), pinned by digest
    from mlops_kit.deploy.k8s._render import image_reference, pull_policy

    assert pull_policy(image_reference(second), params, second) == "IfNotPresent"


def test_no_microk8s_is_refused_before_the_build(sshd, model_dir, tmp_path):
    remove_microk8s(sshd)
    run = make_run(tmp_path, model_dir, "20250203-000000-aaaa")
    with pytest.raises(ServerError, match="must have MicroK8s") as err:
        mk_image.package(run, params_for(sshd))
    assert err.value.check == "microk8s" and "snap install microk8s" in err.value.fix
    assert not (run / "artifacts" / "image.json").exists()


def test_user_not_in_group_is_refused(sshd, model_dir, tmp_path):
    created = ensure_group("microk8s")
    try:
        user = sshd.add_user("mkship")
        with pytest.raises(ServerError, match="must be allowed to use MicroK8s") as err:
            mk_image.package(make_run(tmp_path, model_dir, "20250204-000000-aaaa"), params_for(sshd, user=user))
        assert "usermod -a -G microk8s mkship" in err.value.fix
    finally:
        sshd.stop_all()
        if created:
            subprocess.run(["groupdel", "microk8s"], capture_output=True)


def test_disk_full_is_refused_before_upload(sshd, socket_path, model_dir, tmp_path):
    """The server user's home (where images land without MicroK8s's folder) is a 2 MB tmpfs."""
    need_layers_builder()
    created = ensure_group("microk8s")
    home = sshd.dir / "small-home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(home)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        sshd.stop_all()
        need(False, f"mounting a small tmpfs needs CAP_SYS_ADMIN: {mounted.stderr.strip()}")
    try:
        user = sshd.add_user("mkfull", groups=["microk8s"], home=home)
        run = make_run(tmp_path, model_dir, "20250205-000000-aaaa")
        with pytest.raises(ServerError, match=r"must have \d+ MB free in .*small-home.*nothing was uploaded") as err:
            mk_image.package(run, params_for(sshd, user=user))
        assert err.value.check == "disk"
        assert not any(run.name in line for line in subprocess.run(
            ["ctr", "-a", str(socket_path), "-n", "k8s.io", "images", "ls", "-q"], capture_output=True,
            text=True).stdout.splitlines())
    finally:
        sshd.stop_all()
        subprocess.run(["umount", str(home)], capture_output=True)
        if created:
            subprocess.run(["groupdel", "microk8s"], capture_output=True)


def test_package_stage_takes_the_server_from_the_run_record(sshd, socket_path, model_dir, tmp_path):
    """The 04_package notebook passes only the package section: server.* comes from run.json."""
    need_layers_builder()
    server = params_for(sshd).server.model_dump(mode="json")
    run = make_run(tmp_path, model_dir, "20250206-000000-aaaa", params={"server": server})
    record = mk_image.package(run, PackageParams(builder="layers"))
    assert record["imported"]["server"] == sshd.url()
    assert ctr_digest(socket_path, record["ref"]) == record["digest"]
