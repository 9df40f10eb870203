"""The alert rules of k8s/monitoring/ and the scraping of the model server's pods: promtool
checks the rules and runs their unit tests (input series, expected alerts); the PrometheusRule
and the PodMonitor of MicroK8s' observability addon hold the same rules and select the pods the
kit renders. The rules against a real Prometheus and a real server: test_prometheus_server.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from mlops_kit.deploy import k8s
from mlops_kit.deploy.k8s import _render
from mlops_kit.params import RunParams

from _real import need_commands

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "rules.yml"
#: the alerts the rules must hold (issue 21, item 3)
ALERTS = {"MlopsKitDriftDetected", "MlopsKitRequestLogRowsDropped", "MlopsKitHighErrorRate",
          "MlopsKitServerNotReady", "MlopsKitServerDown"}
#: the Helm release of MicroK8s' observability addon: its Prometheus selects rules and monitors by it
RELEASE = {"release": "kube-prom-stack"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    need_commands("promtool")
    return subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)


def load(name: str) -> dict:
    return yaml.safe_load((MONITORING / name).read_text(encoding="utf-8"))


def alert_names(rules: dict) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert alert_names(load("rules.yml")) == ALERTS


def test_the_rules_unit_tests_pass():
    """rules_test.yml: each alert fires on the series that should fire it, at the time it
    should, with its labels and rendered annotations, and stays silent on its near misses."""
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in load("rules_test.yml")["tests"] for case in test["alert_rule_test"]}
    assert tested == ALERTS


def test_a_broken_rule_fails_its_unit_tests(tmp_path):
    """The unit tests can fail: the error-rate threshold lowered to 2 % fires on the 3 % server."""
    text = RULES.read_text(encoding="utf-8")
    assert text.count("> 0.05") == 1
    (tmp_path / "rules.yml").write_text(text.replace("> 0.05", "> 0.02"), encoding="utf-8")
    (tmp_path / "rules_test.yml").write_text((MONITORING / "rules_test.yml").read_text(encoding="utf-8"),
                                             encoding="utf-8")
    need_commands("promtool")
    result = subprocess.run(["promtool", "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "MlopsKitHighErrorRate" in result.stdout + result.stderr


def test_the_prometheusrule_holds_the_same_rules_for_the_observability_addon():
    rule = load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert RELEASE.items() <= rule["metadata"]["labels"].items()
    plain = load("rules.yml")
    for group, ours in zip(rule["spec"]["groups"], plain["groups"], strict=True):
        for a, b in zip(group["rules"], ours["rules"], strict=True):
            assert a == b, f"k8s/monitoring/prometheusrule.yaml: rule {a.get('alert')} differs from rules.yml's " \
                           f"{b.get('alert')}: paste rules.yml's groups under spec."
    assert rule["spec"] == plain


def _deployment() -> dict:
    return _render.find(_render.load_manifests(REPO / "k8s"), "Deployment")


def test_the_podmonitor_selects_the_servers_pods_and_scrapes_its_metrics_port():
    monitor = load("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert RELEASE.items() <= monitor["metadata"]["labels"].items()
    deployment = _deployment()
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    # the operator's `endpoint` target label (the port's name) is dropped, so the server's own
    # (the route) keeps its name; the server never sets its job, namespace or pod
    # (test_prometheus_server.py scrapes through these relabelings)
    assert {"action": "labeldrop", "regex": "endpoint"} in endpoint["relabelings"]
    assert not endpoint.get("honorLabels", False)


@pytest.mark.parametrize("params", [RunParams(), RunParams(deploy={"name": "churn-api", "namespace": "team-a",
                                                                     "port": 9000})], ids=["default", "renamed"])
def test_rendered_pods_carry_the_scrape_annotations_of_their_metrics_port(params):
    objects = k8s.render(params, image="mlops-kit/model:run-1@sha256:" + "a" * 64, model_sha256="b" * 64,
                         run_id="20260101-120000-abcd")
    pod = _render.find(objects, "Deployment")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    (server,) = [c for c in pod["spec"]["containers"] if c["name"] == _render.CONTAINER]
    http = next(p for p in server["ports"] if p["name"] == "http")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http["containerPort"])
    assert str(http["containerPort"]) == server["args"][server["args"].index("--port") + 1]
    assert annotations["prometheus.io/path"] == "/metrics"
    # the kit's own annotations are still filled in beside them
    assert annotations[_render.MODEL_SHA] == "b" * 64
