"""What an apply would change: each rendered object against the live one.

Only the fields the kit sets are compared (the server adds many of its own), so the diff
shows what this deploy changes. Secret values are never shown: only whether a key changed.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from ...kube import Cluster

HIDDEN = "<hidden>"


def diff_objects(cluster: Cluster, objects: list[dict]) -> list[dict]:
    """One entry per object: kind, name, action (create, update, unchanged) and a unified diff."""
    changes = []
    for obj in objects:
        meta = obj["metadata"]
        live = cluster.get(obj["kind"], meta.get("namespace"), meta["name"])
        desired = _mask(obj, live)
        before = _project(live, desired) if live is not None else None
        if before is None:
            action = "create"
        elif before == desired:
            action = "unchanged"
        else:
            action = "update"
        label = f"{obj['kind']}/{meta['name']}"
        text = "" if action == "unchanged" else "".join(difflib.unified_diff(
            _dump(before), _dump(desired), fromfile=f"live {label}" if before is not None else "/dev/null",
            tofile=f"new {label}"))
        changes.append({"kind": obj["kind"], "name": meta["name"], "namespace": meta.get("namespace"),
                        "action": action, "diff": text})
    return changes


def summary(changes: list[dict]) -> str:
    return "\n".join(f"  {c['action']:<9} {c['kind']}/{c['name']}" for c in changes)


def _mask(obj: dict, live: dict | None) -> dict:
    if obj.get("kind") != "Secret":
        return obj
    live_data = (live or {}).get("data") or {}
    masked = dict(obj)
    masked["data"] = {k: HIDDEN if live_data.get(k) == v else f"{HIDDEN} (new value)"
                      for k, v in (obj.get("data") or {}).items()}
    return masked


def _project(live: Any, desired: Any) -> Any:
    """``live`` restricted to the keys present in ``desired``."""
    if isinstance(desired, dict) and isinstance(live, dict):
        if live.get("kind") == "Secret" and "data" in desired:
            live = {**live, "data": {k: HIDDEN for k in (live.get("data") or {})}}
        return {k: _project(live[k], v) for k, v in desired.items() if k in live}
    if isinstance(desired, list) and isinstance(live, list):
        if all(isinstance(d, dict) and "name" in d for d in desired) and \
                all(isinstance(x, dict) for x in live):
            by_name = {x.get("name"): x for x in live}
            projected = [_project(by_name[d["name"]], d) for d in desired if d["name"] in by_name]
            extra = [x for x in live if x.get("name") not in {d["name"] for d in desired}]
            return projected + extra
        if len(live) == len(desired):
            return [_project(x, d) for x, d in zip(live, desired)]
    return live


def _dump(obj: Any) -> list[str]:
    if obj is None:
        return []
    return yaml.safe_dump(obj, sort_keys=True).splitlines(keepends=True)
