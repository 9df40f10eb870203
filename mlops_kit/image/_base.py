"""The base image: Debian's python3 plus the wheels of the training environment.

No container registry is needed: ``mmdebstrap`` makes a Debian 12 root filesystem, pip
fetches the wheels (for the image's python 3.11, whatever the host's python is) at exactly
the versions installed here, and ``umoci`` turns both into two gzip layers. The result is
cached in ``<cache dir>/image/layout-<key>``, the key being a hash of every input, so it is
built once per set of versions (``mlops-kit base build``) and each image build only adds
the app and the model on top.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

from .. import _artifact_names as _names
from .. import _paths
from ..errors import BuildError, VersionMismatch
from ._runner import DEFAULT_RUNNER, Log, Runner

#: What the server needs at runtime when ``mlops_kit.serving`` does not say.
DEFAULT_SERVING_REQUIREMENTS = ("numpy", "scipy", "scikit-learn", "skops", "starlette", "uvicorn",
                                "orjson", "msgspec", "prometheus-client", "pandas")
#: Versions that must be equal in training and serving (a pickle-like format depends on them).
MUST_MATCH = ("scikit-learn", "numpy", "scipy", "skops")

SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "libstdc++6", "ca-certificates")   # numpy/scipy wheels need libstdc++6
IMAGE_PYTHON = "3.11"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
SOURCE_DATE_EPOCH = 1700000000
APP_UID = 10001
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Bump when the way the base is made changes: a new key, a new base.
RECIPE_VERSION = "mlops-kit-base-v2"
#: Environment of the image's interpreter, for evaluating dependency markers.
_IMAGE_MARKERS = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython",
                  "extra": ""}
#: The lean (ONNX) base's recipe: its rootfs drops what a Python web server never runs
#: (perl, iconv modules, dpkg's database, python's docs/tests/IDLE) and its site-packages
#: onnxruntime's tools and the C library the Python binding does not load.
LEAN_RECIPE = "lean-v2"
_LEAN_ROOTFS_REMOVE = ("usr/bin/perl*", "usr/lib/x86_64-linux-gnu/perl-base", "usr/share/perl5",
                       "usr/lib/x86_64-linux-gnu/gconv", "var/lib/dpkg/info/*", "usr/share/doc",
                       "usr/share/common-licenses", "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/test",
                       "usr/lib/python3.11/idlelib", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/ensurepip",
                       "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/__pycache__/_pydecimal*",
                       "usr/lib/python3.11/_pydecimal.py", "usr/share/info", "usr/share/man",
                       "usr/lib/python3.11/unittest", "usr/lib/python3.11/distutils", "usr/lib/python3.11/sqlite3",
                       "usr/lib/python3.11/dbm", "usr/lib/python3.11/xmlrpc", "usr/lib/python3.11/curses",
                       "usr/lib/python3.11/lib-dynload/_sqlite3*", "usr/lib/python3.11/lib-dynload/_dbm*",
                       "usr/lib/python3.11/lib-dynload/_curses*", "usr/lib/x86_64-linux-gnu/libdb-5.3.so",
                       "usr/lib/x86_64-linux-gnu/libsqlite3.so*", "usr/bin/openssl", "usr/bin/localedef")
_LEAN_SITE_REMOVE = ("onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools",
                     "onnxruntime/datasets", "onnxruntime/backend", "onnxruntime/capi/libonnxruntime.so*",
                     "onnxruntime/ThirdPartyNotices.txt", "numpy/distutils", "numpy/f2py", "numpy/testing",
                     "numpy/_pyinstaller", "numpy/typing/tests", "bin")
#: Extension modules built with their debug symbols (uvloop: 13 MB, 1.6 MB stripped). Only
#: these are stripped: auditwheel-patched libraries (``*.libs/``) are left as they are.
_LEAN_STRIP = ("uvloop/*.so", "httptools/parser/*.so")
#: Not needed at runtime: removed from the site-packages layer.
_STRIP_DIRS = ("tests", "test", "include")
_STRIP_SUFFIXES = (".pyx", ".pxd", ".pxi", ".c", ".cpp", ".h", ".hpp", ".pyi")


@dataclass(frozen=True)
class BaseImage:
    """A cached base: an OCI layout whose image ``deps`` holds rootfs + site-packages."""

    key: str
    layout: Path
    info: dict

    @property
    def ref(self) -> str:
        return f"localhost/mlops-kit-base:{self.key}"

    @property
    def pins(self) -> dict[str, str]:
        return dict(self.info["requirements"])


# --- requirements ------------------------------------------------------------------------

def serving_requirements(runtime: str = "skops") -> list[str]:
    """The distributions the model server imports at runtime (``runtime`` ``onnx``: the lean set)."""
    try:
        from ..serving import ONNX_SERVING_REQUIREMENTS, SERVING_REQUIREMENTS  # type: ignore[attr-defined]
    except ImportError:
        return list(DEFAULT_SERVING_REQUIREMENTS)
    return list(ONNX_SERVING_REQUIREMENTS if runtime == "onnx" else SERVING_REQUIREMENTS)


def is_lean(pins: dict[str, str]) -> bool:
    """A base for ONNX models: onnxruntime and no scikit-learn (its rootfs is trimmed too)."""
    return "onnxruntime" in pins and "scikit-learn" not in pins


def pin_requirements(names: Iterable[str] | None = None) -> dict[str, str]:
    """``names`` and everything they depend on (for the image's python), each pinned to the
    version installed in this (the training) environment."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [canonicalize_name(n) for n in (names if names is not None else serving_requirements())]
    pins: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in pins:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BuildError(f"The image's requirement {name!r} must be installed in the training "
                             "environment. Got nothing installed under that name instead.",
                             step="requirements", hint=f"pip install {name}") from None
        pins[name] = dist.version
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not Marker(str(req.marker)).evaluate(dict(_IMAGE_MARKERS)):
                continue
            todo.append(canonicalize_name(req.name))
    return dict(sorted(pins.items()))


def requirements_text(pins: dict[str, str]) -> str:
    lines = ["# The training environment's versions (importlib.metadata); the image installs exactly these.",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    return "\n".join(lines) + "\n"


def check_model_versions(card: dict, pins: dict[str, str], *, card_path: str | Path = _names.MODEL_CARD) -> None:
    """Refuse, before any build, a model trained with other versions than the image holds."""
    trained = card.get("versions") or {}
    mismatches = {name: (str(trained[name]), pins.get(name, "none"))
                  for name in MUST_MATCH if name in trained and str(trained[name]) != pins.get(name)}
    if mismatches:
        wanted = " ".join(f"{n}=={t}" for n, (t, _) in sorted(mismatches.items()))
        raise VersionMismatch(
            mismatches,
            hint=(f"the versions come from {card_path} and from this environment. Either retrain the model "
                  f"here (`mlops-kit run`), or install the training versions here (`pip install {wanted}`) "
                  "and rebuild the base (`mlops-kit base build`)."))


# --- the cache ---------------------------------------------------------------------------

def base_key(pins: dict[str, str]) -> str:
    recipe = [RECIPE_VERSION, LEAN_RECIPE] if is_lean(pins) else [RECIPE_VERSION]
    text = "\n".join([*recipe, SUITE, ",".join(DEBIAN_PACKAGES),
                      *(f"{n}=={v}" for n, v in sorted(pins.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_base(pins: dict[str, str], cache: Path | None = None) -> BaseImage | None:
    """The cached base for these versions, or None."""
    key = base_key(pins)
    layout = Path(cache or _paths.image_cache_dir()) / f"layout-{key}"
    marker = layout / "base.json"
    if not marker.is_file():
        return None
    return BaseImage(key=key, layout=layout, info=json.loads(marker.read_text()))


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One base build at a time per cache (other builders wait)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def missing_tools(runner: Runner = DEFAULT_RUNNER) -> list[str]:
    return [tool for tool in ("mmdebstrap", "umoci") if runner.which(tool) is None]


def ensure_base(pins: dict[str, str] | None = None, *, cache: Path | None = None, force: bool = False,
                runner: Runner = DEFAULT_RUNNER, log: Log = print) -> BaseImage:
    """The cached base for ``pins`` (default: the serving requirements at this environment's
    versions), building it first when absent (~60-90 s)."""
    pins = pins if pins is not None else pin_requirements()
    cache = Path(cache or _paths.image_cache_dir())
    found = None if force else find_base(pins, cache)
    if found:
        return found
    with cache_lock(cache):
        found = None if force else find_base(pins, cache)
        if found:
            return found
        missing = missing_tools(runner)
        if missing:
            raise BuildError(f"Building the base image needs {', '.join(missing)}. Got no such command "
                             "on PATH instead.", step="base",
                             hint=f"apt-get install -y {' '.join(missing)} (Debian/Ubuntu), or set "
                             "package.base_image to a python 3.11 image and use buildah/docker/podman.")
        return _build_base(pins, cache, runner=runner, log=log)


def _build_base(pins: dict[str, str], cache: Path, *, runner: Runner, log: Log) -> BaseImage:
    key = base_key(pins)
    started = time.monotonic()
    log(f"base {key}: cache miss, building Debian {SUITE} + {len(pins)} wheels (about a minute, once)")
    tmp = Path(tempfile.mkdtemp(prefix="base-", dir=cache))
    try:
        rootfs = tmp / "rootfs.tar"
        site = tmp / "site"
        # the rootfs and the wheels are independent: fetch the wheels while mmdebstrap runs
        debootstrap = _start_rootfs(rootfs, tmp, runner, lean=is_lean(pins))
        _fetch_wheels(pins, site, runner=runner)
        _tidy_site(site, lean=is_lean(pins))
        _precompile(site, runner=runner, log=log, destdir="/" + SITE_PACKAGES)
        site_tar = tmp / "site.tar"
        _tar_tree(site, site_tar, prefix=SITE_PACKAGES)
        out, err = debootstrap.communicate()
        if debootstrap.returncode != 0:
            raise BuildError(f"mmdebstrap exited with {debootstrap.returncode}:\n"
                             + "\n".join(err.decode(errors="replace").splitlines()[-30:]),
                             step="base", hint="mmdebstrap needs a Debian mirror (apt sources) and root "
                             "or unprivileged user namespaces.")
        log(f"base {key}: rootfs and wheels ready after {time.monotonic() - started:.0f} s; compressing layers")
        layout = tmp / "layout"
        umoci = ["umoci"]
        runner.run([*umoci, "init", "--layout", layout], step="umoci init")
        runner.run([*umoci, "new", "--image", f"{layout}:deps"], step="umoci new")
        runner.run([*umoci, "raw", "add-layer", "--image", f"{layout}:deps", "--history.created_by",
                    f"mmdebstrap {SUITE} {','.join(DEBIAN_PACKAGES)}", rootfs], step="umoci add-layer (rootfs)")
        runner.run([*umoci, "raw", "add-layer", "--image", f"{layout}:deps", "--history.created_by",
                    "pip install --no-deps " + " ".join(f"{n}=={v}" for n, v in pins.items()), site_tar],
                   step="umoci add-layer (site-packages)")
        runner.run([*umoci, "config", "--image", f"{layout}:deps",
                    "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--config.env", "PYTHONDONTWRITEBYTECODE=1", "--config.env", "PYTHONUNBUFFERED=1",
                    "--config.workingdir", "/app"], step="umoci config")
        info = {"key": key, "suite": SUITE, "debian_packages": list(DEBIAN_PACKAGES),
                "requirements": pins, "diff_sizes": [rootfs.stat().st_size, site_tar.stat().st_size],
                "seconds": round(time.monotonic() - started, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (layout / "base.json").write_text(json.dumps(info, indent=2) + "\n")   # the completeness marker
        final = cache / f"layout-{key}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(layout, final)
        log(f"base {key}: cached in {final} ({info['seconds']} s)")
        return BaseImage(key=key, layout=final, info=info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _start_rootfs(target: Path, tmp: Path, runner: Runner, *, lean: bool = False) -> subprocess.Popen:
    hook = (f'rm -rf "$1"/var/cache/* "$1"/var/log/* "$1"/var/lib/apt/lists/*; '
            f'echo "app:x:{APP_UID}:{APP_UID}:app:/app:/usr/sbin/nologin" >> "$1"/etc/passwd; '
            f'echo "app:x:{APP_UID}:" >> "$1"/etc/group; mkdir -p "$1"/app')
    if lean:
        hook += "; " + " ".join(f'rm -rf "$1"/{pattern};' for pattern in _LEAN_ROOTFS_REMOVE)
    argv = ["mmdebstrap", "--quiet", "--variant=essential", "--include=" + ",".join(DEBIAN_PACKAGES),
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*", "--customize-hook=" + hook, SUITE, str(target)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    return runner.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp)


def _fetch_wheels(pins: dict[str, str], site: Path, *, runner: Runner) -> None:
    # --ignore-requires-python: the versions are those installed and working here; a release
    # asking for a later 3.11.x than Debian's (soupsieve 4.1: >=3.11.5) is still the one recorded
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--no-compile", "--root-user-action=ignore", "--ignore-requires-python", "--target", str(site),
            "--only-binary=:all:",
            "--python-version", IMAGE_PYTHON, "--implementation", "cp", "--abi", "cp311"]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    argv += [f"{name}=={version}" for name, version in pins.items()]
    runner.run(argv, step="pip (wheels for the image)", timeout=900)
    shutil.rmtree(site / "bin", ignore_errors=True)


def _tidy_site(site: Path, *, lean: bool = False) -> None:
    if lean:
        for pattern in _LEAN_SITE_REMOVE:
            for path in site.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        strip = shutil.which("strip")
        for pattern in _LEAN_STRIP if strip else ():
            for path in site.glob(pattern):
                subprocess.run([strip, "--strip-unneeded", str(path)], check=False, capture_output=True)
    for root, dirs, files in os.walk(site, topdown=True):
        here = Path(root)
        for name in list(dirs):
            if name in _STRIP_DIRS or name == "__pycache__":
                shutil.rmtree(here / name)
                dirs.remove(name)
        for name in files:
            if name.endswith(_STRIP_SUFFIXES):
                (here / name).unlink()


def image_python(runner: Runner = DEFAULT_RUNNER) -> str | None:
    """A python 3.11 on this machine (the image's version), to precompile .pyc files."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for name in ("python3.11", "/usr/bin/python3.11"):
        found = runner.which(name)
        if found:
            return found
    return None


def _precompile(tree: Path, *, runner: Runner, log: Log, destdir: str) -> None:
    """``.pyc`` next to the sources, checked by hash rather than mtime (the layer's mtimes are fixed)."""
    python = image_python(runner)
    if python is None:
        log("no python 3.11 on this machine: the image ships without precompiled .pyc (slower start)")
        return
    # -d: the path the files have in the image (tracebacks; and the same bytes from any build folder)
    runner.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                "-d", destdir, str(tree)], step="compileall", check=False)


def _tar_tree(tree: Path, target: Path, *, prefix: str) -> None:
    import tarfile
    from . import _oci

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        _oci.add_tree(tar, tree, prefix)
