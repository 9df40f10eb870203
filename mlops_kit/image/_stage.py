"""The stage image: what a stage's pod runs when ``execution.mode`` is kubernetes and
``execution.image`` is empty.

Two parts, built by the serving image's machinery (``_base``, ``_builders``):

* a base of the training environment: the kit's runtime requirements - the installed
  ``mlops-kit`` distribution's own, extras left out, never a hand list - and everything they
  depend on, pinned to the versions installed here (:func:`~._base.pin_requirements`, the
  versions the fingerprints record). Same cache and lock as the serving base, its own key;
* one layer at /app: this checkout's ``mlops_kit`` package and ``notebooks/``.

The tag is a content hash of both (the base's key, the layer's files), so an unchanged
environment and checkout give the same reference, and the reference is known without building
(``mlops-kit run --dry-run``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import _paths
from ..errors import BuildError
from . import _base, _builders
from ._runner import DEFAULT_RUNNER, Log, Runner

#: The repository of the stage image: ``localhost/mlops-kit/stage`` (containerd and MicroK8s take
#: ``localhost/`` as it is), or under ``package.registry`` when the image is pushed there.
STAGE_NAME = "mlops-kit/stage"
#: Bump when the way the stage image is made changes.
STAGE_RECIPE = "mlops-kit-stage-v1"
DISTRIBUTION = "mlops-kit"
APP_DIR = "/app"
ENV = {"PYTHONPATH": APP_DIR, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
CMD = ["python3", "-m", "mlops_kit.execution.job"]
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")


def stage_requirements() -> list[str]:
    """The names the installed ``mlops-kit`` distribution requires (its extras left out)."""
    from packaging.requirements import Requirement

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise BuildError(f"The stage image needs the {DISTRIBUTION} distribution installed in this environment "
                         "(its requirements are the image's). Got nothing installed under that name instead.",
                         step="requirements", hint="pip install -e . in the checkout (make setup).") from None
    names = []
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(dict(_base._IMAGE_MARKERS)):
            names.append(req.name)
    return names


@dataclass(frozen=True)
class StageImage:
    """The stage image's reference and inputs, known before any build."""

    ref: str
    tag: str
    pins: dict[str, str]
    base_key: str
    source: Path             # the staged layer: mlops_kit/ and notebooks/


def _stage_source(folder: Path) -> Path:
    source = folder / "app"
    shutil.copytree(_paths.PACKAGE_DIR, source / "mlops_kit", ignore=_IGNORE)
    shutil.copytree(_paths.notebooks_dir(), source / "notebooks", ignore=_IGNORE)
    return source


def describe(folder: Path, *, registry: str | None = None) -> StageImage:
    """Stage the layer's files in ``folder`` and name the image (nothing is built)."""
    from ._context import content_digest

    pins = _base.pin_requirements(stage_requirements())
    key = _base.base_key(pins)
    source = _stage_source(folder)
    tag = content_digest(source, extra=[STAGE_RECIPE, key])[:16]
    ref = f"{registry.rstrip('/') if registry else 'localhost'}/{STAGE_NAME}:{tag}"
    return StageImage(ref=ref, tag=tag, pins=pins, base_key=key, source=source)


def stage_ref(*, registry: str | None = None) -> str:
    """The reference :func:`stage_image` would build, without building it."""
    with tempfile.TemporaryDirectory(prefix="mlops-kit-stage-") as folder:
        return describe(Path(folder), registry=registry).ref


def stage_image(*, registry: str | None = None, force: bool = False, runner: Runner = DEFAULT_RUNNER,
                log: Log = print) -> _builders.BuiltImage:
    """The stage image as an OCI layout in the builds folder: found there when this
    environment and checkout built it before, else built (the base, once per set of versions;
    then the layer, seconds)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlops-kit-stage-") as folder:
        stage = describe(Path(folder), registry=registry)
        layout = _paths.image_builds_dir() / f"stage-{stage.tag}"
        found = None if force else _builders.read_built(layout, stage.ref)
        if found is not None:
            found.seconds = time.monotonic() - started
            log(f"stage image {stage.ref}: cached ({layout})")
            return found
        base = _base.ensure_base(stage.pins, force=force, runner=runner, log=log)
        layer = (*_builders._app_layer(stage.source, runner=runner, log=log),
                 "COPY mlops_kit/ notebooks/ /app/ (+ .pyc)")
        labels = {"org.opencontainers.image.title": STAGE_NAME, "org.opencontainers.image.version": stage.tag,
                  "io.mlops-kit.base-key": base.key}
        # no USER: the pod runs as its Job says (it writes the run folder on the volume)
        return _builders.assemble(base, [layer], ref=stage.ref, tag=layout.name, env=ENV,
                                  config={"Cmd": CMD, "Entrypoint": None, "WorkingDir": APP_DIR},
                                  labels=labels, started=started, log=log)
