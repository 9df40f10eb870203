"""DeployPanel: a run's model served locally or on MicroK8s; status, rollback, history.

The same calls as ``mlops-kit deploy/status/rollback/undeploy``: the run's recorded
parameters with the form's ``deploy.*`` values as overrides, then
:mod:`mlops_kit.deploy.local` (``deploy.target: local``) or :mod:`mlops_kit.deploy.k8s`
(``microk8s``), on a worker thread with the rollout's log lines in the panel. There is no
Cancel: a rollout stopped halfway is what the kit's own rollback exists to avoid.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets

from .. import _paths, ledger
from .. import deploy as deploy_functions
from .. import params as params_module
from ..errors import MlopsKitError
from ._common import (TABLE_CSS, ParameterForm, Worker, append_line, error_output, html_table, message_html,
                      reports_errors, styled)
from ._runpicker import RecordedParametersMixin, RunPicker

FORM_KEYS = ("deploy.target", "deploy.namespace", "deploy.replicas", "deploy.service_type", "deploy.port")


class DeployPanel(RecordedParametersMixin, widgets.VBox):
    """Deploy a run. ``list_runs``, ``read_run``, ``load_params``, ``deployer`` and
    ``runs_dir`` are the I/O boundary (the kit's own functions by default)."""

    def __init__(self, *, list_runs: Callable[[], list[dict]] = ledger.list_runs,
                 read_run: Callable[[str], dict] = ledger.read_run,
                 load_params: Callable[..., Any] = params_module.load_params,
                 deployer: Any = None, runs_dir: Callable[[], Path] = _paths.runs_dir):
        self._read_run = read_run
        self._load_params = load_params
        self._deployer = deployer or deploy_functions
        self._runs_dir = runs_dir
        self.baseline = None
        self.release: dict | None = None

        self.errors = error_output("mlk-deploy-errors")
        self.worker = Worker(self.errors, "deploy")
        self.run_picker = RunPicker(list_runs, "mlk-deploy-run")
        self.form = styled(ParameterForm(FORM_KEYS), "mlk-deploy-form")
        self.problems = styled(widgets.HTML(""), "mlk-deploy-problems")
        self.deploy_button = styled(widgets.Button(description="Deploy", icon="rocket", button_style="primary"),
                                    "mlk-deploy-start")
        self.status_button = styled(widgets.Button(description="Status", icon="heartbeat"), "mlk-deploy-check")
        self.rollback_button = styled(widgets.Button(description="Rollback", icon="undo", button_style="warning",
                                                     tooltip="back to the previous good release"),
                                      "mlk-deploy-rollback")
        self.undeploy_button = styled(widgets.Button(description="Undeploy", icon="trash", button_style="danger"),
                                      "mlk-deploy-undeploy")
        self.status = styled(widgets.HTML(""), "mlk-deploy-status")
        self.smoke = styled(widgets.HTML(""), "mlk-deploy-smoke")
        self.history = styled(widgets.HTML(""), "mlk-deploy-history")
        self.log_output = styled(widgets.Output(layout=widgets.Layout(max_height="14em", overflow="auto",
                                                                      border="1px solid #ddd")), "mlk-deploy-log")
        self._buttons = [self.deploy_button, self.status_button, self.rollback_button, self.undeploy_button]

        self.run_picker.dropdown.observe(self._run_chosen, names="value")
        self.form.on_change(self.validate)
        self.form.fields["deploy.target"].input.observe(self._target_chosen, names="value")
        self.deploy_button.on_click(self._deploy_clicked)
        self.status_button.on_click(self._status_clicked)
        self.rollback_button.on_click(self._rollback_clicked)
        self.undeploy_button.on_click(self._undeploy_clicked)
        super().__init__([
            widgets.HTML(TABLE_CSS + "<h3>Deployment</h3>"),
            self.run_picker, self.form, self.problems, widgets.HBox(self._buttons),
            self.status, self.smoke, self.history, self.log_output, self.errors,
        ])
        styled(self, "mlk-deploy")
        self.refresh()

    @reports_errors()
    def refresh(self, *_: Any) -> None:
        self.run_picker.refresh()
        self._run_chosen()

    # --- parameters ----------------------------------------------------------------------
    def _after_run_chosen(self) -> None:
        self._target_chosen()

    def _target_chosen(self, change=None) -> None:
        """Every target supports every action (one interface): nothing to enable or disable."""

    # --- actions -------------------------------------------------------------------------
    def _start(self, what: str, work: Callable[[Any], None], *, needs_run: bool = False) -> None:
        if self.worker.busy:
            return
        if needs_run and self.run_picker.run_id is None:
            self.status.value = message_html("No succeeded run to deploy: run the pipeline first.", ok=False)
            return
        loaded = self.validate()
        if loaded is None:
            self.status.value = message_html("Fix the parameters marked above first.", ok=False)
            return
        for button in self._buttons:
            button.disabled = True
        self.log_output.clear_output()
        self.status.value = html.escape(what) + " ..."

        def failed(exc: BaseException) -> bool:
            self.status.value = message_html(f"{what} failed: {exc}", ok=False)
            return isinstance(exc, MlopsKitError)  # its message says it all; anything else gets a traceback

        def done() -> None:
            for button in self._buttons:
                button.disabled = False
            self._target_chosen()

        self.worker.start(lambda: work(loaded.params), on_error=failed, on_done=done)

    def _log(self, line: str) -> None:
        append_line(self.log_output, line)

    @reports_errors()
    def _deploy_clicked(self, button=None) -> None:
        run_id = self.run_picker.run_id
        run_dir = ledger.run_path(run_id, champion=True, scratch=True, root=self._runs_dir()) if run_id else None

        def work(params) -> None:
            self.release = self._deployer.deploy(run_dir, params, log=self._log)
            self._show_release(self.release)
            self._show_status(self._deployer.status(params), keep_message=True)

        self._start(f"Deploying run {run_id}", work, needs_run=True)

    @reports_errors()
    def _status_clicked(self, button=None) -> None:
        self._start("Reading the deployment's status", lambda params: self._show_status(self._deployer.status(params)))

    @reports_errors()
    def _rollback_clicked(self, button=None) -> None:
        def work(params) -> None:
            release = self._deployer.rollback(params, log=self._log)
            self.status.value = message_html(f"Rolled back to release {release.get('revision')} "
                                             f"(run {release.get('run_id')}).", ok=True)
            self._show_status(self._deployer.status(params), keep_message=True)

        self._start("Rolling back", work)

    @reports_errors()
    def _undeploy_clicked(self, button=None) -> None:
        def work(params) -> None:
            self._deployer.undeploy(params, log=self._log)
            self.smoke.value = ""
            self._show_status(self._deployer.status(params))

        self._start("Undeploying", work)

    # --- showing -------------------------------------------------------------------------
    def _show_release(self, release: dict) -> None:
        smoke = release.get("smoke")
        where = release.get("url") or release.get("endpoint") or ""
        if isinstance(smoke, dict):
            answered = smoke.get("records", "?")
            self.smoke.value = message_html(f"Smoke test passed: {answered} known records answered as at training.",
                                            ok=True)
        else:
            self.smoke.value = message_html("Smoke test passed: the known records were answered as at training.",
                                            ok=True)
        self.status.value = message_html(f"Run {release.get('run_id')} deployed at {where}.", ok=True)

    def _show_status(self, result: dict, *, keep_message: bool = False) -> None:
        if "releases" in result:  # microk8s: rollout, replicas, the release history
            rows = [[r.get("revision"), r.get("run_id"), r.get("status"), r.get("image"), r.get("deployed")
                     or r.get("created") or "", r.get("reason") or ""] for r in reversed(result["releases"])]
            table = (html_table(["revision", "run", "status", "image", "when", "reason"], rows,
                                css_class="mlk-table mlk-deploy-releases") if rows else "<i>No releases yet.</i>")
            replicas = result.get("replicas") or {}
            summary = (f"{result.get('namespace')}/{result.get('name')}: {result.get('rollout')}"
                       + (f"; ready {replicas.get('ready')}/{replicas.get('desired')}" if replicas else "")
                       + (f"; endpoint {result.get('endpoint')}" if result.get("endpoint") else ""))
        else:  # local: one server
            rows = [[key, json.dumps(value) if isinstance(value, (dict, list)) else value]
                    for key, value in result.items()]
            table = html_table(["local target", ""], rows, css_class="mlk-table mlk-deploy-local")
            summary = ("nothing deployed locally" if not result.get("deployed") else
                       f"run {result.get('run_id')} at {result.get('url')}: "
                       + ("ready" if result.get("ready") else "NOT ready"))
        self.history.value = table
        if not keep_message:
            self.status.value = message_html(summary, ok=bool(result.get("ready")) or not result.get("deployed"))
