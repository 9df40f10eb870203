"""OCI image layouts, written by hand: deterministic layers, blobs, manifests, archives.

The same inputs give the same bytes (fixed mtimes, owners and order), so an image's digest
depends on its content only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import IO

MTIME = 1700000000
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def _info(name: str, *, mode: int, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def add_parents(tar: tarfile.TarFile, prefix: str) -> None:
    parts = [p for p in prefix.strip("/").split("/") if p]
    for i in range(1, len(parts) + 1):
        tar.addfile(_info("/".join(parts[:i]), mode=0o755, kind=tarfile.DIRTYPE))


def add_tree(tar: tarfile.TarFile, tree: Path, prefix: str) -> None:
    """``tree``'s content under ``prefix`` (``a/b``), sorted, root-owned, world-readable."""
    tree = Path(tree)
    prefix = prefix.strip("/")
    add_parents(tar, prefix)
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        rel = Path(root).relative_to(tree)
        base = prefix if str(rel) == "." else f"{prefix}/{rel.as_posix()}"
        for name in dirs:
            path = Path(root) / name
            if path.is_symlink():
                continue
            tar.addfile(_info(f"{base}/{name}", mode=0o755, kind=tarfile.DIRTYPE))
        for name in sorted(files + [d for d in dirs if (Path(root) / d).is_symlink()]):
            path = Path(root) / name
            if path.is_symlink():
                info = _info(f"{base}/{name}", mode=0o777, kind=tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                tar.addfile(info)
                continue
            st = path.stat()
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(path, "rb") as fh:
                tar.addfile(_info(f"{base}/{name}", mode=mode, size=st.st_size), fh)


def layer_from_tree(tree: Path, prefix: str) -> tuple[bytes, str, int]:
    """A gzip layer of ``tree`` at ``prefix``: (compressed bytes, diff_id, uncompressed size)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_tree(tar, tree, prefix)
    data = raw.getvalue()
    compressed = gzip.compress(data, compresslevel=6, mtime=0)
    return compressed, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(layout: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return Path(layout) / "blobs" / algo / hexdigest


def write_blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = digest_of(data)
    path = blob_path(layout, digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_json_blob(layout: Path, obj: dict, media_type: str) -> dict:
    return write_blob(layout, canonical(obj), media_type)


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_json_blob(layout: Path, digest: str) -> dict:
    return json.loads(blob_path(layout, digest).read_bytes())


def read_index(layout: Path) -> dict:
    return json.loads((Path(layout) / "index.json").read_text())


def find_manifest(layout: Path, tag: str) -> dict:
    """The descriptor of the manifest tagged ``tag`` (umoci's ``ref.name``)."""
    for desc in read_index(layout).get("manifests", []):
        if desc.get("annotations", {}).get(REF_NAME) == tag:
            return desc
    raise KeyError(tag)


def link_blobs(source: Path, target: Path) -> None:
    """Hard-link every blob of ``source`` into ``target`` (copy across file systems)."""
    import shutil

    for algo_dir in (Path(source) / "blobs").iterdir():
        dest_dir = Path(target) / "blobs" / algo_dir.name
        dest_dir.mkdir(parents=True, exist_ok=True)
        for blob in algo_dir.iterdir():
            dest = dest_dir / blob.name
            if dest.exists():
                continue
            try:
                os.link(blob, dest)
            except OSError:
                shutil.copy2(blob, dest)


def write_layout(layout: Path, manifests: list[dict]) -> None:
    layout = Path(layout)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
    tmp = layout / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, layout / "index.json")


def write_archive(layout: Path, out: IO[bytes], *, only: set[str] | None = None) -> None:
    """Stream ``layout`` as an OCI archive (a tar of the layout) to ``out``.

    ``only``: the blob digests to include (others are left out)."""
    layout = Path(layout)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(layout / name, arcname=name)
        for algo_dir in sorted((layout / "blobs").iterdir()):
            for blob in sorted(algo_dir.iterdir()):
                if only is not None and f"{algo_dir.name}:{blob.name}" not in only:
                    continue
                tar.add(blob, arcname=f"blobs/{algo_dir.name}/{blob.name}")


def image_blobs(layout: Path, manifest_digest: str) -> set[str]:
    manifest = read_json_blob(layout, manifest_digest)
    return {manifest_digest, manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])}
