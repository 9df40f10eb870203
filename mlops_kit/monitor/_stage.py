"""06_monitor as a stage and as a run of kind ``monitor``.

:func:`watch` is what ``mlops-kit monitor`` and the Monitor panel call: it starts a run of
the one stage ``monitor`` whose inputs (the model's schema, card, metrics and profile) are
taken from the watched run, with the watched run's own parameters (its quality gate) and the
``monitor.*`` keys on top. The stage's notebook calls :func:`run_stage`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import _paths, artifacts, ledger
from ..errors import MlopsKitError
from ._report import MonitorReport, load_report, read_labels, read_live, report


def run_stage(folder: str | Path, params: Any) -> MonitorReport:
    """The stage's work in a run folder: the report (``monitor_report.json``) and the labelled
    live rows exported when asked (the notebook draws the plot)."""
    section = params.monitor
    log = _paths.monitored_log_dir(section.log_dir, section.model_run)
    if log is None:
        raise MlopsKitError("monitor.log_dir or monitor.model_run must be set. Got neither instead.",
                            hint="name the request log's folder (`mlops-kit monitor --log DIR`).")
    live = read_live(log, folder)  # a missing folder, no row, another model: named by the reader
    schema = artifacts.SCHEMA.load(folder)
    labels = read_labels(section.labels, schema.target) if section.labels else None
    result = report(folder, live, labels=labels, labels_source=section.labels, alpha=section.alpha,
                    seed=params.seed, gate=params.evaluate.gate, baseline_metric=params.evaluate.baseline_metric,
                    baseline_margin=params.evaluate.baseline_margin, model_run=section.model_run, log=str(log),
                    export_to=section.export_labelled)
    artifacts.MONITOR_REPORT.save(folder, result)
    return result


def watch(run_id: str | None = None, *, log_dir: str | None = None, labels: str | None = None,
          export_labelled: str | None = None, alpha: float | None = None, overrides: tuple[str, ...] = (),
          on_event=None, executor=None, log=None, api_client=None) -> tuple[dict, MonitorReport]:
    """Run 06_monitor on a deployed model (default: the locally deployed run, else the
    champion) as a run of kind ``monitor``; returns its record and its report.

    Without ``log_dir`` on a MicroK8s target (``deploy.target``), the request log is first
    collected from every replica's pod through the Kubernetes API (:mod:`.collect`) into
    ``runs/.requests/.collected/<run>/<pod>/`` (``log``: its progress lines)."""
    from .. import runner
    from ..params import load_params

    model_run = run_id or deployed_run()
    folder = ledger.open_run(model_run, champion=True)
    record = ledger.read_run(folder.id, champion=False)
    if ledger.kind_of(record) == "monitor":
        raise MlopsKitError(f"RUN_ID must name a run that trained a model. Got {folder.id}, a monitor run, instead.")
    raw = dict(record.get("params") or {})
    keys = {"model_run": folder.id, "log_dir": _absolute(log_dir), "labels": _absolute(labels),
            "export_labelled": _absolute(export_labelled)}
    if alpha is not None:  # an override: a wrong value is named as the --set it came from
        overrides = (*overrides, f"monitor.alpha={alpha}")
    raw["monitor"] = {**(raw.get("monitor") or {}), **keys}
    raw["stages"] = [ledger.MONITOR_STAGE]
    loaded = load_params(overrides=overrides, recorded=raw, recorded_from=f"{folder.id}/{_paths.RUN_RECORD}")
    if log_dir is None and loaded.params.deploy.target == "microk8s":
        from .collect import collect_for

        collected = collect_for(loaded.params, _paths.collected_log_dir(folder.id), log=log, api_client=api_client)
        raw["monitor"]["log_dir"] = str(collected)
        loaded = load_params(overrides=overrides, recorded=raw, recorded_from=f"{folder.id}/{_paths.RUN_RECORD}")
    record = runner.run_pipeline(loaded, stages=[ledger.MONITOR_STAGE], reuse_from=folder.id, use_cache=False,
                                 on_event=on_event, executor=executor)
    result = load_report(ledger.run_path(record["id"]))
    # the verdict in the record too: `mlops-kit runs list` shows it as the run's headline
    record = ledger.open_run(record["id"]).update(verdict={
        "status": result.verdict.status, "exit_code": result.verdict.exit_code, "model_run": folder.id})
    return record, result


def deployed_run() -> str:
    """The run the local target serves, else the champion."""
    from ..deploy import local

    state = local.read_state()
    if state and state.get("run_id"):
        return str(state["run_id"])
    champion = ledger.champion_id()
    if champion is None:
        raise MlopsKitError("RUN_ID must be given when no model is deployed locally and none is promoted. "
                            "Got neither instead.", hint="name the run: `mlops-kit monitor RUN_ID`.")
    return champion


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None
