"""RunsPanel: the ledger as a table; compare runs, see a run's plots, promote a champion.

The same calls as ``mlops-kit runs list/compare/promote``: :func:`mlops_kit.ledger.list_runs`,
:func:`mlops_kit.compare.compare_runs` (+ ``comparison_frame``, ``plot_comparison``) and
:func:`mlops_kit.ledger.promote`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets

from .. import _paths, compare, ledger
from ._common import TABLE_CSS, Markup, error_output, html_table, message_html, reports_errors, styled

#: Runs the table shows (newest first); the rest stay in `mlops-kit runs list`.
TABLE_LIMIT = 50

_STAGE_MARK = {"succeeded": "✓", "cached": "↺", "reused": "↺", "failed": "✗", "running": "…",
               "pending": "·", "interrupted": "!"}


def _figure_png(figure) -> bytes:
    """The PNG of a matplotlib figure, which is then closed (a figure left open in a kernel
    would be drawn again under the next cell that runs)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


class RunsPanel(widgets.VBox):
    """The run ledger. ``list_runs``, ``compare_runs``, ``comparison_frame``,
    ``plot_comparison``, ``promote`` and ``runs_dir`` are the I/O boundary (the kit's own
    functions by default)."""

    def __init__(self, *, list_runs: Callable[[], list[dict]] = ledger.list_runs,
                 compare_runs: Callable[[list[str]], dict] = compare.compare_runs,
                 comparison_frame: Callable[[dict], Any] = compare.comparison_frame,
                 plot_comparison: Callable[..., Any] = compare.plot_comparison,
                 promote: Callable[..., dict] = ledger.promote,
                 runs_dir: Callable[[], Path] = _paths.runs_dir):
        self._list_runs = list_runs
        self._compare_runs = compare_runs
        self._comparison_frame = comparison_frame
        self._plot_comparison = plot_comparison
        self._promote = promote
        self._runs_dir = runs_dir
        self.records: list[dict] = []

        self.errors = error_output("mlk-runs-errors")
        self.refresh_button = styled(widgets.Button(description="Refresh", icon="refresh"), "mlk-runs-refresh")
        self.table = styled(widgets.HTML(""), "mlk-runs-table")
        self.selector = styled(widgets.SelectMultiple(
            options=[], rows=6, description="select", style={"description_width": "5em"},
            layout=widgets.Layout(width="44em")), "mlk-runs-select")
        self.compare_button = styled(widgets.Button(description="Compare", icon="bar-chart",
                                                    tooltip="two or more selected runs"), "mlk-runs-compare")
        self.plots_button = styled(widgets.Button(description="Show plots", icon="image",
                                                  tooltip="the plots of the first selected run"), "mlk-runs-plots")
        self.why = styled(widgets.Text(placeholder="why this run (kept in the history)", description="reason",
                                       style={"description_width": "5em"}), "mlk-runs-why")
        self.promote_button = styled(widgets.Button(description="Promote", icon="trophy", button_style="warning",
                                                    tooltip="make the selected run the champion"),
                                     "mlk-runs-promote")
        self.message = styled(widgets.HTML(""), "mlk-runs-message")
        self.comparison = styled(widgets.HTML(""), "mlk-runs-comparison")
        self.comparison_plot = styled(widgets.Box([]), "mlk-runs-comparison-plot")
        self.plots = styled(widgets.Box([], layout=widgets.Layout(flex_flow="row wrap")), "mlk-runs-plot-images")

        self.refresh_button.on_click(self.refresh)
        self.compare_button.on_click(self._compare_clicked)
        self.plots_button.on_click(self._plots_clicked)
        self.promote_button.on_click(self._promote_clicked)
        super().__init__([
            widgets.HTML(TABLE_CSS + "<h3>Runs</h3>"),
            self.refresh_button, self.table, self.selector,
            widgets.HBox([self.compare_button, self.plots_button]),
            widgets.HBox([self.why, self.promote_button]),
            self.message, self.comparison, self.comparison_plot, self.plots, self.errors,
        ])
        styled(self, "mlk-runs")
        self.refresh()

    def selected(self) -> list[str]:
        return list(self.selector.value)

    @reports_errors()
    def refresh(self, *_: Any) -> None:
        """Read the ledger again (also called by PipelinePanel after a run)."""
        self.records = self._list_runs()[:TABLE_LIMIT]
        rows, classes = [], []
        for record in self.records:
            metrics = record.get("metrics") or {}
            stages = " ".join(f"{name} {_STAGE_MARK.get(info.get('status'), '?')}"
                              for name, info in (record.get("stages") or {}).items())
            headline = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                 if k != "gate_passed" and isinstance(v, (int, float)))
            gate = metrics.get("gate_passed")
            rows.append([Markup(f"<code>{record['id']}</code>"), record.get("created", ""),
                         record.get("status", ""), "★" if record.get("champion") else "",
                         stages, headline, "" if gate is None else ("passed" if gate else "failed")])
            classes.append(f"mlk-run mlk-run-{record.get('status', 'unknown')}"
                           + (" mlk-failed" if record.get("status") == "failed" else ""))
        self.table.value = (html_table(["run", "created", "status", "champion", "stages", "metrics", "gate"],
                                       rows, css_class="mlk-table mlk-runs-rows", row_classes=classes)
                            if rows else "<i>No runs yet: run the pipeline above.</i>")
        chosen = [run_id for run_id in self.selector.value if any(r["id"] == run_id for r in self.records)]
        self.selector.options = [(self._label(r), r["id"]) for r in self.records]
        self.selector.value = tuple(chosen)

    @staticmethod
    def _label(record: dict) -> str:
        metrics = record.get("metrics") or {}
        first = next(((k, v) for k, v in metrics.items() if k != "gate_passed" and isinstance(v, (int, float))),
                     None)
        score = f"  {first[0]} {first[1]:.3f}" if first else ""
        star = "  ★" if record.get("champion") else ""
        return f"{record['id']}  {record.get('status', '')}{score}{star}"

    @reports_errors()
    def _compare_clicked(self, button=None) -> None:
        result = self._compare_runs(self.selected())
        frame = self._comparison_frame(result)
        self.comparison.value = frame.to_html(classes="mlk-table", border=0, na_rep="")
        png = _figure_png(self._plot_comparison(result))
        self.comparison_plot.children = [widgets.Image(value=png, format="png",
                                                       layout=widgets.Layout(max_width="100%"))]
        self.message.value = ""

    @reports_errors()
    def _plots_clicked(self, button=None) -> None:
        selected = self.selected()
        if not selected:
            self.message.value = message_html("Select a run first.", ok=False)
            return
        artifacts = ledger.run_path(selected[0], root=self._runs_dir()) / _paths.ARTIFACTS_SUBDIR
        images = []
        for png in sorted(artifacts.glob("*.png")):
            images.append(widgets.VBox([widgets.Label(png.name),
                                        widgets.Image(value=png.read_bytes(), format="png",
                                                      layout=widgets.Layout(max_width="420px"))]))
        self.plots.children = images
        self.message.value = ("" if images else
                              message_html(f"Run {selected[0]} has no plots (did its evaluate stage run?).", ok=False))

    @reports_errors()
    def _promote_clicked(self, button=None) -> None:
        selected = self.selected()
        if len(selected) != 1:
            self.message.value = message_html(f"Select exactly one run to promote (selected: {len(selected)}).",
                                              ok=False)
            return
        entry = self._promote(selected[0], why=self.why.value)
        self.message.value = message_html(f"Run {entry['run']} is the champion (by {entry['who']}).", ok=True)
        self.refresh()
