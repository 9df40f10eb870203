"""04_package: the model server's container image, built without a Docker daemon or a
registry, and put into containerd.

    package(run_dir, params)      check gate + model + versions, write artifacts/context/,
                                  build, import into containerd (or push), write image.json
    build_base()                  the cached Debian + wheels base (`mlops-kit base build`)

Each step is a function of its own (``write_context``, ``build``, ``import_image``,
``push_image``); the command runner is injectable (``runner=``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import _paths
from .. import artifacts as _artifacts
from ..errors import ArtifactError, BuildError, ContainerdError
from ._base import APP_UID, BaseImage, check_model_versions, ensure_base, pin_requirements, serving_requirements
from ._builders import AUTO_ORDER, BUILDERS, BuiltImage, select_builder
from ._containerd import Containerd
from . import _context, _oci as oci
from ._context import CONTEXT_DIR, MODEL_DIR_IN_IMAGE, REQUEST_LOG_DIR_IN_IMAGE, Context, serving_modules, write_context
from ._runner import DEFAULT_RUNNER, Log, Runner, _build_error as build_error, tail
from ._stage import StageImage, stage_image, stage_ref, stage_requirements

IMAGE_RECORD = _artifacts.IMAGE.name  # kept for callers of the old name

__all__ = ["package", "build", "ship_built", "ensure_stage_image", "stage_ref", "stage_image", "stage_requirements", "StageImage", "detect_builders", "build_base", "import_image", "push_image", "write_context", "select_builder",
           "resolve_run_dir", "read_image_record", "image_table", "Containerd", "Context", "BuiltImage",
           "BaseImage", "BUILDERS", "AUTO_ORDER", "IMAGE_RECORD", "pin_requirements", "serving_requirements",
           "serving_modules", "check_model_versions", "CONTEXT_DIR", "MODEL_DIR_IN_IMAGE", "REQUEST_LOG_DIR_IN_IMAGE", "APP_UID", "DEFAULT_RUNNER", "Runner",
           "Log", "build_error", "tail", "oci"]


def resolve_run_dir(run_dir: str | Path = "") -> Path:
    """``run_dir`` as papermill passes it; "" is the scratch run a hand-opened notebook uses."""
    return Path(run_dir) if run_dir else _paths.runs_dir() / (_paths.SCRATCH_RUN)


def detect_builders(base_image: str | None = None, *, runner: Runner = DEFAULT_RUNNER) -> dict[str, str | None]:
    """Each builder the kit knows, in the order ``auto`` tries them: None when it works here,
    else why not (what the BuildPanel shows, and what ``auto`` chooses from)."""
    return {name: BUILDERS[name].unavailable(base_image=base_image, runner=runner) for name in AUTO_ORDER}


def build_base(*, force: bool = False, runner: Runner = DEFAULT_RUNNER, log: Log = print) -> BaseImage:
    """The base (Debian rootfs + this environment's serving wheels), built once and cached."""
    return ensure_base(pin_requirements(), force=force, runner=runner, log=log)


def build(context: Context, builder: str = "auto", *, base_image: str | None = None,
          runner: Runner = DEFAULT_RUNNER, log: Log = print) -> BuiltImage:
    return select_builder(builder, base_image=base_image, runner=runner).build(context, runner=runner, log=log)


def import_image(built: BuiltImage, containerd: Containerd, *, log: Log = print) -> str:
    """Import into containerd and check the digest; returns the digest containerd holds."""
    containerd.check()
    started = time.monotonic()
    containerd.import_archive(built.write_archive)
    digest = containerd.image_digest(built.ref)
    if digest is None:
        raise ContainerdError(f"After the import, {containerd.describe()} must hold {built.ref}. Got no such image "
                              "instead.")
    if built.manifest_digest and digest != built.manifest_digest:
        raise ContainerdError(f"The imported image {built.ref} must have the digest {built.manifest_digest}. "
                              f"Got {digest} instead.", hint="another build may have imported the same tag at the "
                              "same time; build again.")
    built.manifest_digest = digest
    log(f"imported {built.ref} into {containerd.describe()} in {time.monotonic() - started:.2f} s ({digest[:19]})")
    return digest


def push_image(built: BuiltImage, registry: str, *, insecure: bool = True, log: Log = print) -> str:
    """Push an OCI layout to a registry (OCI distribution API, e.g. MicroK8s' localhost:32000)."""
    if built.layout is None:
        raise BuildError(f"Pushing needs the layers builder's OCI layout. Got a {built.builder} archive instead.",
                         step="push", hint=f"push with `{built.builder} push {built.ref}`, or use builder layers.")
    from . import _oci

    ref = built.ref
    registry = registry.rstrip("/")
    if not ref.startswith(registry + "/"):
        raise BuildError(f"The image reference must start with {registry}/. Got {ref} instead.", step="push")
    repo, tag = ref[len(registry) + 1:].rsplit(":", 1)
    scheme = "http" if insecure else "https"
    base = f"{scheme}://{registry}/v2/{repo}"

    def call(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=120)
        except urllib.error.HTTPError as exc:
            if method == "HEAD" and exc.code == 404:
                return None
            raise BuildError(f"The registry {registry} refused {method} {url}: HTTP {exc.code} "
                             f"{exc.read()[:300].decode(errors='replace')}", step="push") from None
        except urllib.error.URLError as exc:
            raise BuildError(f"The registry {registry} must answer at {scheme}://{registry}/v2/. Got {exc.reason} "
                             "instead.", step="push", hint="MicroK8s: `microk8s enable registry`.") from None

    manifest_bytes = _oci.blob_path(built.layout, built.manifest_digest).read_bytes()
    manifest = json.loads(manifest_bytes)
    for desc in [manifest["config"], *manifest["layers"]]:
        if call("HEAD", f"{base}/blobs/{desc['digest']}") is not None:
            continue
        start = call("POST", f"{base}/blobs/uploads/", b"")
        location = urllib.parse.urljoin(f"{scheme}://{registry}", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        call("PUT", f"{location}{sep}digest={urllib.parse.quote(desc['digest'])}",
             _oci.blob_path(built.layout, desc["digest"]).read_bytes(),
             {"Content-Type": "application/octet-stream"})
    call("PUT", f"{base}/manifests/{tag}", manifest_bytes, {"Content-Type": _oci.MANIFEST})
    log(f"pushed {ref} to {registry}")
    return built.manifest_digest


def package(run_dir: str | Path, params: Any = None, *, run_id: str | None = None, builder: str | None = None,
            import_into_containerd: bool | None = None, runner: Runner = DEFAULT_RUNNER,
            log: Log = print) -> dict:
    """The whole 04_package stage for one run folder; returns the image record (also written,
    atomically, to ``artifacts/image.json``). ``params``: RunParams or PackageParams."""
    from ..params import PackageParams

    started = time.monotonic()
    run_dir = resolve_run_dir(run_dir)
    artifacts = run_dir / _paths.ARTIFACTS_SUBDIR
    pkg = getattr(params, "package", params) or PackageParams()
    run_id = run_id or run_dir.name
    builder = builder or pkg.builder
    do_import = pkg.import_image if import_into_containerd is None else import_into_containerd
    if not artifacts.is_dir():
        raise ArtifactError(f"The run folder must hold artifacts/. Got no folder {artifacts} instead.",
                            path=artifacts, hint="run the data, train and evaluate stages first.")
    # every check (gate, model, versions, builder, containerd) before the expensive part
    runtime = compile_for(artifacts, getattr(pkg, "runtime", "auto"), log=log)
    context = write_context(artifacts, run_id=run_id, image=pkg.image, registry=pkg.registry,
                            base_image=pkg.base_image, runtime=runtime)
    chosen = select_builder(builder, base_image=pkg.base_image, runner=runner)
    server = _server_of(params, run_dir)
    containerd = Containerd(pkg.containerd_socket, pkg.containerd_namespace, runner=runner)
    if do_import and server:
        from ..server import SSH

        ssh = SSH.from_params(server)
        with ssh.multiplexed():      # one SSH connection for the preflight, the shipping and the checks
            return _package_built(run_dir, run_id, pkg, context, chosen, containerd, do_import, ssh, started,
                                  runner, log, server=server, runtime=runtime)
    if do_import and not pkg.registry:
        containerd.check()
    return _package_built(run_dir, run_id, pkg, context, chosen, containerd, do_import, None, started, runner, log,
                          runtime=runtime)


def _package_built(run_dir, run_id, pkg, context, chosen, containerd, do_import, ssh, started, runner, log, *,
                   server=None, runtime: str = "skops") -> dict:
    server_status = None
    if ssh is not None:
        from ..server.ship import preflight

        server_status = preflight(ssh)      # MicroK8s there and usable, before the build
    context_seconds = time.monotonic() - started
    log(f"context {context.path} ({context.tag}); builder {chosen.name}")
    built = chosen.build(context, runner=runner, log=log)
    import_started = time.monotonic()
    where: dict[str, Any] | None = None
    if do_import or pkg.registry:
        where = ship_built(built, pkg, containerd, ssh=ssh if do_import else None, server=server,
                           server_status=server_status, log=log)
    import_seconds = time.monotonic() - import_started
    record = {
        "ref": built.ref, "tag": context.tag, "image": pkg.image, "digest": built.manifest_digest,
        "run_id": run_id, "builder": built.builder, "content_digest": context.digest,
        "size": {"compressed": built.compressed_size, "unpacked": built.unpacked_size},
        "layers": built.layers, "base": {**context.base, **({"ref": built.base_ref} if built.base_ref else {})},
        "imported": where if do_import or pkg.registry else None,
        "layout": str(built.layout) if built.layout else None,
        "archive": str(built.archive) if built.archive else None,
        "requirements": context.requirements,
        "runtime": runtime,
        "seconds": {"context": round(context_seconds, 3), "build": round(built.seconds, 3),
                    "import": round(import_seconds, 3), "total": round(time.monotonic() - started, 3)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _artifacts.IMAGE.save(run_dir, record)
    return record


def ship_built(built: BuiltImage, pkg: Any, containerd: Containerd, *, ssh: Any = None, server: Any = None,
               server_status: dict | None = None, skip_present: bool = False, log: Log = print) -> dict:
    """Send a built image where the cluster's kubelet finds it: the team's server (``ssh``, over
    its registry addon or into its containerd), ``package.registry``, else ``containerd`` (local
    MicroK8s). Returns where it went (the image record's ``imported``); ``built.ref`` may change
    (the server's registry name). ``skip_present``: nothing is imported into a local containerd
    that holds the same digest already."""
    if ssh is not None:
        from ..server.ship import ship

        return ship(built, ssh, namespace=pkg.containerd_namespace, registry_port=server.registry_port,
                    status=server_status, log=log)
    if pkg.registry:
        push_image(built, pkg.registry, log=log)
        return {"registry": pkg.registry}
    where = {"containerd": containerd.socket or "microk8s", "namespace": containerd.namespace}
    if skip_present and built.manifest_digest and containerd.image_digest(built.ref) == built.manifest_digest:
        log(f"{built.ref} is in {containerd.describe()} already ({built.manifest_digest[:19]})")
        return {**where, "present": True}
    import_image(built, containerd, log=log)
    return where


def ensure_stage_image(params: Any, *, runner: Runner = DEFAULT_RUNNER, log: Log = print) -> str:
    """The stage image built (or found cached) and shipped to the run's cluster as a serving
    image is (the team's server when ``server.host`` is set, else ``package.registry``, else
    the containerd of ``package.containerd_socket`` / MicroK8s); returns the reference the
    Jobs use."""
    pkg = params.package
    built = stage_image(registry=pkg.registry, runner=runner, log=log)
    containerd = Containerd(pkg.containerd_socket, pkg.containerd_namespace, runner=runner)
    server = params.server if getattr(params.server, "host", None) else None
    if server is None:
        ship_built(built, pkg, containerd, skip_present=True, log=log)
        return built.ref
    from ..server import SSH
    from ..server.ship import preflight

    ssh = SSH.from_params(server)
    with ssh.multiplexed():
        ship_built(built, pkg, containerd, ssh=ssh, server=server, server_status=preflight(ssh), log=log)
    return built.ref


def compile_for(artifacts: Path, runtime: str = "auto", *, log: Log = print) -> str:
    """Compile the model to ONNX (``onnx.json``, ``model.onnx``) unless ``runtime`` is skops;
    returns the runtime the image gets: onnx when the compiled model passed its verification."""
    if runtime == "skops":
        return "skops"
    from .. import artifacts as catalog
    from ..compile import compile_model

    _context.check_gate(artifacts)          # a refused model is not compiled either
    if runtime == "auto" and not catalog.TEST_SPLIT.path(artifacts).is_file():
        log("no test split to verify an ONNX model against: the image serves the skops model")
        return "skops"
    report = compile_model(artifacts)
    if report.passed:
        check = report.check
        log(f"ONNX: verified on {check.rows} test rows + {check.edge_rows} edge rows (max |{check.compared} "
            f"difference| {check.max_abs_diff:.2g}): the image serves model.onnx with onnxruntime")
        return "onnx"
    if runtime == "onnx":
        raise ArtifactError(f"package.runtime onnx needs a verified ONNX model. Got: {report.reason}",
                            path=artifacts / catalog.ONNX_REPORT.name, hint="set package.runtime to auto or skops.")
    log(f"ONNX: not used ({report.reason}); the image serves the skops model")
    return "skops"


def _server_of(params: Any, run_dir: Path):
    """``server`` of the parameters, else of the run's record (the 04_package notebook passes the
    package section only); None when no ``server.host`` is set."""
    server = getattr(params, "server", None)
    if server is None:
        from ..ledger import recorded_params

        try:
            recorded = recorded_params(run_dir) or {}
        except (OSError, ArtifactError):
            recorded = {}
        if (recorded.get("server") or {}).get("host"):
            from ..params import ServerParams

            server = ServerParams(**recorded["server"])
    return server if server is not None and server.host else None


def read_image_record(run_dir: str | Path) -> dict:
    """``artifacts/image.json`` of a run, validated (ArtifactError naming the package stage when
    it is missing)."""
    return _artifacts.IMAGE.load(run_dir).to_json()


def image_table(record: dict):
    """The image record as a small table (pandas) for the notebook."""
    import pandas as pd

    mib = 1024 * 1024
    rows = [("ref", record["ref"]), ("digest", record["digest"]), ("builder", record["builder"]),
            ("compressed", f"{record['size']['compressed'] / mib:.1f} MiB"),
            ("unpacked", f"{(record['size']['unpacked'] or 0) / mib:.1f} MiB"),
            ("layers", len(record["layers"])),
            ("new layers", ", ".join(f"{l['created_by'][:30]} ({l['size'] / 1024:.0f} KiB)"
                                     for l in record["layers"] if not l.get("base", False))),
            ("imported", json.dumps(record.get("imported"))),
            ("seconds", json.dumps(record["seconds"]))]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")
