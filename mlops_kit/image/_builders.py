"""Image builders, one registry.

``layers``: daemonless, registry-less: the cached base layout (``_base``) plus two layers
written here (app, model) - a model-only rebuild adds one small layer.
``buildah``, ``podman``, ``docker``, ``nerdctl``: build the context's Containerfile.
``auto``: the first that works here.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from .. import _paths
from ..errors import BuilderNotFound
from . import _base, _oci
from ._context import CMD, ENV, PORT, USER, Context
from ._runner import DEFAULT_RUNNER, Log, Runner

#: How many built layouts to keep in the cache (their blobs are hard links to the base).
KEEP_BUILDS = 20


@dataclass
class BuiltImage:
    """An image on disk: an OCI layout (``layout`` + ``tag``) or an archive file."""

    ref: str
    builder: str
    layout: Path | None = None
    archive: Path | None = None
    manifest_digest: str | None = None
    layers: list[dict] = field(default_factory=list)
    base_ref: str | None = None
    base_manifest: str | None = None
    seconds: float = 0.0

    @property
    def compressed_size(self) -> int:
        return sum(l["size"] for l in self.layers)

    @property
    def unpacked_size(self) -> int | None:
        sizes = [l.get("unpacked") for l in self.layers]
        return None if any(s is None for s in sizes) else sum(sizes)

    def write_archive(self, out: IO[bytes]) -> None:
        """The image (and the base, tagged, so containerd never collects its layers) as an OCI archive."""
        if self.layout is not None:
            _oci.write_archive(self.layout, out)
            return
        with open(self.archive, "rb") as fh:     # type: ignore[arg-type]
            shutil.copyfileobj(fh, out, 1 << 20)


# --- the registry ---------------------------------------------------------------------------

class Builder:
    name = ""
    #: what to install when absent
    install = ""

    def unavailable(self, *, base_image: str | None, runner: Runner) -> str | None:
        """Why this builder cannot work here (None: it can)."""
        raise NotImplementedError

    def build(self, context: Context, *, runner: Runner, log: Log) -> BuiltImage:
        raise NotImplementedError


class LayersBuilder(Builder):
    name = "layers"
    install = "apt-get install umoci mmdebstrap"

    def unavailable(self, *, base_image, runner):
        if base_image:
            return "it builds on the kit's local base only (package.base_image needs buildah, podman or docker)"
        if runner.which("umoci") is None:
            return "umoci is not installed"
        return None

    def build(self, context: Context, *, runner: Runner, log: Log) -> BuiltImage:
        started = time.monotonic()
        base = _base.find_base(context.requirements) or _base.ensure_base(context.requirements, runner=runner, log=log)
        new_layers = [(*_app_layer(context.app, runner=runner, log=log), "COPY app/ /app/ (+ .pyc)"),
                      (*_oci.layer_from_tree(context.model, "app/model"), "COPY model/ /app/model/")]
        config = {"Cmd": CMD, "Entrypoint": None, "User": USER, "WorkingDir": "/app",
                  "ExposedPorts": {f"{PORT}/tcp": {}}, "StopSignal": "SIGTERM"}
        return assemble(base, new_layers, ref=context.ref, tag=context.tag, env=ENV, config=config,
                        labels=context.labels, builder=self.name, started=started, log=log)


def assemble(base: _base.BaseImage, new_layers: list[tuple[bytes, str, int, str]], *, ref: str, tag: str,
             env: dict[str, str], config: dict, labels: dict[str, str], builder: str = "layers",
             started: float | None = None, log: Log = print) -> BuiltImage:
    """An OCI layout in the builds folder: the cached base's layers (hard links) plus
    ``new_layers`` ((gzip blob, diff id, unpacked size, created_by) each), the base's config with
    ``env`` added and ``config`` set; tagged ``ref``."""
    started = time.monotonic() if started is None else started
    builds = _paths.image_builds_dir()
    builds.mkdir(parents=True, exist_ok=True)
    layout = Path(tempfile.mkdtemp(prefix=f"{tag}.", dir=builds))
    try:
        _oci.link_blobs(base.layout, layout)
        base_desc = _oci.find_manifest(base.layout, "deps")
        manifest = _oci.read_json_blob(base.layout, base_desc["digest"])
        image = _oci.read_json_blob(base.layout, manifest["config"]["digest"])
        layers = []
        history = image.get("history") or []
        for i, desc in enumerate(manifest["layers"]):
            created_by = history[i].get("created_by", "") if i < len(history) else ""
            sizes = base.info.get("diff_sizes") or []
            layers.append({"digest": desc["digest"], "size": desc["size"],
                           "unpacked": sizes[i] if i < len(sizes) else None,
                           "created_by": created_by[:120], "base": True})
        for blob, diff_id, unpacked, created_by in new_layers:
            desc = _oci.write_blob(layout, blob, _oci.LAYER_GZIP)
            manifest["layers"].append(desc)
            image["rootfs"]["diff_ids"].append(diff_id)
            history.append({"created": _created(), "created_by": created_by})
            layers.append({"digest": desc["digest"], "size": desc["size"], "unpacked": unpacked,
                           "created_by": created_by, "base": False})
        image_config = image.setdefault("config", {})
        base_env = [e for e in image_config.get("Env", []) if e.split("=", 1)[0] not in env]
        image_config.update({"Env": base_env + [f"{k}={v}" for k, v in env.items()], **config,
                             "Labels": {**(image_config.get("Labels") or {}), **labels}})
        image["history"] = history
        image["created"] = _created()
        config_desc = _oci.write_json_blob(layout, image, _oci.CONFIG)
        manifest["config"] = config_desc
        manifest.pop("annotations", None)
        manifest_desc = _oci.write_json_blob(layout, manifest, _oci.MANIFEST)
        tagged = dict(manifest_desc, annotations={_oci.REF_NAME: ref, _oci.CONTAINERD_NAME: ref})
        base_tagged = dict(base_desc, annotations={_oci.REF_NAME: base.ref, _oci.CONTAINERD_NAME: base.ref})
        _oci.write_layout(layout, [tagged, base_tagged])
        final = builds / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(layout, final)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    _prune(builds)
    seconds = time.monotonic() - started
    log(f"built {ref} with {builder} in {seconds:.2f} s (base {base.key} reused)")
    return BuiltImage(ref=ref, builder=builder, layout=final, manifest_digest=manifest_desc["digest"],
                      layers=layers, base_ref=base.ref, base_manifest=base_desc["digest"], seconds=seconds)


def read_built(layout: Path, ref: str, *, builder: str = "layers") -> BuiltImage | None:
    """The image ``ref`` of a layout :func:`assemble` wrote earlier (None: not there)."""
    try:
        desc = next(d for d in _oci.read_index(layout).get("manifests", [])
                    if d.get("annotations", {}).get(_oci.REF_NAME) == ref)
        manifest = _oci.read_json_blob(layout, desc["digest"])
    except (OSError, ValueError, KeyError, StopIteration):
        return None
    layers = [{"digest": l["digest"], "size": l["size"], "unpacked": None, "created_by": ""}
              for l in manifest["layers"]]
    return BuiltImage(ref=ref, builder=builder, layout=layout, manifest_digest=desc["digest"], layers=layers)


class ContainerfileBuilder(Builder):
    """buildah / podman / docker / nerdctl: ``build`` the Containerfile, ``save`` an archive."""

    def __init__(self, name: str, *, build: list[str], save: Callable[[str, Path], list[str]],
                 check: list[str], install: str, pull_local_base: bool):
        self.name, self._build, self._save, self._check = name, build, save, check
        self.install, self._pull_local_base = install, pull_local_base

    def unavailable(self, *, base_image, runner):
        if runner.which(self.name) is None:
            return f"{self.name} is not installed"
        proc = runner.run([self.name, *self._check], step=f"{self.name} check", check=False, timeout=20)
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()
            return f"`{self.name} {' '.join(self._check)}` failed: {why[-1] if why else 'exit ' + str(proc.returncode)}"
        if not base_image and not self._pull_local_base:
            return "it cannot load the kit's local base; set package.base_image to an image it can pull"
        return None

    def build(self, context: Context, *, runner: Runner, log: Log) -> BuiltImage:
        started = time.monotonic()
        args = []
        if "key" in context.base:
            base = _base.find_base(context.requirements) or _base.ensure_base(context.requirements, runner=runner, log=log)
            self._load_base(base, runner=runner, log=log)
            args = ["--build-arg", f"BASE_IMAGE={base.ref}", "--build-arg", "INSTALL_REQUIREMENTS=0"]
        else:
            args = ["--build-arg", f"BASE_IMAGE={context.base['image']}", "--build-arg", "INSTALL_REQUIREMENTS=1"]
        runner.run([self.name, *self._build, "-f", context.path / "Containerfile", *args, "-t", context.ref,
                    context.path], step=f"{self.name} build", timeout=1800)
        builds = _paths.image_builds_dir()
        builds.mkdir(parents=True, exist_ok=True)
        archive = builds / f"{context.tag}.{self.name}.tar"
        archive.unlink(missing_ok=True)
        runner.run([self.name, *self._save(context.ref, archive)], step=f"{self.name} save", timeout=900)
        built = BuiltImage(ref=context.ref, builder=self.name, archive=archive)
        _describe_archive(built)
        built.seconds = time.monotonic() - started
        log(f"built {context.ref} with {self.name} in {built.seconds:.1f} s")
        return built

    def _load_base(self, base: _base.BaseImage, *, runner: Runner, log: Log) -> None:
        probe = {"buildah": ["inspect", "--type", "image", base.ref]}.get(self.name, ["image", "inspect", base.ref])
        if runner.run([self.name, *probe], step="inspect base", check=False).returncode == 0:
            return
        log(f"loading the local base {base.ref} into {self.name}")
        if self.name in ("buildah", "podman"):
            # buildah and podman name an image pulled from an OCI layout after the layout's path,
            # and every path component must then be a valid reference: `~/.cache/...` is not
            # ("invalid reference format"). Pull through a link whose path is always valid.
            alias = Path("/tmp") / f"mlops-kit-base-{base.key[:16]}-{os.getpid()}"
            alias.unlink(missing_ok=True)
            alias.symlink_to(base.layout, target_is_directory=True)
            try:
                proc = runner.run([self.name, "pull", "-q", f"oci:{alias}:deps"], step=f"{self.name} pull base")
            finally:
                alias.unlink(missing_ok=True)
            image_id = proc.stdout.decode().strip().splitlines()[-1]
            runner.run([self.name, "tag", image_id, base.ref], step=f"{self.name} tag base")
            return
        with tempfile.TemporaryFile() as fh:     # docker / nerdctl load an OCI archive
            tmp = Path(tempfile.mkdtemp())
            try:
                _oci.link_blobs(base.layout, tmp)
                desc = _oci.find_manifest(base.layout, "deps")
                _oci.write_layout(tmp, [dict(desc, annotations={_oci.REF_NAME: base.ref,
                                                                 _oci.CONTAINERD_NAME: base.ref})])
                _oci.write_archive(tmp, fh)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            fh.seek(0)
            runner.run([self.name, "load"], stdin=fh, step=f"{self.name} load base")


def _describe_archive(built: BuiltImage) -> None:
    """Digest and layers of an OCI archive (docker archives: filled in after import)."""
    try:
        with tarfile.open(built.archive) as tar:
            index = json.load(tar.extractfile("index.json"))
            desc = index["manifests"][0]
            blob = lambda d: tar.extractfile("blobs/" + d.replace(":", "/"))  # noqa: E731
            manifest = json.load(blob(desc["digest"]))
            if manifest.get("mediaType", "").endswith("index.v1+json") or "manifests" in manifest:
                desc = manifest["manifests"][0]
                manifest = json.load(blob(desc["digest"]))
            built.manifest_digest = desc["digest"]
            config = json.load(blob(manifest["config"]["digest"]))
            history = [h for h in config.get("history", []) if not h.get("empty_layer")]
            built.layers = [{"digest": l["digest"], "size": l["size"], "unpacked": None,
                             "created_by": (history[i].get("created_by", "") if i < len(history) else "")[:120]}
                            for i, l in enumerate(manifest["layers"])]
    except (KeyError, ValueError, tarfile.TarError, TypeError):
        pass


def _app_layer(source: Path, *, runner: Runner, log: Log) -> tuple[bytes, str, int]:
    """The layer of the folder ``source`` at /app (sources + .pyc), cached by the sources' digest:
    .pyc bytes differ from one compile to the next (marshal), so the same app must reuse the
    same layer, byte for byte."""
    import hashlib
    import sys

    from ._context import content_digest

    key = hashlib.sha256(f"{content_digest(source)}|{_base.image_python(runner)}|{sys.version_info[:2]}"
                         .encode()).hexdigest()[:16]
    folder = _paths.image_cache_dir() / "app-layers"
    blob_file, meta_file = folder / f"{key}.tar.gz", folder / f"{key}.json"
    if blob_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return blob_file.read_bytes(), meta["diff_id"], meta["unpacked"]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="app-", dir=folder) as staging:
        app = Path(staging) / "app"
        shutil.copytree(source, app)
        _base._precompile(app, runner=runner, log=log, destdir="/app")
        blob, diff_id, unpacked = _oci.layer_from_tree(app, "app")
    tmp = blob_file.with_suffix(".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, blob_file)
    meta_file.write_text(json.dumps({"diff_id": diff_id, "unpacked": unpacked}))
    return blob, diff_id, unpacked


def _created() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_oci.MTIME))


def _prune(builds: Path) -> None:
    entries = sorted((p for p in builds.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in entries[:-KEEP_BUILDS]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


BUILDERS: dict[str, Builder] = {
    "layers": LayersBuilder(),
    "buildah": ContainerfileBuilder(
        "buildah", build=["build", "--isolation", "chroot", "--layers"], check=["info"],
        save=lambda ref, path: ["push", "--quiet", ref, f"oci-archive:{path}:{ref}"],
        install="apt-get install buildah", pull_local_base=True),
    "podman": ContainerfileBuilder(
        "podman", build=["build", "--isolation", "chroot"], check=["info"],
        save=lambda ref, path: ["save", "--format", "oci-archive", "-o", str(path), ref],
        install="apt-get install podman", pull_local_base=True),
    "docker": ContainerfileBuilder(
        "docker", build=["build"], check=["info"], save=lambda ref, path: ["save", "-o", str(path), ref],
        install="https://docs.docker.com/engine/install/ (and a running dockerd)", pull_local_base=True),
    "nerdctl": ContainerfileBuilder(
        "nerdctl", build=["build"], check=["info"], save=lambda ref, path: ["save", "-o", str(path), ref],
        install="nerdctl with buildkitd", pull_local_base=True),
}
AUTO_ORDER = ("layers", "buildah", "podman", "docker", "nerdctl")


def select_builder(name: str = "auto", *, base_image: str | None = None, runner: Runner = DEFAULT_RUNNER) -> Builder:
    """The builder ``name`` (or, for ``auto``, the first that works here)."""
    if name != "auto" and name not in BUILDERS:
        raise BuilderNotFound(f"package.builder must be one of auto, {', '.join(BUILDERS)}. Got {name!r} instead: "
                              f"no builder named {name!r}.", step="builder")
    candidates = AUTO_ORDER if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        builder = BUILDERS[candidate]
        why = builder.unavailable(base_image=base_image, runner=runner)
        if why is None:
            return builder
        reasons.append(f"{candidate}: {why}")
    if name != "auto":
        raise BuilderNotFound(f"The builder {name!r} cannot work on this machine: {reasons[0].split(': ', 1)[1]}.",
                              step="builder", hint=f"install it ({BUILDERS[name].install}), or set "
                              "package.builder: auto to use the first that works.")
    raise BuilderNotFound("No image builder works on this machine:\n  " + "\n  ".join(reasons), step="builder",
                          hint="install one of: umoci and mmdebstrap (apt-get install umoci mmdebstrap; the "
                          "fastest), buildah, podman, docker.")
