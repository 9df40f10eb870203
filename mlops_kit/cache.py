"""Stage reuse: a stage whose fingerprint matches a succeeded stage of an earlier run is
not executed again; its outputs are linked from that run, verified by their sha256.

A stage's fingerprint covers what decides its outputs: the notebook's source (outputs
left out), the stage's parameters, the content of its inputs (and of the data file, for
the data stage), the versions of the packages it uses and the kit's own code.

This module imports neither pandas nor papermill: a rerun where nothing changed is
decided and carried out in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _atomic, _paths, ledger
from .params import RunParams
from .stages import Stage, producer_of

REUSABLE = ("succeeded", "cached")
VERSIONED_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "skops",
                      "papermill", "ipykernel")


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def notebook_hash(path: Path) -> str:
    """The notebook's cells (type, source, tags): outputs and run metadata left out."""
    notebook = json.loads(path.read_text())
    cells = [(c.get("cell_type"), "".join(c.get("source", "")), c.get("metadata", {}).get("tags", []))
             for c in notebook.get("cells", [])]
    return _hash_json(cells)


def environment_hash(stage: Stage | str) -> str:
    """Versions of the packages the stages use, and the source of the kit modules this stage
    imports (found by following their relative imports), so that editing, say, the
    model server does not invalidate the training stage.

    Computed afresh on each call (a long-lived JupyterLab kernel sees an edited kit file or
    an upgraded package at once); only the hash of a source file is memoised, keyed by its
    size and modification time, and the versions, keyed by the modification times of the
    folders of ``sys.path`` (installing or removing a package changes its folder's)."""
    from .stages import BY_NAME

    digest = hashlib.sha256(_hash_json(_package_versions()).encode())
    stage = BY_NAME[stage] if isinstance(stage, str) else stage
    for source in _kit_sources(stage.code_modules):
        digest.update(str(source.relative_to(_paths.PACKAGE_DIR)).encode())
        digest.update(_source_hash(source).encode())
    return digest.hexdigest()


_SOURCE_HASHES: dict[tuple[Path, int, int], str] = {}
_VERSIONS: dict[tuple, dict[str, str | None]] = {}


def _package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`VERSIONED_PACKAGES` (None: not installed).
    Reading them is 20 ms (each package's METADATA parsed), and a run plans three stages or
    more: memoised until a folder of ``sys.path`` changes."""
    from importlib import metadata

    key = []
    for entry in sys.path:
        try:
            key.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            key.append((entry, None))
    key = tuple(key)
    versions = _VERSIONS.get(key)  # the trials of a sweep plan in threads: read once, no KeyError
    if versions is None:
        versions = {}
        for name in VERSIONED_PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
        _VERSIONS.clear()
        _VERSIONS[key] = versions
    return dict(versions)


def _source_hash(path: Path) -> str:
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _SOURCE_HASHES:
        _SOURCE_HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _SOURCE_HASHES[key]


_RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w*) import ([\w, ]+)", re.MULTILINE)


def _kit_sources(roots: tuple[str, ...]) -> list[Path]:
    """The files of the kit modules ``roots`` and of everything they import relatively."""
    seen: set[str] = set()
    packages: set[Path] = set()
    pending = list(roots)
    while pending:
        name = pending.pop().split(".")[0]
        if (_paths.PACKAGE_DIR / name).is_dir():  # a sub-package: all of it
            packages.update((_paths.PACKAGE_DIR / name).rglob("*.py"))
            continue
        if name in seen or not (_paths.PACKAGE_DIR / f"{name}.py").is_file():
            continue
        seen.add(name)
        for module, names in _RELATIVE_IMPORT.findall((_paths.PACKAGE_DIR / f"{name}.py").read_text()):
            pending.extend([module] if module else [n.strip() for n in names.split(",")])
    return sorted({_paths.PACKAGE_DIR / f"{name}.py" for name in seen} | packages)


#: the parts of a fingerprint other than the data file's hash (and the digest of them all)
_CHEAP_PARTS = ("notebook", "params", "inputs", "environment")


def fingerprint(stage: Stage, params: RunParams, input_hashes: dict[str, str], *,
                data_file: bool = True) -> dict[str, Any]:
    """The stage's fingerprint parts and their ``digest``. ``data_file=False`` leaves out the
    data file's sha256 (seconds for a large table) and the digest: the parts
    :func:`surely_runs` compares."""
    parts: dict[str, Any] = {
        "notebook": notebook_hash(_paths.notebooks_dir() / stage.notebook),
        "params": {"seed": params.seed, "task": params.task, **params.stage_parameters(stage.section)},
        "inputs": {item: input_hashes[item] for item in stage.inputs},
        "environment": environment_hash(stage),
    }
    if not data_file:
        return parts
    external = stage.external_file(params) if stage.external_file is not None else None
    if external is not None:
        parts["data_file"] = _atomic.sha256_file(external)
    parts["digest"] = _hash_json(parts)
    return parts


def surely_runs(stage: Stage, params: RunParams, known: dict[str, str], *, use_cache: bool = True) -> bool:
    """True when ``stage`` will be executed whatever the data file's hash: no cache, or no
    earlier succeeded stage agrees with it on everything else (notebook, parameters, inputs,
    environment). Then its kernel can start before the data file is hashed (see
    ``runner.run_pipeline``); False means only the full :func:`plan` can tell."""
    if not use_cache or not stage.reusable or any(item not in known for item in stage.inputs):
        return True
    parts = fingerprint(stage, params, known, data_file=False)
    for record in ledger.list_runs():
        info = record.get("stages", {}).get(stage.name, {})
        earlier = info.get("fingerprint") or {}
        if info.get("status") in REUSABLE and all(earlier.get(key) == parts[key] for key in _CHEAP_PARTS):
            return False
    return True


@dataclass
class Candidate:
    run_id: str
    record: dict


@dataclass
class StagePlan:
    """What a run will do with one stage, and why."""

    stage: Stage
    fingerprint: dict | None = None
    cached_from: Candidate | None = None
    reason: str = ""
    rejected: list[str] = field(default_factory=list)

    @property
    def action(self) -> str:
        return "cached" if self.cached_from else "run"


def find_cached(stage: Stage, digest: str, *, exclude: str | None = None,
                records: list[dict] | None = None) -> tuple[Candidate | None, list[str]]:
    """The newest succeeded stage with this fingerprint whose outputs are intact; and why
    other candidates were passed over (an output missing or changed since)."""
    rejected = []
    for record in records if records is not None else ledger.list_runs():
        if record["id"] == exclude:
            continue
        info = record.get("stages", {}).get(stage.name, {})
        if info.get("status") not in REUSABLE or info.get("fingerprint", {}).get("digest") != digest:
            continue
        problem = verify_outputs(record["id"], info.get("outputs", {}), stage)
        if problem:
            rejected.append(problem)
            continue
        return Candidate(record["id"], info), rejected
    return None, rejected


def verify_outputs(run_id: str, recorded: dict[str, str], stage: Stage) -> str | None:
    artifacts = _paths.runs_dir() / run_id / _paths.ARTIFACTS_SUBDIR
    for item in stage.outputs:
        path = artifacts / item
        if item not in recorded:
            return f"run {run_id} recorded no hash for {item}"
        if not path.exists():
            return f"{item} of run {run_id} is gone"
        if _atomic.sha256_file(path) != recorded[item]:
            return f"{item} of run {run_id} was changed after it was written (sha256 mismatch)"
    return None


def plan(params: RunParams, stages: list[Stage], known: dict[str, str], *, use_cache: bool = True,
         exclude: str | None = None) -> list[StagePlan]:
    """Decide, stage by stage, what is reused and what runs. ``known`` maps artifact names
    to their sha256 where already known (outputs of stages taken from another run)."""
    records = ledger.list_runs()
    known = dict(known)
    plans = []
    for stage in stages:
        missing = [item for item in stage.inputs if item not in known]
        if missing:
            plans.append(StagePlan(stage, reason=f"its input {missing[0]} comes from stage "
                                                 f"{producer_of(missing[0]).name!r}, which runs"))
            continue
        parts = fingerprint(stage, params, known)
        if not use_cache:
            plans.append(StagePlan(stage, parts, reason="--no-cache"))
            continue
        if not stage.reusable:
            plans.append(StagePlan(stage, parts, reason="its effect lives outside the run folder "
                                                        "(containerd, a deployment): always executed"))
            continue
        hit, rejected = find_cached(stage, parts["digest"], exclude=exclude, records=records)
        if hit:
            known.update(hit.record["outputs"])
            plans.append(StagePlan(stage, parts, hit, reason=f"unchanged since run {hit.run_id}",
                                   rejected=rejected))
        else:
            reason = "; ".join(rejected) if rejected else _what_changed(stage, parts, records, exclude)
            plans.append(StagePlan(stage, parts, reason=reason, rejected=rejected))
    return plans


def _what_changed(stage: Stage, parts: dict, records: list[dict], exclude: str | None) -> str:
    for record in records:
        info = record.get("stages", {}).get(stage.name, {})
        earlier = info.get("fingerprint")
        if record["id"] == exclude or info.get("status") not in REUSABLE or not earlier:
            continue
        changes = []
        if earlier.get("notebook") != parts["notebook"]:
            changes.append(f"the notebook {stage.notebook} changed")
        if earlier.get("params") != parts["params"]:
            keys = sorted(k for k in set(parts["params"]) | set(earlier.get("params", {}))
                          if parts["params"].get(k) != earlier.get("params", {}).get(k))
            changes.append("parameters changed: " + ", ".join(
                f"{stage.section}.{k} {earlier.get('params', {}).get(k)!r} -> {parts['params'].get(k)!r}"
                if k not in ("seed", "task") else f"{k} {earlier.get('params', {}).get(k)!r} -> "
                f"{parts['params'].get(k)!r}" for k in keys))
        changed_inputs = [k for k, v in parts["inputs"].items() if earlier.get("inputs", {}).get(k) != v]
        if changed_inputs:
            changes.append("inputs changed: " + ", ".join(changed_inputs))
        if earlier.get("data_file") != parts.get("data_file"):
            changes.append("the data file's content changed")
        if earlier.get("environment") != parts["environment"]:
            changes.append("package versions or the kit's code changed")
        return (f"since run {record['id']}: " + "; ".join(changes)) if changes else \
            f"no reusable run (run {record['id']} differs)"
    return "no earlier run of this stage"


def reuse_stage(run: ledger.RunFolder, stage: Stage, candidate: Candidate, parts: dict) -> dict:
    """Link (or copy) the stage's outputs, executed notebook and report from the earlier run."""
    source = _paths.runs_dir() / candidate.run_id
    for item in stage.outputs:
        link_or_copy(source / _paths.ARTIFACTS_SUBDIR / item, run.artifacts / item)
    for extra in _extra_outputs(source / _paths.ARTIFACTS_SUBDIR, stage):
        link_or_copy(extra, run.artifacts / extra.name)
    notebook = candidate.record.get("notebook")
    report = candidate.record.get("report")
    for relative in (notebook, report):
        if relative and (source / relative).exists():
            link_or_copy(source / relative, run.path / relative)
    return {"status": "cached", "source_run": candidate.run_id, "fingerprint": parts,
            "outputs": {item: candidate.record["outputs"][item] for item in stage.outputs},
            "notebook": notebook, "report": report, "seconds": 0.0}


def _extra_outputs(artifacts: Path, stage: Stage) -> list[Path]:
    """What a stage wrote beside its declared outputs (plots), as the catalog says."""
    return [artifacts / name for name in stage.extras if (artifacts / name).exists()]


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
