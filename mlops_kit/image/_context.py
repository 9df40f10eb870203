"""The build context in a run: ``artifacts/context/``.

::

    Containerfile      readable; `buildah build -t NAME artifacts/context` works by hand
    requirements.txt   the training environment's versions, pinned
    app/mlops_kit/     the serving modules (found by following the server's imports)
    model/             model.skops model_card.json schema.json examples.json monitor_profile.json (the last layer;
                       an ONNX model: model.onnx onnx.json instead of model.skops, and a lean
                       base without scikit-learn, scipy or pandas)
    context.json       tag, ref, content digest, base

The image tag is ``<run id>-<12 hex of the content digest>``: the same run and content give
the same tag, any change a new one, never ``:latest``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import _artifact_names as _names
from .. import _atomic, _paths, artifacts, model_io
from ..errors import ArtifactError, VersionMismatch
from . import _base

CONTEXT_DIR = "context"
CONTEXT_RECORD = "context.json"
#: The model layer: the model, its card, schema and examples, and the monitoring profile (the
#: server counts live traffic in its bins).
MODEL_FILES = (_names.MODEL, _names.MODEL_CARD, _names.SCHEMA, _names.EXAMPLES, _names.MONITOR_PROFILE)
#: The model layer of an ONNX image: no skops file (nothing could load it there).
ONNX_MODEL_FILES = (_names.ONNX_MODEL, _names.ONNX_REPORT, _names.MODEL_CARD, _names.SCHEMA, _names.EXAMPLES,
                    _names.MONITOR_PROFILE)
APP_DIR_IN_IMAGE = "/app"
MODEL_DIR_IN_IMAGE = "/app/model"
#: Where the server writes its request log in a container (a volume: the root file system is
#: read-only; on MicroK8s an emptyDir, see k8s/deployment.yaml)
REQUEST_LOG_DIR_IN_IMAGE = "/var/lib/mlops-kit/requests"
PORT = 8080
CMD = ["python3", "-m", "mlops_kit.serving", "--model-dir", MODEL_DIR_IN_IMAGE, "--host", "0.0.0.0"]
ENV = {"PYTHONPATH": APP_DIR_IN_IMAGE, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
       "PORT": str(PORT)}
USER = f"{_base.APP_UID}:{_base.APP_UID}"


@dataclass(frozen=True)
class Context:
    """A written build context and what the image built from it will be called."""

    path: Path
    run_id: str
    image: str               # repository, as in package.image
    ref: str                 # full reference: registry/repository:tag
    tag: str
    digest: str              # sha256 of the context's content
    base: dict               # {"key": ...} (local base) or {"image": ...} (pulled)
    requirements: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> Path:
        return self.path / "app"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def labels(self) -> dict[str, str]:
        return {"org.opencontainers.image.title": self.image, "org.opencontainers.image.version": self.tag,
                "io.mlops-kit.run-id": self.run_id, "io.mlops-kit.content-digest": self.digest}

    @classmethod
    def read(cls, path: Path) -> "Context":
        record = json.loads((Path(path) / CONTEXT_RECORD).read_text())
        return cls(path=Path(path), **{k: record[k] for k in
                                       ("run_id", "image", "ref", "tag", "digest", "base", "requirements")})


# --- checks before a build ------------------------------------------------------------------

def check_gate(artifacts: Path) -> None:
    """Refuse to package a model that was never evaluated, or failed 03_evaluate's gate."""
    from ..stages import check_inputs

    check_inputs("package", artifacts)


def check_model(artifacts: Path, files: tuple[str, ...] = MODEL_FILES) -> dict:
    """The model files are there and the model is the one its card describes; returns the card."""
    artifacts = Path(artifacts)
    missing = [name for name in files if not (artifacts / name).is_file()]
    if missing:
        raise ArtifactError(f"The image needs {', '.join(missing)} in {artifacts}. Got no such file instead.",
                            path=artifacts / missing[0], hint="run the train stage (02_train) first.")
    card = model_io.read_card(artifacts)
    actual = _atomic.sha256_file(artifacts / model_io.MODEL_FILE)
    if card.get("sha256") != actual:
        raise ArtifactError(f"{artifacts / model_io.MODEL_FILE} must have the sha256 of its model card "
                            f"({card.get('sha256')}). Got {actual} instead.", path=artifacts / model_io.MODEL_FILE)
    return card


# --- what the server needs --------------------------------------------------------------------

def serving_modules() -> list[str]:
    """Files of the ``mlops_kit`` package the server imports (paths relative to the package),
    found by following imports from ``mlops_kit/serving/`` - nothing else of the kit goes in."""
    package = _paths.PACKAGE_DIR
    todo = ["__init__.py", *sorted(p.relative_to(package).as_posix()
                                   for p in (package / "serving").rglob("*.py") if "__pycache__" not in p.parts)]
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen or not (package / rel).is_file():
            continue
        seen.add(rel)
        module_parts = rel[:-3].split("/")
        if module_parts[-1] == "__init__":
            module_parts = module_parts[:-1]
        package_parts = module_parts if rel.endswith("__init__.py") else module_parts[:-1]
        tree = ast.parse((package / rel).read_text(), filename=str(package / rel))
        for node in ast.walk(tree):
            targets: list[list[str]] = []
            if isinstance(node, ast.Import):
                targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "mlops_kit"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package_parts[:len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                    mod = anchor + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "mlops_kit":
                    mod = node.module.split(".")[1:]
                else:
                    continue
                targets = [mod] + [mod + [a.name] for a in node.names]
            for parts in targets:
                for i in range(len(parts) + 1):          # the module and every package above it
                    prefix = parts[:i]
                    todo += ["/".join(prefix + ["__init__.py"]), "/".join(prefix) + ".py" if prefix else "__init__.py"]
    # data files next to the serving modules (templates, json)
    extra = [p.relative_to(package).as_posix() for p in (package / "serving").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    return sorted(seen | set(extra))


# --- writing the context ------------------------------------------------------------------------

def image_reference(image: str, tag: str, registry: str | None = None) -> str:
    """The full reference containerd and Kubernetes use (``docker.io/`` when no registry is named)."""
    if registry:
        return f"{registry.rstrip('/')}/{image}:{tag}"
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return f"{image}:{tag}"
    return f"docker.io/{image if '/' in image else 'library/' + image}:{tag}"


def safe_tag(text: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", text).lstrip(".-") or "run"
    return tag[:100]


def containerfile(*, base_ref: str, install_requirements: bool, labels: dict[str, str]) -> str:
    label_lines = " \\\n      ".join(f'{k}="{v}"' for k, v in labels.items())
    env_line = " \\\n    ".join(f"{k}={v}" for k, v in ENV.items())
    cmd = json.dumps(CMD)
    return f"""\
# The model server image of one run, written by mlops-kit (04_package).
# Build it by hand from this folder:   buildah build -t NAME .   (or docker/podman build)
#
# BASE_IMAGE: the kit's local base (Debian 12 python3 + the pinned wheels, made without any
# registry by `mlops-kit base build`; buildah/podman get it with
#   buildah pull oci:$HOME/.cache/mlops-kit/image/layout-<key>:deps && buildah tag <id> {base_ref}
# ) or, on a machine that can pull, a python 3.11 image with INSTALL_REQUIREMENTS=1:
#   buildah build --build-arg BASE_IMAGE=python:3.11-slim-bookworm --build-arg INSTALL_REQUIREMENTS=1 -t NAME .
ARG BASE_IMAGE={base_ref}
FROM ${{BASE_IMAGE}}
ARG INSTALL_REQUIREMENTS={1 if install_requirements else 0}

# 1. dependencies, pinned to the training environment's versions (changes rarely)
COPY requirements.txt /opt/mlops-kit/requirements.txt
RUN if [ "$INSTALL_REQUIREMENTS" = 1 ]; then \\
      python3 -m pip install --no-cache-dir --no-deps --only-binary=:all: -r /opt/mlops-kit/requirements.txt && \\
      python3 -m compileall -q --invalidation-mode unchecked-hash \\
        "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \\
    fi

# 2. the serving app (changes with the kit), precompiled so the server starts fast
COPY app/ {APP_DIR_IN_IMAGE}/
RUN python3 -m compileall -q --invalidation-mode unchecked-hash {APP_DIR_IN_IMAGE}/mlops_kit

# 3. the model, last: a new model is one small layer
COPY model/ {MODEL_DIR_IN_IMAGE}/

ENV {env_line}
LABEL {label_lines}
WORKDIR {APP_DIR_IN_IMAGE}
# non-root; the server writes nothing, so a read-only root file system works
USER {USER}
EXPOSE {PORT}
CMD {cmd}
"""


def check_onnx(folder: Path, card: dict, pins: dict[str, str]) -> None:
    """The ONNX model passed its verification, was compiled from this model, matches its
    sha256 and the image's onnxruntime is the one that verified it."""
    path = folder / artifacts.ONNX_REPORT.name
    report = artifacts.read_document(path, artifacts.OnnxReport)
    if not report.passed:
        raise ArtifactError(f"{path} must record a verified ONNX model. Got a failed verification instead: "
                            f"{report.reason}", path=path, hint="package with runtime skops (or auto).")
    if report.model_sha256 != card.get("sha256"):
        raise ArtifactError(f"{path} must be compiled from this model ({card.get('sha256')}). Got "
                            f"{report.model_sha256} instead.", path=path, hint="package the run again.")
    onnx_path = folder / artifacts.ONNX_MODEL.name
    actual = _atomic.sha256_file(onnx_path)
    if actual != report.sha256:
        raise ArtifactError(f"{onnx_path} must have the sha256 recorded in {path} ({report.sha256}). Got "
                            f"{actual} instead.", path=onnx_path)
    verified = report.versions.get("onnxruntime")
    if verified and pins.get("onnxruntime") != verified:
        raise VersionMismatch({"onnxruntime": (verified, pins.get("onnxruntime", "none"))},
                              hint="package the run again in this environment (the ONNX model is verified "
                              "with the onnxruntime the image gets).")


def write_context(artifacts_dir: Path, *, run_id: str, image: str, registry: str | None = None,
                  base_image: str | None = None, pins: dict[str, str] | None = None,
                  runtime: str = "skops") -> Context:
    """Check the model and write ``artifacts/context/`` (replacing an older one atomically).
    ``runtime`` ``onnx``: the compiled model and the lean requirements."""
    artifacts = Path(artifacts_dir)
    check_gate(artifacts)
    model_files = ONNX_MODEL_FILES if runtime == "onnx" else MODEL_FILES
    card = check_model(artifacts, model_files) if runtime != "onnx" else _check_card(artifacts, model_files)
    pins = pins if pins is not None else _base.pin_requirements(_base.serving_requirements(runtime))
    if runtime == "onnx":
        check_onnx(artifacts, card, pins)
    else:
        _base.check_model_versions(card, pins, card_path=artifacts / model_io.CARD_FILE)
    base = {"image": base_image} if base_image else {"key": _base.base_key(pins)}
    base_ref = base_image or f"localhost/mlops-kit-base:{base['key']}"

    staging = Path(tempfile.mkdtemp(prefix=".context-", dir=artifacts))
    try:
        (staging / "requirements.txt").write_text(_base.requirements_text(pins))
        for rel in serving_modules():
            dest = staging / "app" / "mlops_kit" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_paths.PACKAGE_DIR / rel, dest)
        (staging / "model").mkdir()
        for name in model_files:
            shutil.copyfile(artifacts / name, staging / "model" / name)
        digest = content_digest(staging, extra=[base_ref, image])
        tag = f"{safe_tag(run_id)}-{digest[:12]}"
        ref = image_reference(image, tag, registry)
        context = Context(path=artifacts / CONTEXT_DIR, run_id=run_id, image=image, ref=ref, tag=tag,
                          digest=digest, base=base, requirements=pins)
        (staging / "Containerfile").write_text(containerfile(base_ref=base_ref, install_requirements=bool(base_image),
                                                             labels=context.labels))
        (staging / ".containerignore").write_text(f"{CONTEXT_RECORD}\n")
        (staging / CONTEXT_RECORD).write_text(json.dumps(
            {"run_id": run_id, "image": image, "ref": ref, "tag": tag, "digest": digest, "base": base,
             "requirements": pins}, indent=2) + "\n")
        final = artifacts / CONTEXT_DIR
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".context-old-", dir=artifacts))
            os.replace(final, old / "context")
        os.replace(staging, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return context
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_card(folder: Path, files: tuple[str, ...]) -> dict:
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"The image needs {', '.join(missing)} in {folder}. Got no such file instead.",
                            path=folder / missing[0], hint="run the train stage (02_train) and package again.")
    return model_io.read_card(folder)


def content_digest(folder: Path, *, extra: list[str] = ()) -> str:
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (CONTEXT_RECORD, "Containerfile", ".containerignore"):
            continue
        digest.update(rel.encode() + b"\0" + _atomic.sha256_file(path).encode() + b"\n")
    return digest.hexdigest()
