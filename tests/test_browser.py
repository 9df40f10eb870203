"""The panels in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by
Python Playwright (never `playwright install`), and one Voila render.

Screenshots go to a temporary folder; to regenerate the committed ones in docs/screenshots:

    MLOPS_KIT_SCREENSHOTS_DIR=docs/screenshots python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _real import need, need_commands
from conftest import REPO

pytestmark = pytest.mark.browser

CONTROL_PANEL = REPO / "notebooks" / "00_control_panel.ipynb"
TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"no answer from {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Server:
    def __init__(self, url: str, token: str, root: Path, runs: Path, env: dict):
        self.url, self.token, self.root, self.runs, self.env = url, token, root, runs, env

    def open_copy(self, name: str) -> str:
        """A fresh copy of the control panel (pages on one notebook would share a kernel)."""
        shutil.copy(CONTROL_PANEL, self.root / f"{name}.ipynb")
        return f"{self.url}lab/tree/{name}.ipynb?token={self.token}&reset"


@pytest.fixture(scope="session")
def server_env(tmp_path_factory) -> tuple[Path, dict]:
    """A root folder and an environment isolated from the user's Jupyter setup; runs land
    under the root (so the panels' links resolve), never in the checkout's runs/."""
    base = tmp_path_factory.mktemp("browser")
    root = base / "root"
    root.mkdir()
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        folder = base / name.lower()
        folder.mkdir()
        env[name] = str(folder)
    env["MLOPS_KIT_RUNS_DIR"] = str(root / "runs")
    env["MLOPS_KIT_PROJECT_DIR"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return base, env


@pytest.fixture(scope="session")
def jupyterlab(server_env):
    need_commands("chromium")
    base, env = server_env
    root = base / "root"
    settings = base / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={base / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_http(f"{url}api/status?token={token}", process, log)
        yield Server(url, token, root, root / "runs", env)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    need_commands("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Python Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=shutil.which("chromium"),
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1600})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where screenshots go: ``$MLOPS_KIT_SCREENSHOTS_DIR`` (docs/screenshots regenerates the
    committed ones), else a temporary folder."""
    explicit = os.environ.get("MLOPS_KIT_SCREENSHOTS_DIR")
    folder = Path(explicit) if explicit else tmp_path_factory.mktemp("screenshots")
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()


def open_control_panel(page, jupyterlab: Server, name: str) -> None:
    """Open a copy of the control panel in JupyterLab, wait for its kernel, run all cells,
    and wait for the panels to render."""
    page.goto(jupyterlab.open_copy(name))
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }", timeout=TIMEOUT_MS)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.locator(".mlk-pipeline-run").wait_for(state="visible")
    page.locator(".mlk-runs-table").wait_for(state="visible")


def test_run_default_pipeline_in_jupyterlab(page, jupyterlab, screenshots):
    open_control_panel(page, jupyterlab, "control-run")
    pipeline = page.locator(".mlk-pipeline")
    pipeline.locator(".mlk-pipeline-run").click()
    status = pipeline.locator(".mlk-pipeline-status")
    status.filter(has_text=re.compile("succeeded|failed|did not finish|problems")).wait_for()
    text = status.inner_text()
    assert "succeeded" in text, text + "\n" + pipeline.locator(".mlk-pipeline-errors").inner_text() \
        + pipeline.locator(".mlk-pipeline-failure").inner_text()
    run_id = re.search(r"Run (\S+) succeeded", text).group(1)
    record = json.loads((jupyterlab.runs / run_id / "run.json").read_text())
    assert record["status"] == "succeeded"
    # every stage's bar says it succeeded; the log tells the story
    for stage in ("data", "train", "evaluate"):
        assert "succeeded" in pipeline.locator(f".mlk-stage-{stage} .mlk-stage-state").inner_text()
    assert f"run {run_id}" in pipeline.locator(".mlk-pipeline-log").inner_text()
    # the links open the executed notebooks in JupyterLab and serve the reports
    notebook_links = pipeline.locator("a.mlk-link-notebook")
    assert notebook_links.count() == 3
    assert notebook_links.first.get_attribute("href") == f"/lab/tree/runs/{run_id}/notebooks/01_data.ipynb"
    assert pipeline.locator("a.mlk-link-report").first.get_attribute("href") == \
        f"/files/runs/{run_id}/reports/01_data.html"
    # the runs panel refreshed itself: the new run is in the table
    runs = page.locator(".mlk-runs")
    runs.locator(".mlk-runs-table").filter(has_text=run_id).wait_for()
    assert "succeeded" in runs.locator(f".mlk-runs-table tr:has-text('{run_id}')").inner_text()
    pipeline.screenshot(path=str(screenshots / "pipeline-panel.png"))
    # its plots show in the runs panel
    option = runs.locator(".mlk-runs-select option", has_text=run_id)
    runs.locator(".mlk-runs-select select").select_option(option.get_attribute("value"))
    runs.locator(".mlk-runs-plots").click()
    runs.locator(".mlk-runs-plot-images img").first.wait_for()
    runs.screenshot(path=str(screenshots / "runs-panel.png"))
    assert not pipeline.locator(".mlk-pipeline-errors").inner_text().strip()

    # the build panel lists the builders (what works here, and why the others do not)
    build = page.locator(".mlk-build")
    build.locator(".mlk-build-run-refresh").click()
    build.locator(".mlk-build-builders").filter(has_text="auto picks").or_(
        build.locator(".mlk-build-builders").filter(has_text="No builder works here")).wait_for()
    build.screenshot(path=str(screenshots / "build-panel.png"))

    # deploy the new run on this machine, see the smoke test pass, and undeploy it
    deploy = page.locator(".mlk-deploy")
    deploy.locator(".mlk-deploy-run-refresh").click()
    try:
        deploy.locator(".mlk-deploy-start").click()
        deploy.locator(".mlk-deploy-status").filter(has_text=re.compile("deployed at|failed")).wait_for()
        assert "deployed at http://127.0.0.1:" in deploy.locator(".mlk-deploy-status").inner_text(), \
            deploy.inner_text()
        assert "Smoke test passed" in deploy.locator(".mlk-deploy-smoke").inner_text()
        deploy.screenshot(path=str(screenshots / "deploy-panel.png"))
    finally:
        deploy.locator(".mlk-deploy-undeploy").click()
        deploy.locator(".mlk-deploy-status").filter(has_text="nothing deployed").wait_for()


def test_bad_parameter_shows_its_message_in_the_form(page, jupyterlab, screenshots):
    open_control_panel(page, jupyterlab, "control-bad-parameter")
    pipeline = page.locator(".mlk-pipeline")
    test_size = pipeline.locator(".mlk-field-data-test-size")
    test_size.locator("input").fill("1.5")
    test_size.locator("input").press("Enter")
    message = test_size.locator(".mlk-field-message")
    message.filter(has_text="less than 1").wait_for()
    assert "found 1.5" in message.inner_text()
    model = pipeline.locator(".mlk-field-train-model")
    model.locator("input").fill("random_forrest")
    model.locator("input").press("Enter")
    model.locator(".mlk-field-message").filter(has_text="random_forest").wait_for()
    pipeline.locator(".mlk-pipeline-run").click()
    pipeline.locator(".mlk-pipeline-status").filter(has_text="Fix the parameters").wait_for()
    assert not list(jupyterlab.runs.glob("*/run.json")) or all(
        json.loads(p.read_text())["params"]["data"]["test_size"] != 1.5 for p in jupyterlab.runs.glob("*/run.json"))
    pipeline.locator(".mlk-pipeline-form").screenshot(path=str(screenshots / "pipeline-form-error.png"))


def test_control_panel_renders_in_voila(page, server_env, screenshots):
    need_commands("chromium")
    need(shutil.which("voila") is not None or _has_module("voila"), "voila is not installed (pip install voila)")
    base, env = server_env
    folder = base / "voila"
    folder.mkdir()
    shutil.copy(CONTROL_PANEL, folder / "control.ipynb")
    port = _free_port()
    log = base / "voila.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "voila", "control.ipynb", "--no-browser",
                                    f"--port={port}", "--Voila.ip=127.0.0.1"],
                                   env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_http(url, process, log)
        page.goto(url)
        page.locator(".mlk-pipeline-run").wait_for(state="visible")
        page.locator(".mlk-runs-table").wait_for(state="visible")
        assert page.locator(".mlk-field-data-source input").input_value() == "sklearn:breast_cancer"
        page.screenshot(path=str(screenshots / "voila-control-panel.png"), full_page=True)
    finally:
        _stop(process)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_monitor_panel_judges_a_log_shows_a_feature_and_retrains(page, jupyterlab, screenshots, tmp_path):
    """A model run and a request log of shifted traffic with late labels; the Monitor panel
    checks it (a monitor run for real), plots a chosen feature and retrains on the export."""
    from test_monitor_stage import _labels, make_model_run, make_customers, shifted, write_log

    model = make_model_run(jupyterlab.runs, tmp_path)
    frame = shifted(make_customers(800, seed=21))
    live = write_log(model / "artifacts", frame, tmp_path / "log")
    _labels(live, frame).to_csv(tmp_path / "labels.csv", index=False)
    open_control_panel(page, jupyterlab, "control-monitor")
    panel = page.locator(".mlk-monitor")
    panel.locator(".mlk-monitor-run-refresh").click()
    option = panel.locator(".mlk-monitor-run option", has_text=model.name)
    panel.locator(".mlk-monitor-run select").select_option(option.get_attribute("value"))
    panel.locator(".mlk-monitor-log input").fill(str(tmp_path / "log"))
    panel.locator(".mlk-monitor-labels input").fill(str(tmp_path / "labels.csv"))
    panel.locator(".mlk-monitor-export input").fill(str(tmp_path / "live.csv"))
    panel.locator(".mlk-monitor-check").click()
    status = panel.locator(".mlk-monitor-status")
    status.filter(has_text=re.compile("live rows judged|failed")).wait_for(timeout=300_000)
    assert "800 live rows judged" in status.inner_text(), status.inner_text() + panel.inner_text()
    verdict = panel.locator(".mlk-monitor-verdict").inner_text()
    assert "Verdict: drift" in verdict and "age" in verdict and "income" in verdict
    first = panel.locator(".mlk-monitor-rows tbody tr").first.inner_text()
    assert first.split()[0] in ("age", "income", "(prediction)")
    assert "400 labelled rows" in panel.locator(".mlk-monitor-performance").inner_text()
    option = panel.locator(".mlk-monitor-feature option", has_text="income")
    panel.locator(".mlk-monitor-feature select").select_option(option.get_attribute("value"))
    panel.locator(".mlk-monitor-plot").wait_for(state="visible")
    panel.screenshot(path=str(screenshots / "monitor-panel.png"))
    monitors = [json.loads(p.read_text()) for p in jupyterlab.runs.glob("*/run.json")]
    assert any(r.get("kind") == "monitor" and r["status"] == "succeeded" for r in monitors)
    # retraining on the exported labelled rows is one click: a pipeline run on them
    panel.locator(".mlk-monitor-retrain").click()
    status.filter(has_text=re.compile("Retraining run .* (succeeded|failed)|failed")).wait_for(timeout=600_000)
    assert re.search(r"Retraining run \S+ succeeded", status.inner_text()), status.inner_text() + panel.inner_text()
    assert not panel.locator(".mlk-monitor-errors").inner_text().strip()
