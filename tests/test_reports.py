"""The HTML reports of a run, exported by a process of its own (mlops_kit._reports): the same
report as an export in this process, a failure named, never a hang."""

from __future__ import annotations

import nbformat
import pytest

from mlops_kit import _reports
from mlops_kit.errors import ArtifactError


def _notebook(path):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hello')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# A report"), cell]
    nbformat.write(notebook, path)
    return path


def test_the_report_process_writes_the_report_this_process_would(tmp_path):
    notebook = _notebook(tmp_path / "stage.ipynb")
    process = _reports.ReportProcess()
    try:
        written = process.export(notebook, tmp_path / "apart.html")
        pid = process._process.pid
        again = process.export(notebook, tmp_path / "again.html")
        assert process._process.pid == pid  # one process serves every export (nbconvert imported once)
    finally:
        process.close()
    here = _reports.export_html(notebook, tmp_path / "here.html")
    assert written.read_text() == here.read_text() == again.read_text()
    assert "A report" in here.read_text()


def test_a_failed_export_names_the_notebook_and_the_next_one_still_works(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    process = _reports.ReportProcess()
    try:
        with pytest.raises(ArtifactError, match=r"broken\.ipynb was not written: NotJSONError"):
            process.export(broken, tmp_path / "broken.html")
        assert not (tmp_path / "broken.html").exists()
        assert process.export(_notebook(tmp_path / "fine.ipynb"), tmp_path / "fine.html").is_file()
    finally:
        process.close()


def test_a_report_process_that_died_is_replaced(tmp_path):
    notebook = _notebook(tmp_path / "stage.ipynb")
    process = _reports.ReportProcess()
    try:
        process.export(notebook, tmp_path / "first.html")
        process._process.kill()
        process._process.wait()
        # the next export starts a new process: a report is never lost to a dead helper
        assert process.export(notebook, tmp_path / "second.html").is_file()
    finally:
        process.close()
