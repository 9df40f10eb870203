"""PipelinePanel: pick a parameter file, adjust the common keys, choose stages, Run.

The same calls as ``mlops-kit run``: :func:`mlops_kit.params.load_params` with the form's
values as ``--set`` overrides, then :func:`mlops_kit.runner.run_pipeline` on a worker
thread, whose events drive a progress bar per stage and a live log.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets

from .. import params as params_module
from .. import runner
from ..errors import ParameterError, StageFailed
from ..stages import STAGE_NAMES
from ._common import (TABLE_CSS, ParameterForm, Worker, append_line, error_output, file_links, guarded,
                      message_html, reports_errors, show_error, styled)

#: The keys the form shows (the rest stay as the parameter file has them).
FORM_KEYS = ("data.source", "data.target", "data.test_size", "seed", "task", "train.model", "train.cv_folds")
SUGGESTIONS = {
    "data.source": [f"sklearn:{name}" for name in params_module.SKLEARN_DATASETS],
    "train.model": list(params_module.MODEL_NAMES),
}


class StageProgress(widgets.HBox):
    """One stage: a bar and what it is doing."""

    def __init__(self, stage: str):
        self.stage = stage
        self.bar = widgets.FloatProgress(value=0, min=0, max=1, description=stage,
                                         style={"description_width": "6em"})
        self.state = styled(widgets.Label("pending"), "mlk-stage-state")
        super().__init__([self.bar, self.state])
        styled(self, "mlk-stage", f"mlk-stage-{stage}")

    def show(self, state: str, *, value: float, style: str = "") -> None:
        self.bar.value = value
        self.bar.bar_style = style
        self.state.value = state


class PipelinePanel(widgets.VBox):
    """Run the pipeline from JupyterLab. ``parameter_files``, ``load_params`` and
    ``run_pipeline`` are the I/O boundary (the kit's own functions by default)."""

    def __init__(self, *, parameter_files: Callable[[], list[Path]] = params_module.parameter_files,
                 load_params: Callable[..., Any] = params_module.load_params,
                 run_pipeline: Callable[..., dict] = runner.run_pipeline):
        self._parameter_files = parameter_files
        self._load_params = load_params
        self._run_pipeline = run_pipeline
        self._finished_callbacks: list[Callable[[dict | None], None]] = []
        self.baseline = None  # the parameters as the chosen file has them
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.record: dict | None = None

        self.errors = error_output("mlk-pipeline-errors")
        self.worker = Worker(self.errors, "pipeline")
        files = self._parameter_files()
        self.file_picker = styled(widgets.Dropdown(
            options=[(f.name, str(f)) for f in files], value=str(files[0]) if files else None,
            description="parameters", style={"description_width": "11em"}, layout=widgets.Layout(width="28em")), "mlk-pipeline-file")
        self.form = styled(ParameterForm(FORM_KEYS, suggestions=SUGGESTIONS), "mlk-pipeline-form")
        self.problems = styled(widgets.HTML(""), "mlk-pipeline-problems")
        self.stage_boxes = {name: styled(widgets.Checkbox(value=False, description=name, indent=False,
                                                          layout=widgets.Layout(width="7em")),
                                         f"mlk-pipeline-stage-{name}") for name in STAGE_NAMES}
        self.run_button = styled(widgets.Button(description="Run", button_style="primary", icon="play"),
                                 "mlk-pipeline-run")
        self.cancel_button = styled(widgets.Button(description="Cancel", icon="stop", disabled=True,
                                                   tooltip="stop before the next stage"), "mlk-pipeline-cancel")
        self.status = styled(widgets.HTML("Ready."), "mlk-pipeline-status")
        self.progress = styled(widgets.VBox([]), "mlk-pipeline-progress")
        self.failure = styled(widgets.HTML(""), "mlk-pipeline-failure")
        self.links = styled(widgets.HTML(""), "mlk-pipeline-links")
        self.log_output = styled(widgets.Output(layout=widgets.Layout(max_height="14em", overflow="auto",
                                                               border="1px solid #ddd")), "mlk-pipeline-log")

        self.file_picker.observe(self._file_chosen, names="value")
        self.form.on_change(self.validate)
        self.run_button.on_click(self._run_clicked)
        self.cancel_button.on_click(self._cancel_clicked)
        super().__init__([
            widgets.HTML(TABLE_CSS + "<h3>Pipeline</h3>"),
            self.file_picker, self.form, self.problems,
            widgets.HBox([widgets.Label("stages", layout=widgets.Layout(width="11em")),
                          *self.stage_boxes.values()]),
            widgets.HBox([self.run_button, self.cancel_button]),
            self.status, self.progress, self.failure, self.links, self.log_output, self.errors,
        ])
        styled(self, "mlk-pipeline")
        self._file_chosen()

    # --- observers ---------------------------------------------------------------------
    def on_run_finished(self, callback: Callable[[dict | None], None]) -> None:
        """Call ``callback(record)`` after every run (record None when none was made)."""
        self._finished_callbacks.append(callback)

    # --- the form ----------------------------------------------------------------------
    @reports_errors()
    def _file_chosen(self, change=None) -> None:
        self.baseline = None
        try:
            loaded = self._load_params(self.file_picker.value, [])
        except ParameterError as exc:
            self.form.clear_problems()
            self._show_other_problems(exc.problems)
            return
        self.baseline = loaded.params
        self.form.fill(loaded.params)
        for name, box in self.stage_boxes.items():
            box.value = name in loaded.params.stages
        self.form.clear_problems()
        self._show_other_problems([])

    def overrides(self) -> list[str]:
        return self.form.overrides(self.baseline)

    def validate(self):
        """Load the file with the form's overrides: the validated parameters, or None after
        showing each problem next to its field."""
        try:
            loaded = self._load_params(self.file_picker.value, self.overrides())
        except ParameterError as exc:
            self._show_problems(exc.problems)
            return None
        except Exception as exc:  # noqa: BLE001
            show_error(self.errors, exc)
            return None
        self._show_problems([])
        return loaded

    def _show_problems(self, problems: list) -> None:
        self._show_other_problems(self.form.show_problems(problems))

    def _show_other_problems(self, problems: list) -> None:
        self.problems.value = "<br>".join(message_html(p.describe(), ok=False) for p in problems)

    def selected_stages(self) -> list[str]:
        return [name for name, box in self.stage_boxes.items() if box.value]

    # --- running -----------------------------------------------------------------------
    @reports_errors()
    def _run_clicked(self, button=None) -> None:
        if self.worker.busy:
            return
        loaded = self.validate()
        if loaded is None:
            self.status.value = message_html("Fix the parameters marked above, then Run.", ok=False)
            return
        stages = self.selected_stages()
        if not stages:
            self.status.value = message_html("Choose at least one stage.", ok=False)
            return
        self.run_id, self.run_dir, self.record = None, None, None
        self.failure.value = self.links.value = ""
        self.progress.children = [StageProgress(name) for name in stages]
        self.log_output.clear_output()
        self.status.value = "Starting: checking parameters and warming kernels ..."
        self.run_button.disabled = True
        self.cancel_button.disabled = False
        self._started = time.perf_counter()
        on_event = guarded(self._on_event, self.errors)
        self.worker.start(
            lambda: self._run_pipeline(loaded, stages=stages, on_event=on_event, cancel=self.worker.cancel),
            on_error=self._on_run_error, on_done=self._on_run_done)

    def _cancel_clicked(self, button=None) -> None:
        self.worker.cancel.set()
        self.cancel_button.disabled = True
        self.status.value = "Cancelling: the run stops before its next stage ..."

    def _bar(self, stage: str | None) -> StageProgress | None:
        return next((b for b in self.progress.children if b.stage == stage), None)

    def _on_event(self, event: runner.RunEvent) -> None:
        bar = self._bar(event.stage)
        if event.kind == "run_started":
            self.run_id, self.run_dir = event.run_id, Path(event.data["run_dir"])
            self.progress.children = [StageProgress(name) for name in event.data["stages"]]
            append_line(self.log_output, f"run {event.run_id}: {', '.join(event.data['stages'])}")
            append_line(self.log_output, f"  folder {event.data['run_dir']}")
            self.status.value = f"Run <code>{event.run_id}</code> running ..."
        elif event.kind == "stage_started" and bar:
            bar.show("running ...", value=0.5, style="info")
            append_line(self.log_output, f"  {event.stage:<9} running ...")
            self.status.value = f"Run <code>{event.run_id}</code>: stage {event.stage} running ..."
        elif event.kind == "stage_finished" and bar:
            seconds = event.data.get("seconds", 0)
            bar.show(f"succeeded in {seconds:.1f} s", value=1, style="success")
            append_line(self.log_output, f"  {event.stage:<9} succeeded in {seconds:.1f} s")
        elif event.kind in ("stage_cached", "stage_reused") and bar:
            bar.show(event.message or "reused", value=1, style="success")
            append_line(self.log_output, f"  {event.stage:<9} {event.message}")
        elif event.kind == "stage_failed":
            if bar:
                bar.show("FAILED", value=1, style="danger")
            append_line(self.log_output, f"  {event.stage:<9} FAILED: {event.message}", stream="stderr")
        elif event.kind == "run_finished":
            self.record = event.data.get("record")
            self._show_links()
        elif event.message:
            append_line(self.log_output, f"  {event.stage or '':<9} {event.message}")

    def _on_run_error(self, exc: BaseException) -> bool:
        if isinstance(exc, ParameterError):
            self._show_problems(exc.problems)
            self.status.value = message_html("The parameters have problems (marked above); nothing ran.",
                                             ok=False)
            return True
        if isinstance(exc, StageFailed):
            self._show_failure(exc)
            return True
        if isinstance(exc, runner.RunCancelled):
            self.status.value = message_html(str(exc), ok=False)
            for bar in self.progress.children:
                if bar.state.value == "pending":
                    bar.show("cancelled", value=0, style="warning")
            return True
        self.status.value = message_html(f"The run did not finish: {type(exc).__name__}: {exc}", ok=False)
        return False

    def _show_failure(self, exc: StageFailed) -> None:
        where = f", cell {exc.cell_index}" if exc.cell_index is not None else ""
        self.status.value = message_html(f"Run {self.run_id} failed at stage {exc.stage!r}{where}.", ok=False)
        self.failure.value = (
            f'<div class="mlk-message-error"><b>Stage {html.escape(exc.stage)} failed{where}</b>: '
            f"{html.escape(exc.exception)}<pre style='white-space: pre-wrap'>{html.escape(exc.detail)}</pre>"
            f"executed notebook: {file_links([exc.notebook])}</div>")

    def _on_run_done(self) -> None:
        self.run_button.disabled = False
        self.cancel_button.disabled = True
        record = self.record
        if record is not None and record.get("status") == "succeeded":
            seconds = time.perf_counter() - self._started
            metrics = {k: v for k, v in (record.get("metrics") or {}).items() if k != "gate_passed"}
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))
            gate = (record.get("metrics") or {}).get("gate_passed")
            self.status.value = message_html(
                f"Run {record['id']} succeeded in {seconds:.1f} s." + (f" {shown}." if shown else "")
                + ("" if gate is None else f" Quality gate {'passed' if gate else 'FAILED'}."), ok=True)
        for callback in self._finished_callbacks:
            guarded(callback, self.errors)(record)

    def _show_links(self) -> None:
        if self.run_dir is None:
            return
        notebooks = sorted((self.run_dir / "notebooks").glob("*.ipynb"))
        reports = sorted((self.run_dir / "reports").glob("*.html"))
        parts = []
        if notebooks:
            parts.append("executed notebooks: " + file_links(notebooks, css_class="mlk-link-notebook"))
        if reports:
            parts.append("HTML reports: " + file_links(reports, view="files", css_class="mlk-link-report"))
        self.links.value = "<br>".join(parts)
