"""A run picker shared by BuildPanel and DeployPanel: succeeded runs, the champion first."""

from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

from ._common import styled


def run_options(records: list[dict]) -> list[tuple[str, str]]:
    """(label, run id) for every succeeded run, the champion first."""
    good = [r for r in records if r.get("status") == "succeeded"]
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
