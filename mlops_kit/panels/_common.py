"""What every panel shares: background work, error outputs, links, tables, schema forms.

Nothing here knows about runs, images or deployments; the panels call the kit's own
functions for that.
"""

from __future__ import annotations

import functools
import html
import json
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Union, get_args, get_origin

import ipywidgets as widgets

from ..errors import MlopsKitError


def styled(widget: widgets.Widget, *classes: str) -> widgets.Widget:
    """``widget`` with stable CSS classes (what browser tests click and read)."""
    for name in classes:
        widget.add_class(name)
    return widget


def append_line(output: widgets.Output, text: str, *, stream: str = "stdout") -> None:
    """Add a line to an Output widget; safe from any thread (no ``with output:``)."""
    line = text if text.endswith("\n") else text + "\n"
    if stream == "stderr":
        output.append_stderr(line)
    else:
        output.append_stdout(line)


def show_error(output: widgets.Output, exc: BaseException) -> None:
    """A kit error as its message (it says what and why); anything else with its traceback."""
    if isinstance(exc, MlopsKitError):
        append_line(output, str(exc), stream="stderr")
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        append_line(output, text, stream="stderr")


def error_output(css_class: str) -> widgets.Output:
    return styled(widgets.Output(layout=widgets.Layout(max_height="16em", overflow="auto")), css_class)


def reports_errors(errors_attr: str = "errors"):
    """Decorate a panel method (a button callback): any exception it raises lands in the
    panel's error Output instead of the kernel's log, where nobody sees it."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user, never lost
                show_error(getattr(self, errors_attr), exc)
                return None

        return wrapper

    return decorate


class Worker:
    """Long work on a daemon thread so the kernel keeps answering; one job at a time.

    ``start(work, on_error=..., on_done=...)`` runs ``work()``; an exception goes to
    ``on_error(exc)`` first, and to ``errors`` unless that returns True (it showed it
    where it belongs); ``on_done()`` runs last, always. ``cancel`` is the event a
    job checks where it can stop safely.
    """

    def __init__(self, errors: widgets.Output, name: str):
        self.errors = errors
        self.name = name
        self.thread: threading.Thread | None = None
        self.cancel = threading.Event()

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, work: Callable[[], Any], *, on_error: Callable[[BaseException], bool] | None = None,
              on_done: Callable[[], None] | None = None) -> threading.Thread:
        if self.busy:
            raise MlopsKitError(f"{self.name} is already running; wait for it or cancel it.")
        self.cancel = threading.Event()

        def body() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - the thread's end; shown in the panel
                handled = False
                if on_error is not None:
                    try:
                        handled = bool(on_error(exc))
                    except Exception as inner:  # noqa: BLE001
                        show_error(self.errors, inner)
                if not handled:
                    show_error(self.errors, exc)
            finally:
                if on_done is not None:
                    try:
                        on_done()
                    except Exception as exc:  # noqa: BLE001
                        show_error(self.errors, exc)

        self.thread = threading.Thread(target=body, name=f"mlops-kit-{self.name}", daemon=True)
        self.thread.start()
        return self.thread

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


def guarded(callback: Callable[..., Any], errors: widgets.Output) -> Callable[..., None]:
    """``callback`` that never raises: a bug in a progress handler must not stop the work
    it reports on, and must not vanish either."""

    def call(*args, **kwargs):
        try:
            callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            show_error(errors, exc)

    return call


# --- links -----------------------------------------------------------------------------

def _servers() -> list[dict]:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # pragma: no cover - jupyter_server comes with jupyterlab
        return []
    try:
        return list(list_running_servers())
    except Exception:  # noqa: BLE001 - unreadable runtime files: plain paths instead
        return []


def server_url(path: Path, *, view: str = "lab/tree") -> str | None:
    """The URL (from the server's root, with its base URL) under which the Jupyter server
    this kernel belongs to serves ``path``; None when no running server has it under its
    root. ``view``: ``lab/tree`` opens a notebook in JupyterLab, ``files`` serves the file."""
    path = Path(path).resolve()
    for server in _servers():
        root = Path(server.get("root_dir") or server.get("notebook_dir") or "/").resolve()
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        base = server.get("base_url") or "/"
        return f"{base.rstrip('/')}/{view}/{relative.as_posix()}"
    return None


def file_links(paths: Iterable[Path], *, view: str = "lab/tree", css_class: str = "mlk-link") -> str:
    """HTML: a link per file, or its path where no server serves it."""
    items = []
    for path in paths:
        url = server_url(path, view=view)
        name = html.escape(Path(path).name)
        if url:
            items.append(f'<a class="{css_class}" href="{html.escape(url)}" target="_blank" '
                         f'title="{html.escape(str(path))}">{name}</a>')
        else:
            items.append(f'<code class="{css_class}" title="{html.escape(str(path))}">{html.escape(str(path))}</code>')
    return " &middot; ".join(items)


# --- tables ----------------------------------------------------------------------------

def html_table(headers: list[str], rows: list[list[Any]], *, css_class: str = "mlk-table",
               row_classes: list[str] | None = None) -> str:
    """A plain HTML table, every cell escaped (cells given as ``Markup`` are kept)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        klass = f' class="{row_classes[index]}"' if row_classes else ""
        cells = "".join(f"<td>{cell if isinstance(cell, Markup) else html.escape(_text(cell))}</td>"
                        for cell in row)
        body.append(f"<tr{klass}>{cells}</tr>")
    return (f'<table class="{css_class}" style="border-collapse: collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


class Markup(str):
    """HTML that a table keeps as it is."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


TABLE_CSS = """<style>
.mlk-table th, .mlk-table td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.mlk-table td:first-child, .mlk-runs-rows td:nth-child(2) { white-space: nowrap; }
.mlk-table tr.mlk-failed td { color: #b00020; }
.mlk-message-error { color: #b00020; }
a.mlk-link, a.mlk-link-notebook, a.mlk-link-report { color: #1565c0; text-decoration: underline; }
.mlk-message-ok { color: #1b5e20; }
</style>"""


def message_html(text: str, *, ok: bool) -> str:
    css = "mlk-message-ok" if ok else "mlk-message-error"
    return f'<span class="{css}">{html.escape(text)}</span>'


# --- forms generated from the parameter schema ------------------------------------------

def schema_field(dotted: str):
    """The pydantic ``FieldInfo`` of a dotted parameter key (``data.test_size``)."""
    from ..params import RunParams

    keys = dotted.split(".")
    field = RunParams.model_fields[keys[0]]
    for key in keys[1:]:
        field = field.default_factory.model_fields[key]  # type: ignore[union-attr]
    return field


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def css_name(dotted: str) -> str:
    return dotted.replace(".", "-").replace("_", "-")


class ParameterField(widgets.VBox):
    """One schema key: an input widget chosen by its annotation, its description, and the
    place where a validation message about it shows."""

    def __init__(self, dotted: str, *, suggestions: Iterable[str] = ()):
        self.key = dotted
        field = schema_field(dotted)
        annotation, self.optional = _unwrap_optional(field.annotation)
        self.input = self._make_input(annotation, list(suggestions))
        self.input.description = dotted
        self.input.style = {"description_width": "11em"}
        self.input.layout = widgets.Layout(width="28em", flex="0 0 auto")
        help_text = widgets.HTML(f'<span style="color: #666">{html.escape(field.description or "")}</span>')
        self.message = styled(widgets.HTML("", layout=widgets.Layout(margin="0 0 0 11.5em")), "mlk-field-message")
        super().__init__([widgets.HBox([self.input, help_text]), self.message])
        styled(self, "mlk-field", f"mlk-field-{css_name(dotted)}")

    def _make_input(self, annotation: Any, suggestions: list[str]) -> widgets.ValueWidget:
        if get_origin(annotation) is Literal:
            options = [(str(v), v) for v in get_args(annotation)]
            if self.optional:  # a Dropdown's None means "nothing selected": "" stands for None
                options.insert(0, ("(none)", ""))
            return widgets.Dropdown(options=options)
        if annotation is bool:
            return widgets.Checkbox(indent=False)
        if annotation is int and not self.optional:
            return widgets.IntText()
        if annotation is float and not self.optional:
            return widgets.FloatText()
        if suggestions:
            return widgets.Combobox(options=suggestions, ensure_option=False)
        return widgets.Text(placeholder="(none)" if self.optional else "")

    @property
    def value(self) -> Any:
        value = self.input.value
        if self.optional and value == "":
            return None
        return value

    @value.setter
    def value(self, value: Any) -> None:
        if isinstance(self.input, widgets.Dropdown):
            self.input.value = "" if value is None and self.optional else value
        elif isinstance(self.input, (widgets.Text, widgets.Combobox)):
            self.input.value = "" if value is None else str(value)
        else:
            self.input.value = value

    def override(self) -> str:
        """``key=value`` as ``--set`` takes it (typed by the schema on the other side)."""
        value = self.value
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(self.input, (widgets.Text, widgets.Combobox)) and not self.optional:
            text = str(value)
        else:
            text = json.dumps(value) if not isinstance(value, str) else value
        return f"{self.key}={text}"

    def show_problem(self, text: str | None) -> None:
        self.message.value = message_html(text, ok=False) if text else ""


def lookup(loaded_params: Any, dotted: str) -> Any:
    value = loaded_params
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def problem_text(problem: Any) -> str:
    """What a field shows: expected and found (its file is the form itself)."""
    text = f"expected {problem.expected}; found {problem.found}."
    if problem.suggestion:
        text += f" Did you mean {problem.suggestion!r}?"
    return text


class ParameterForm(widgets.VBox):
    """Fields for some schema keys. ``overrides(baseline)`` turns the values that differ from
    the loaded file into ``--set`` overrides; ``show_problems`` puts each
    :class:`~mlops_kit.errors.ParameterProblem` next to its field and returns the others."""

    def __init__(self, keys: Iterable[str], *, suggestions: dict[str, Iterable[str]] | None = None):
        suggestions = suggestions or {}
        self.fields = {key: ParameterField(key, suggestions=suggestions.get(key, ())) for key in keys}
        self._filling = False
        self._listeners: list[Callable[[], None]] = []
        for field in self.fields.values():
            field.input.observe(self._changed, names="value")
        super().__init__(list(self.fields.values()))

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self, change) -> None:
        if not self._filling:
            for callback in self._listeners:
                callback()

    def fill(self, loaded_params: Any) -> None:
        """Show the values of a validated ``RunParams`` (no change events)."""
        self._filling = True
        try:
            for key, field in self.fields.items():
                field.value = lookup(loaded_params, key)
        finally:
            self._filling = False

    def overrides(self, baseline: Any | None) -> list[str]:
        result = []
        for key, field in self.fields.items():
            if baseline is None or field.value != lookup(baseline, key):
                result.append(field.override())
        return result

    def clear_problems(self) -> None:
        for field in self.fields.values():
            field.show_problem(None)

    def show_problems(self, problems: list[Any]) -> list[Any]:
        self.clear_problems()
        others = []
        by_key: dict[str, list[str]] = {}
        for problem in problems:
            if problem.key in self.fields:
                by_key.setdefault(problem.key, []).append(problem_text(problem))
            else:
                others.append(problem)
        for key, texts in by_key.items():
            self.fields[key].show_problem(" ".join(texts))
        return others
