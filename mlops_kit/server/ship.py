"""Images to the server: only the blobs it lacks travel, and the digest is checked there.

With the MicroK8s registry addon on (``microk8s status``), ``skopeo copy`` pushes the OCI
layout through an SSH tunnel to the server's ``localhost:32000`` (``server.registry_port``);
the registry already holds the base layers, so a model-only rebuild sends little more than
the model layer. Without the addon, the OCI archive streams over ssh into ``microk8s ctr
image import -``, leaving out the blobs the server's containerd already holds.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from ..errors import MlopsKitError, ServerError
from ..image import Containerd, Runner, oci as _oci, tail
from ..image import build_error as _build_error
from ._ssh import SSH
from ._tunnel import Tunnel
from .check import microk8s_status, require_free

Log = Callable[[str], None]


class RemoteRunner(Runner):
    """A :class:`~mlops_kit.image._runner.Runner` whose commands run on the server, over ssh."""

    def __init__(self, ssh: SSH):
        self.ssh = ssh

    def which(self, name: str) -> str | None:
        proc = self.ssh.run(f"command -v {shlex.quote(name)}", check=False, step=f"command -v {name}")
        return proc.stdout.strip() or None

    def run(self, argv: Sequence[str], *, step: str, input: bytes | None = None, stdin: IO[bytes] | None = None,
            env: Mapping[str, str] | None = None, cwd=None, timeout: float | None = None, check: bool = True,
            error: Callable[..., MlopsKitError] | None = None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.run(self.ssh.argv(argv), input=input, stdin=stdin if input is None else None,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise (error or _build_error)(f"{step} on {self.ssh.target}: did not finish in {timeout} s.",
                                          command=argv, output=tail(exc.stderr)) from None
        if proc.returncode == 255:
            raise self.ssh.explain(proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            output = tail(proc.stderr) or tail(proc.stdout)
            raise (error or _build_error)(f"{step} failed on {self.ssh.target}: `{shlex.join(argv[:4])}` exited with "
                                          f"{proc.returncode}:\n{output}", command=argv, output=output)
        return proc

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return self.ssh.popen([str(a) for a in argv], **kwargs)


def preflight(ssh: SSH) -> dict:
    """MicroK8s there and usable by this user; returns its status. Runs before the build."""
    status = microk8s_status(ssh)
    user = ssh.target.user
    if not status["installed"]:
        raise ServerError(f"The server {ssh.target} must have MicroK8s (the `microk8s` command). Got none on the "
                          "PATH of SSH sessions instead.", host=ssh.target.url, check="microk8s",
                          fix="sudo snap install microk8s --classic && microk8s status --wait-ready")
    if status["denied"]:
        raise ServerError(f"The user {user} must be allowed to use MicroK8s on {ssh.target}. Got 'insufficient "
                          "permissions' instead.", host=ssh.target.url, check="group",
                          fix=f"on the server: sudo usermod -a -G microk8s {user}, then log in again")
    if not status["running"]:
        raise ServerError(f"MicroK8s on {ssh.target} must be running. Got it stopped instead.", host=ssh.target.url,
                          check="microk8s", fix="sudo microk8s start && microk8s status --wait-ready")
    return status


def needed_bytes(built) -> int:
    """Room the image needs on the server: the compressed blobs plus the unpacked snapshot."""
    compressed = built.compressed_size or 0
    return compressed + (built.unpacked_size or 2 * compressed)


def ship(built, ssh: SSH, *, namespace: str = "k8s.io", registry_port: int = 32000, status: dict | None = None,
         log: Log = print) -> dict:
    """Send ``built`` (a BuiltImage) to the server; returns the image record's ``imported``.

    Changes ``built.ref`` to ``localhost:<registry_port>/...`` on the registry path (the name the
    server's kubelet pulls)."""
    status = status or preflight(ssh)
    require_free(ssh, needed_bytes(built), what=f"the image {built.ref}")
    started = time.monotonic()
    use_registry = (status["addons"].get("registry") == "enabled" and built.layout is not None
                    and shutil.which("skopeo") is not None)
    if status["addons"].get("registry") == "enabled" and not use_registry:
        log("registry addon on, but " + ("skopeo is not installed here (apt-get install skopeo)"
                                          if built.layout is not None else f"the {built.builder} builder gave an "
                                          "archive") + ": streaming into `microk8s ctr image import` instead")
    if use_registry:
        where = _push_through_tunnel(built, ssh, registry_port=registry_port, log=log)
    else:
        where = _import_over_ssh(built, ssh, namespace=namespace, log=log)
    where["seconds"] = round(time.monotonic() - started, 3)
    return where


# --- the registry path ----------------------------------------------------------------------

def _repo_and_tag(ref: str) -> tuple[str, str]:
    name, tag = ref.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name, tag


def _registry_call(method: str, url: str, *, accept: str | None = None):
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _push_through_tunnel(built, ssh: SSH, *, registry_port: int, log: Log) -> dict:
    repo, tag = _repo_and_tag(built.ref)
    with Tunnel(ssh, registry_port) as port:
        base = f"http://127.0.0.1:{port}/v2/{repo}"
        try:
            _registry_call("GET", f"http://127.0.0.1:{port}/v2/")
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(f"The registry addon must answer at localhost:{registry_port} on {ssh.target}. Got "
                              f"{getattr(exc, 'reason', exc)} instead.", host=ssh.target.url, check="registry",
                              fix="microk8s enable registry (or microk8s disable registry to import over ssh)") from None
        manifest = _oci.read_json_blob(built.layout, built.manifest_digest)
        blobs = [manifest["config"], *manifest["layers"]]
        missing = [b for b in blobs if _registry_call("HEAD", f"{base}/blobs/{b['digest']}") is None]
        sent = sum(b["size"] for b in missing)
        log(f"registry localhost:{registry_port} on {ssh.target.host} lacks {len(missing)} of {len(blobs)} blobs: "
            f"sending {sent / 1e6:.2f} MB")
        layout_tag = _layout_tag(built)
        argv = ["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{built.layout}:{layout_tag}", f"docker://127.0.0.1:{port}/{repo}:{tag}"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise ServerError(f"skopeo could not push {built.ref} to the server's registry: "
                              f"{tail(proc.stderr) or tail(proc.stdout)}", host=ssh.target.url, check="registry",
                              output=proc.stderr)
        head = _registry_call("HEAD", f"{base}/manifests/{tag}", accept=_oci.MANIFEST)
        digest = head.headers.get("Docker-Content-Digest") if head is not None else None
    if digest != built.manifest_digest:
        raise ServerError(f"The server's registry must hold {repo}:{tag} with the digest {built.manifest_digest}. "
                          f"Got {digest} instead.", host=ssh.target.url, check="registry",
                          fix="another push may have moved the tag; build again")
    registry = f"localhost:{registry_port}"
    built.ref = f"{registry}/{repo}:{tag}"
    log(f"pushed {built.ref} to the server's registry ({digest[:19]}, verified there)")
    return {"server": ssh.target.url, "registry": registry, "blobs_sent": len(missing), "bytes_sent": sent}


def _layout_tag(built) -> str:
    """The ``ref.name`` under which the layout holds the image (the full reference)."""
    for desc in _oci.read_index(built.layout).get("manifests", []):
        if desc.get("digest") == built.manifest_digest:
            return desc.get("annotations", {}).get(_oci.REF_NAME, built.ref)
    return built.ref


# --- the containerd path --------------------------------------------------------------------

class _Counting:
    """A write-only file that counts the bytes that pass through it."""

    def __init__(self, out: IO[bytes]):
        self.out, self.count = out, 0

    def write(self, data) -> int:
        self.count += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _import_over_ssh(built, ssh: SSH, *, namespace: str, log: Log) -> dict:
    from ..image import import_image

    runner = RemoteRunner(ssh)
    containerd = Containerd(None, namespace, runner=runner)
    if containerd.via != "microk8s":
        raise ServerError(f"The server {ssh.target} must have the `microk8s` command. Got none instead.",
                          host=ssh.target.url, check="microk8s", fix="sudo snap install microk8s --classic")
    held = set(containerd.ctr("content", "ls", "-q", step="ctr content ls", timeout=120).stdout.decode().split())
    counter: dict[str, Any] = {}
    if built.layout is not None:
        wanted = {d for desc in _oci.read_index(built.layout)["manifests"]
                  for d in _oci.image_blobs(built.layout, desc["digest"])}
        # manifests and configs always travel (small; the importer reads them from the archive)
        small = {d for desc in _oci.read_index(built.layout)["manifests"]
                 for d in (desc["digest"], _oci.read_json_blob(built.layout, desc["digest"])["config"]["digest"])}
        only = {d for d in wanted if d not in held} | small

        def write(out):
            counting = _Counting(out)
            _oci.write_archive(built.layout, counting, only=only)
            counter["bytes"] = counting.count
        counter["blobs"] = len(only)
        built_for_import = _Shim(built, write)
    else:
        def write(out):
            counting = _Counting(out)
            built.write_archive(counting)
            counter["bytes"] = counting.count
        built_for_import = _Shim(built, write)
    digest = import_image(built_for_import, containerd, log=log)
    built.manifest_digest = digest
    log(f"sent {counter.get('bytes', 0) / 1e6:.2f} MB over ssh; {built.ref} is in the server's containerd "
        f"({digest[:19]}, verified there)")
    return {"server": ssh.target.url, "containerd": "microk8s", "namespace": namespace,
            "bytes_sent": counter.get("bytes", 0)}


class _Shim:
    """``built`` with another ``write_archive`` (what import_image streams)."""

    def __init__(self, built, write):
        self._built, self.write_archive = built, write

    def __getattr__(self, name):
        return getattr(self._built, name)

    def __setattr__(self, name, value):
        if name in ("_built", "write_archive"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._built, name, value)

