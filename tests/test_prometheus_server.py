"""A real Prometheus (Debian's binary, on 127.0.0.1) scraping a real model server with the
rules of k8s/monitoring/rules.yml: the drift gauge and the firing alerts are read through
Prometheus' HTTP API, as an operator's dashboard or Alertmanager would see them.

The rules' hold times (``for: 15m``) are shortened to seconds here; everything else is the
shipped file. The scrape relabels targets as the Prometheus operator does for
k8s/monitoring/podmonitor.yaml (MicroK8s' observability addon). What each rule does at its thresholds is promtool's unit test
(test_prometheus_rules.py)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from _real import need_commands
from _serving_process import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "k8s" / "monitoring" / "rules.yml"
PODMONITOR = REPO / "k8s" / "monitoring" / "podmonitor.yaml"
WINDOW = 400            # serve.monitor.window: the training split has 455 rows
SHIFTED = "mean radius"

pytestmark = pytest.mark.slow


class Prometheus:
    """``prometheus`` on a free port of 127.0.0.1, scraping ``targets`` every second, with the
    rules file's alerts held ``hold`` instead of their minutes."""

    def __init__(self, folder: Path, targets: list[str], hold: str = "2s", relabel_configs: list[dict] = ()):
        need_commands("prometheus")
        rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = hold
        (folder / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": ["rules.yml"],
                  "scrape_configs": [{"job_name": "model-server", "static_configs": [{"targets": targets}],
                                      "relabel_configs": list(relabel_configs)}]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            cwd=folder, stdout=self.log, stderr=subprocess.STDOUT)
        self.folder = folder
        self.wait(lambda: self._ready(), "ready", timeout=60)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.process.returncode}:\n"
                               f"{(self.folder / 'prometheus.log').read_text()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str):
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query's vector: {labels without __name__ (sorted items): value}."""
        data = self.api("query", query=expr)
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in data["result"]}

    def firing(self, alertname: str) -> list[dict]:
        return [a["labels"] for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"]

    def wait(self, condition, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"prometheus: not {what} after {timeout}s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def podmonitor_relabelings() -> list[dict]:
    """The target relabelings the Prometheus operator makes of k8s/monitoring/podmonitor.yaml:
    its own ``endpoint`` label (the port's name), then the PodMonitor's, in Prometheus' spelling."""
    monitor = yaml.safe_load(PODMONITOR.read_text(encoding="utf-8"))
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    return [{"target_label": "endpoint", "replacement": endpoint["port"]},
            *({_snake(k): v for k, v in rule.items()} for rule in endpoint.get("relabelings", []))]


def _snake(key: str) -> str:
    """sourceLabels -> source_labels"""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


@pytest.fixture
def prometheus_for(tmp_path):
    started: list[Prometheus] = []

    def start(server: ServerProcess) -> Prometheus:
        started.append(Prometheus(tmp_path, [f"127.0.0.1:{server.port}"], relabel_configs=podmonitor_relabelings()))
        return started[-1]

    yield start
    for prometheus in started:
        prometheus.stop()


def training_rows(model_dir: Path) -> list[dict]:
    from mlops_kit import data

    train, _, schema = data.load_splits(model_dir)
    return train.drop(columns=[schema["target"]]).to_dict(orient="records")


def send(server: ServerProcess, rows: list[dict], batch: int = 100) -> None:
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(rows), batch):
            answer = client.post(f"{server.url}/predict", json=rows[start:start + batch])
            assert answer.status_code == 200, answer.text


def test_a_server_that_stops_answering_fires_server_down(model_dir, prometheus_for):
    server = ServerProcess(model_dir).wait_ready()
    try:
        prometheus = prometheus_for(server)
        prometheus.wait(lambda: list(prometheus.query("mlops_kit_ready").values()) == [1.0], "scraping a ready server")
        assert prometheus.firing("MlopsKitServerDown") == []
    finally:
        server.stop()
    (alert,) = prometheus.wait(lambda: prometheus.firing("MlopsKitServerDown"), "firing MlopsKitServerDown")
    assert alert["instance"] == f"127.0.0.1:{server.port}" and alert["severity"] == "critical"


def test_shifted_traffic_moves_the_drift_gauge_and_fires_the_drift_alert(model_dir, tmp_path, prometheus_for):
    rows = training_rows(model_dir)[:WINDOW]
    log = tmp_path / "requests"
    server = ServerProcess(model_dir, env={"MLOPS_KIT_DRIFT_WINDOW": str(WINDOW), "MLOPS_KIT_LOG_REQUESTS": str(log),
                                           "MLOPS_KIT_LOG_SAMPLE": "1"}).wait_ready()
    try:
        prometheus = prometheus_for(server)
        # the training split's own rows: a full window, no drift anywhere
        send(server, rows)
        prometheus.wait(lambda: prometheus.query("mlops_kit_drift_window_rows") and
                        list(prometheus.query("mlops_kit_drift_window_rows").values()) == [WINDOW], "a full window")
        detected = prometheus.query("mlops_kit_drift_detected")
        assert len(detected) == len(rows[0]) + 1 and not any(detected.values()), detected  # features + __prediction__
        assert prometheus.firing("MlopsKitDriftDetected") == []
        unshifted = prometheus.query(f'mlops_kit_drift_score{{feature="{SHIFTED}"}}')

        # the same rows with one feature moved by three of its standard deviations
        values = [r[SHIFTED] for r in rows]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        send(server, [{**r, SHIFTED: r[SHIFTED] + 3 * std} for r in rows])
        prometheus.wait(lambda: prometheus.query(f'mlops_kit_drift_detected{{feature="{SHIFTED}"}} == 1'),
                        f"drift detected on {SHIFTED}")
        shifted = prometheus.query(f'mlops_kit_drift_score{{feature="{SHIFTED}"}}')
        assert list(shifted.values())[0] > 10 * max(list(unshifted.values())[0], 0.01), (unshifted, shifted)

        alerts = prometheus.wait(lambda: prometheus.firing("MlopsKitDriftDetected"), "firing MlopsKitDriftDetected")
        assert SHIFTED in {a["feature"] for a in alerts}
        alert = next(a for a in alerts if a["feature"] == SHIFTED)
        assert alert["instance"] == f"127.0.0.1:{server.port}" and alert["job"] == "model-server"

        # every metric the rules read is one the server exports (a renamed metric would leave its
        # alert silent forever)
        read = set(re.findall(r"\bmlops_kit_\w+", RULES.read_text(encoding="utf-8")))
        exported = set(prometheus.api("label/__name__/values"))
        assert read <= exported, f"rules.yml reads metrics the server does not export: {sorted(read - exported)}"
        assert prometheus.query('mlops_kit_request_log_rows_total{outcome="written"}')
        # scraped as the observability addon's PodMonitor scrapes: the route stays `endpoint`,
        # where the error-rate rule looks for it
        assert prometheus.query('mlops_kit_requests_total{endpoint="/predict", status="200"}')
        assert prometheus.firing("MlopsKitRequestLogRowsDropped") == []
        assert prometheus.firing("MlopsKitHighErrorRate") == []
    finally:
        server.stop()
