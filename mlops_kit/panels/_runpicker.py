"""What BuildPanel and DeployPanel share: a run picker (succeeded runs, the champion first)
and a form filled from the chosen run's recorded parameters."""

from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

from .. import _paths, ledger
from ..errors import ParameterError
from ._common import message_html, reports_errors, styled


def run_options(records: list[dict]) -> list[tuple[str, str]]:
    """(label, run id) for every succeeded pipeline run (a monitor run has no model of its
    own), the champion first."""
    good = [r for r in records if r.get("status") == "succeeded" and ledger.kind_of(r) == "pipeline"]
    good.sort(key=lambda r: not r.get("champion"))
    return [(f"{r['id']}" + ("  ★ champion" if r.get("champion") else ""), r["id"]) for r in good]


class RunPicker(widgets.HBox):
    def __init__(self, list_runs: Callable[[], list[dict]], css_class: str):
        self._list_runs = list_runs
        self.dropdown = styled(widgets.Dropdown(description="run", style={"description_width": "11em"},
                                                layout=widgets.Layout(width="28em")), css_class)
        self.refresh_button = styled(widgets.Button(icon="refresh", tooltip="read the runs again",
                                                    layout=widgets.Layout(width="3em")), css_class + "-refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__([self.dropdown, self.refresh_button])

    def refresh(self) -> None:
        current = self.dropdown.value
        options = run_options(self._list_runs())
        self.dropdown.options = options
        ids = [value for _, value in options]
        self.dropdown.value = current if current in ids else (ids[0] if ids else None)

    @property
    def run_id(self) -> str | None:
        return self.dropdown.value


class RecordedParametersMixin:
    """For a panel with ``run_picker``, ``form``, ``problems``, ``_load_params``, ``_read_run``
    and ``_runs_dir``: the chosen run's recorded parameters with the form's values as
    overrides, as ``mlops-kit build``/``deploy`` have them."""

    baseline = None

    def _load(self, overrides: list[str]):
        run_id = self.run_picker.run_id
        if run_id is None:
            return self._load_params(None, overrides)
        return self._load_params(None, overrides, recorded=self._read_run(run_id).get("params"),
                                 recorded_from=str(ledger.run_path(run_id, champion=True, root=self._runs_dir())
                                                   / _paths.RUN_RECORD))

    @reports_errors()
    def _run_chosen(self, change=None) -> None:
        self.baseline = None
        try:
            loaded = self._load([])
        except ParameterError as exc:
            self.problems.value = "<br>".join(message_html(p.describe(), ok=False) for p in exc.problems)
            return
        self.baseline = loaded.params
        self.form.fill(loaded.params)
        self.form.clear_problems()
        self.problems.value = ""
        self._after_run_chosen()

    def _after_run_chosen(self) -> None:
        """A panel's own reaction to a new run (nothing by default)."""

    def validate(self):
        """The parameters the action will use, or None with each problem shown at its field."""
        try:
            loaded = self._load(self.form.overrides(self.baseline))
        except ParameterError as exc:
            others = self.form.show_problems(exc.problems)
            self.problems.value = "<br>".join(message_html(p.describe(), ok=False) for p in others)
            return None
        self.form.clear_problems()
        self.problems.value = ""
        return loaded
