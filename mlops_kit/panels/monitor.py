"""MonitorPanel: a deployed model's live traffic judged (06_monitor), and a retraining run
on the labelled live rows.

The same calls as ``mlops-kit monitor`` (:func:`mlops_kit.monitor.watch`: a run of kind
``monitor``) and ``mlops-kit run --set data.source=EXPORT`` (:func:`mlops_kit.runner.run_pipeline`
with the watched run's parameters), on a worker thread.
"""

from __future__ import annotations

import html
import io
from typing import Any, Callable

import ipywidgets as widgets

from .. import _paths, ledger
from ._common import TABLE_CSS, Worker, error_output, html_table, message_html, reports_errors, styled
from ._runpicker import RunPicker

VERDICT_TEXT = {"healthy": "healthy: nothing moved", "drift": "drift: the traffic moved",
                "quality": "data quality: broken inputs", "performance": "performance below the quality gate"}


def _watch(run_id, **kwargs):
    from ..monitor import watch

    return watch(run_id, **kwargs)


def _retrain(run_id: str, source: str) -> dict:
    """A pipeline run with the watched run's parameters, on the exported labelled rows."""
    from .. import runner
    from ..params import load_params

    recorded = ledger.read_run(run_id).get("params")
    loaded = load_params(overrides=[f"data.source={source}"], recorded=recorded,
                         recorded_from=str(ledger.run_path(run_id, champion=True) / _paths.RUN_RECORD))
    return runner.run_pipeline(loaded)


def feature_png(result: Any, name: str) -> bytes:
    """Training vs live for one feature, as PNG (a figure of its own: no pyplot state)."""
    from matplotlib.figure import Figure

    from ..monitor import plot_feature

    fig = Figure(figsize=(8, 3), dpi=90)
    plot_feature(result, name, ax=fig.subplots())
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class MonitorPanel(widgets.VBox):
    """Watch a run's model. ``list_runs``, ``watch`` and ``retrain`` are the I/O boundary
    (the kit's own functions by default)."""

    def __init__(self, *, list_runs: Callable[[], list[dict]] = ledger.list_runs,
                 watch: Callable[..., tuple[dict, Any]] = _watch, retrain: Callable[[str, str], dict] = _retrain):
        self._watch = watch
        self._retrain = retrain
        self.result: Any = None
        self.record: dict | None = None
        self.export: str | None = None

        self.errors = error_output("mlk-monitor-errors")
        self.worker = Worker(self.errors, "monitor")
        self.run_picker = RunPicker(list_runs, "mlk-monitor-run")
        text = {"style": {"description_width": "11em"}, "layout": widgets.Layout(width="44em")}
        self.log_dir = styled(widgets.Text(description="request log", placeholder="default: the local deploy's "
                                           "log (runs/.requests/RUN)", **text), "mlk-monitor-log")
        self.labels = styled(widgets.Text(description="labels file", placeholder="CSV/parquet of request_id "
                                          "(+ row) and the target (optional)", **text), "mlk-monitor-labels")
        self.export_path = styled(widgets.Text(description="export labelled to",
                                               placeholder="a .csv/.parquet path (with labels)", **text),
                                  "mlk-monitor-export")
        self.check_button = styled(widgets.Button(description="Check", icon="stethoscope", button_style="primary",
                                                  tooltip="judge the live traffic (a run of kind monitor)"),
                                   "mlk-monitor-check")
        self.retrain_button = styled(widgets.Button(description="Retrain on labelled rows", icon="refresh",
                                                    button_style="warning", disabled=True,
                                                    layout=widgets.Layout(width="auto"),
                                                    tooltip="a pipeline run on the exported labelled live rows"),
                                     "mlk-monitor-retrain")
        self.status = styled(widgets.HTML(""), "mlk-monitor-status")
        self.verdict = styled(widgets.HTML(""), "mlk-monitor-verdict")
        self.table = styled(widgets.HTML(""), "mlk-monitor-table")
        self.performance = styled(widgets.HTML(""), "mlk-monitor-performance")
        self.feature = styled(widgets.Dropdown(description="feature", options=[], style={"description_width": "11em"},
                                               layout=widgets.Layout(width="28em")), "mlk-monitor-feature")
        self.plot = styled(widgets.Image(format="png", layout=widgets.Layout(max_width="48em")), "mlk-monitor-plot")
        self._buttons = [self.check_button, self.retrain_button]

        self.check_button.on_click(self._check_clicked)
        self.retrain_button.on_click(self._retrain_clicked)
        self.feature.observe(self._feature_chosen, names="value")
        super().__init__([
            widgets.HTML(TABLE_CSS + "<h3>Monitor</h3>"),
            self.run_picker, self.log_dir, self.labels, self.export_path, widgets.HBox(self._buttons),
            self.status, self.verdict, self.table, self.performance, self.feature, self.plot, self.errors,
        ])
        styled(self, "mlk-monitor")
        self.refresh()

    @reports_errors()
    def refresh(self, *_: Any) -> None:
        self.run_picker.refresh()

    # --- actions -------------------------------------------------------------------------
    def _start(self, what: str, work: Callable[[], None]) -> None:
        if self.worker.busy:
            return
        for button in self._buttons:
            button.disabled = True
        self.status.value = html.escape(what) + " ..."

        def failed(exc: BaseException) -> bool:
            self.status.value = message_html(f"{what} failed: {exc}", ok=False)
            from ..errors import MlopsKitError

            return isinstance(exc, MlopsKitError)

        def done() -> None:
            self.check_button.disabled = False
            self.retrain_button.disabled = not self.export

        self.worker.start(work, on_error=failed, on_done=done)

    @reports_errors()
    def _check_clicked(self, button=None) -> None:
        run_id = self.run_picker.run_id
        if run_id is None:
            self.status.value = message_html("No succeeded run to watch: run the pipeline first.", ok=False)
            return
        options = {"log_dir": self.log_dir.value.strip() or None, "labels": self.labels.value.strip() or None,
                   "export_labelled": self.export_path.value.strip() or None}

        def work() -> None:
            self.export = None
            self.record, result = self._watch(run_id, **options)
            self.show(result)
            if options["export_labelled"] and self.result.performance is not None:
                self.export = options["export_labelled"]
            self.status.value = message_html(f"Monitor run {self.record['id']} of run {run_id}: "
                                             f"{self.result.window.rows} live rows judged.", ok=True)

        self._start(f"Checking the live traffic of run {run_id}", work)

    @reports_errors()
    def _retrain_clicked(self, button=None) -> None:
        run_id, source = self.run_picker.run_id, self.export
        if not run_id or not source:
            return

        def work() -> None:
            record = self._retrain(run_id, source)
            self.status.value = message_html(f"Retraining run {record['id']} {record['status']} on {source}.",
                                             ok=record.get("status") == "succeeded")
            self.refresh()

        self._start(f"Retraining on {source}", work)

    # --- showing -------------------------------------------------------------------------
    def show(self, result: Any) -> None:
        """The verdict, the table sorted by score, the live metrics, training vs live."""
        self.result = result
        verdict = result.verdict
        moved = (f"; moved: {', '.join(verdict.drifted)}" if verdict.drifted else "") + (
            f"; data quality: {', '.join(verdict.quality_issues)}" if verdict.quality_issues else "") + (
            f"; below the gate: {'; '.join(verdict.gate_failures)}" if verdict.gate_failures else "")
        self.verdict.value = (f'<b class="mlk-monitor-status-{verdict.status}">Verdict: '
                              f"{html.escape(VERDICT_TEXT[verdict.status])} (exit code {verdict.exit_code})</b>"
                              f"{html.escape(moved)}")
        table = result.table()
        rows = [[name, *(None if isinstance(v, float) and v != v else v for v in row)]  # NaN: not measured
                for name, row in zip(table.index, table.itertuples(index=False))]
        drifted = list(table.columns).index("drift") + 1
        self.table.value = html_table(["feature", *table.columns], rows, css_class="mlk-table mlk-monitor-rows",
                                      row_classes=["mlk-failed" if r[drifted] else "" for r in rows])
        perf = result.performance
        if perf is None:
            self.performance.value = "<i>No labels joined.</i>"
        else:
            metric_rows = [[k, v, perf.evaluation.get(k)] for k, v in perf.metrics.items()]
            self.performance.value = (
                f"{perf.labelled_rows} labelled rows ({perf.share_labelled:.1%}); {perf.unmatched_labels} "
                "matched no logged row." + html_table(["metric", "live", "evaluation"], metric_rows,
                                                       css_class="mlk-table mlk-monitor-metrics"))
        names = [n for n in table.index if n != "(prediction)"] + (["prediction"] if "prediction" in result.bins else [])
        self.feature.options = names
        self.feature.value = names[0] if names else None
        self._feature_chosen()

    @reports_errors()
    def _feature_chosen(self, change=None) -> None:
        if self.result is not None and self.feature.value:
            self.plot.value = feature_png(self.result, self.feature.value)

