"""The release history, kept in the cluster in a ConfigMap ``<name>-releases``.

Each release: revision, run id, image (``ref@digest``), model sha256, metrics, time, who,
status (``succeeded`` or ``failed``) and the manifests that were applied (never a Secret),
so a rollback re-applies exactly what last worked. The newest ``KEEP`` are kept.
"""

from __future__ import annotations

import datetime
import getpass
import json
import socket
from typing import Any

from ... import _artifact_names as _names
from ...errors import K8sDeployError
from ...kube import Cluster

KEEP = 10
DATA_KEY = _names.RELEASE_HISTORY_KEY


def history_name(name: str) -> str:
    return f"{name}-releases"


def read_history(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    return _parse(cluster.get("ConfigMap", namespace, history_name(name)), namespace, name)


def write_history(cluster: Cluster, namespace: str, name: str, releases: list[dict], *, attempts: int = 5) -> None:
    """Write the history without losing another deploy's entries: read the ConfigMap and its
    ``resourceVersion``, merge ``releases`` into what is there (by revision and release id; an
    entry whose revision another deploy took meanwhile gets the next free one), and apply with
    that ``resourceVersion``. The API server refuses the write with 409 Conflict when the
    ConfigMap changed in between; then it is read and merged again."""
    for attempt in range(attempts):
        live = cluster.get("ConfigMap", namespace, history_name(name))
        version = ((live or {}).get("metadata") or {}).get("resourceVersion")
        merged = merge_histories(_parse(live, namespace, name), releases)
        metadata = {"name": history_name(name), "namespace": namespace,
                    "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlops-kit",
                               "app.kubernetes.io/managed-by": "mlops-kit",
                               "app.kubernetes.io/component": "release-history"}}
        if version:
            metadata["resourceVersion"] = version
        try:
            cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
                           "data": {DATA_KEY: json.dumps(merged[-KEEP:], indent=1, sort_keys=True)}})
            releases[:] = merged
            return
        except K8sDeployError as exc:
            if exc.reason != "Conflict" or attempt == attempts - 1:
                raise


def merge_histories(live: list[dict], ours: list[dict]) -> list[dict]:
    """``live`` plus what ``ours`` adds or updates, in revision order."""
    merged = {r.get("revision"): dict(r) for r in live if isinstance(r, dict)}
    for entry in ours:
        there = merged.get(entry.get("revision"))
        if there is not None and there.get("release_id") != entry.get("release_id") and \
                there.get("time") != entry.get("time"):
            entry["revision"] = max(merged, default=0) + 1      # another deploy took this revision
        merged[entry["revision"]] = entry
    return [merged[k] for k in sorted(merged)]


def _parse(config_map: dict | None, namespace: str, name: str) -> list[dict]:
    if config_map is None:
        return []
    text = (config_map.get("data") or {}).get(DATA_KEY, "[]")
    try:
        releases = json.loads(text)
    except ValueError:
        raise K8sDeployError(f"ConfigMap {namespace}/{history_name(name)}: {DATA_KEY} is not JSON; the release "
                             "history was edited by hand.", reason="Invalid", kind="ConfigMap",
                             namespace=namespace, name=history_name(name)) from None
    return releases if isinstance(releases, list) else []


def new_release(releases: list[dict], **fields: Any) -> dict:
    revision = max((r.get("revision", 0) for r in releases), default=0) + 1
    return {"revision": revision, "time": now(), "who": who(), **fields}


def last_good(releases: list[dict], *, unlike: str | None = None) -> dict | None:
    """The newest succeeded release (whose release id differs from ``unlike``)."""
    for release in reversed(releases):
        if release.get("status") == "succeeded" and release.get("manifests") and \
                (unlike is None or release.get("release_id") != unlike):
            return release
    return None


def current(releases: list[dict]) -> dict | None:
    """The release the cluster should be running: the newest succeeded one."""
    return last_good(releases)


def public(release: dict | None) -> dict | None:
    """A release without its manifests (for tables, logs and release.json)."""
    if release is None:
        return None
    return {k: v for k, v in release.items() if k != "manifests"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
