"""BuildPanel: the model server's image of a run, built and imported into containerd.

The same calls as ``mlops-kit build RUN_ID``: the run's recorded parameters
(:func:`mlops_kit.params.load_params` with ``recorded=``), then
:func:`mlops_kit.image.package`, on a worker thread with its log lines in the panel.
There is no Cancel: a build stopped halfway would leave a half-imported image.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets

from .. import _paths, ledger
from .. import params as params_module
from ..errors import MlopsKitError
from ._common import (TABLE_CSS, ParameterForm, Worker, append_line, error_output, html_table, message_html,
                      reports_errors, styled)
from ._runpicker import RecordedParametersMixin, RunPicker

FORM_KEYS = ("package.builder", "package.base_image", "package.image", "package.import_image")


def detect_builders(base_image: str | None) -> dict[str, str | None]:
    from .. import image

    return image.detect_builders(base_image)


def package(run_dir: Path, params: Any, *, log: Callable[[str], None]) -> dict:
    from .. import image

    return image.package(run_dir, params, log=log)


class BuildPanel(RecordedParametersMixin, widgets.VBox):
    """Build a run's image. ``list_runs``, ``read_run``, ``load_params``, ``detect_builders``,
    ``package`` and ``runs_dir`` are the I/O boundary (the kit's own functions by default)."""

    def __init__(self, *, list_runs: Callable[[], list[dict]] = ledger.list_runs,
                 load_params: Callable[..., Any] = params_module.load_params,
                 detect_builders: Callable[[str | None], dict] = detect_builders,
                 package: Callable[..., dict] = package, read_run: Callable[[str], dict] = ledger.read_run,
                 runs_dir: Callable[[], Path] = _paths.runs_dir):
        self._read_run = read_run
        self._load_params = load_params
        self._detect_builders = detect_builders
        self._package = package
        self._runs_dir = runs_dir
        self.record: dict | None = None
        self.baseline = None

        self.errors = error_output("mlk-build-errors")
        self.worker = Worker(self.errors, "build")
        self.detector = Worker(self.errors, "builder detection")
        self.run_picker = RunPicker(list_runs, "mlk-build-run")
        self.form = styled(ParameterForm(FORM_KEYS), "mlk-build-form")
        self.problems = styled(widgets.HTML(""), "mlk-build-problems")
        self.builders = styled(widgets.HTML("<i>looking for builders ...</i>"), "mlk-build-builders")
        self.build_button = styled(widgets.Button(description="Build", icon="cube", button_style="primary"),
                                   "mlk-build-start")
        self.status = styled(widgets.HTML(""), "mlk-build-status")
        self.log_output = styled(widgets.Output(layout=widgets.Layout(max_height="14em", overflow="auto",
                                                                      border="1px solid #ddd")), "mlk-build-log")
        self.result = styled(widgets.HTML(""), "mlk-build-result")

        self.run_picker.dropdown.observe(self._run_chosen, names="value")
        self.form.on_change(self.validate)
        self.build_button.on_click(self._build_clicked)
        super().__init__([
            widgets.HTML(TABLE_CSS + "<h3>Image</h3>"),
            self.run_picker, self.form, self.problems, self.builders, self.build_button,
            self.status, self.result, self.log_output, self.errors,
        ])
        styled(self, "mlk-build")
        self.refresh()

    @reports_errors()
    def refresh(self, *_: Any) -> None:
        self.run_picker.refresh()
        self._run_chosen()
        self.detect()

    def detect(self) -> None:
        """Find the builders on a worker thread (each check runs a command)."""
        if self.detector.busy:
            return
        base_image = self.form.fields["package.base_image"].value
        self.detector.start(lambda: self._show_builders(self._detect_builders(base_image)))

    def _show_builders(self, found: dict[str, str | None]) -> None:
        rows = [[name, "available" if why is None else "unavailable", why or ""] for name, why in found.items()]
        first = next((name for name, why in found.items() if why is None), None)
        auto = f"auto picks <b>{first}</b>." if first else message_html("No builder works here.", ok=False)
        self.builders.value = html_table(["builder", "here", "why not"], rows, css_class="mlk-table") + auto

    @reports_errors()
    def _build_clicked(self, button=None) -> None:
        if self.worker.busy:
            return
        run_id = self.run_picker.run_id
        if run_id is None:
            self.status.value = message_html("No succeeded run to build: run the pipeline first.", ok=False)
            return
        loaded = self.validate()
        if loaded is None:
            self.status.value = message_html("Fix the parameters marked above, then Build.", ok=False)
            return
        run_dir = ledger.run_path(run_id, champion=True, scratch=True, root=self._runs_dir())
        self.record = None
        self.result.value = ""
        self.log_output.clear_output()
        self.build_button.disabled = True
        self.status.value = f"Building the image of run <code>{html.escape(run_id)}</code> ..."

        def work() -> None:
            self.record = self._package(run_dir, loaded.params, log=lambda line: append_line(self.log_output, line))
            self._show_record(self.record)

        def failed(exc: BaseException) -> bool:
            self.status.value = message_html(f"The build failed: {exc}", ok=False)
            return isinstance(exc, MlopsKitError)  # its message says it all; anything else gets a traceback

        def done() -> None:
            self.build_button.disabled = False

        self.worker.start(work, on_error=failed, on_done=done)

    def _show_record(self, record: dict) -> None:
        mib = 1024 * 1024
        size = record.get("size") or {}
        rows = [["ref", record.get("ref")], ["digest", record.get("digest")], ["builder", record.get("builder")],
                ["compressed", f"{(size.get('compressed') or 0) / mib:.1f} MiB"],
                ["unpacked", f"{(size.get('unpacked') or 0) / mib:.1f} MiB"],
                ["layers", len(record.get("layers") or [])],
                ["imported", _describe_import(record.get("imported"))],
                ["seconds", (record.get("seconds") or {}).get("total")]]
        self.result.value = html_table(["image", ""], rows, css_class="mlk-table mlk-build-image")
        self.status.value = message_html(f"Built {record.get('ref')}.", ok=True)


def _describe_import(where: dict | None) -> str:
    if not where:
        return "not imported (package.import_image is off)"
    if "registry" in where:
        return f"pushed to {where['registry']}"
    return f"containerd {where.get('containerd')}, namespace {where.get('namespace')}"
