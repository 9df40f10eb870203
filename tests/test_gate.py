"""The quality gate (``evaluate.check_gate``) at its edges: a value exactly on a threshold
passes, for a score (a minimum) and for an error (a maximum); the baseline check needs the
whole margin, in points for a score and as a fraction for an error. Values are chosen exact
in binary floating point, so "on the threshold" means equal."""

from __future__ import annotations

import pytest

from mlops_kit.errors import GateFailed
from mlops_kit.evaluate import check_gate, enforce_gate


def verdicts(result: dict) -> list[bool]:
    return [check["passed"] for check in result["checks"]]


@pytest.mark.parametrize("value, passed", [(0.75, True), (0.875, True), (0.75 - 2 ** -20, False)])
def test_a_score_exactly_on_its_minimum_passes(value, passed):
    result = check_gate({"accuracy": value}, {"accuracy": 0.75}, "classification")
    assert result["passed"] is passed and verdicts(result) == [passed]
    (check,) = result["checks"]
    assert check["threshold"] == 0.75 and check["value"] == value
    assert check["reason"] == f"accuracy {value:.4f} {'meets' if passed else 'misses'} >= 0.75"


@pytest.mark.parametrize("value, passed", [(3.0, True), (2.5, True), (3.0 + 2 ** -20, False)])
def test_an_error_exactly_on_its_maximum_passes(value, passed):
    result = check_gate({"rmse": value, "r2": 0.5}, {"rmse": 3.0}, "regression")
    assert result["passed"] is passed and verdicts(result) == [passed]
    assert result["checks"][0]["reason"] == f"rmse {value:.4f} {'meets' if passed else 'misses'} <= 3.0"


def test_every_threshold_counts_and_a_metric_not_measured_fails():
    result = check_gate({"accuracy": 0.9, "f1": 0.5}, {"accuracy": 0.75, "f1": 0.75}, "classification")
    assert result["passed"] is False and verdicts(result) == [True, False]
    result = check_gate({"accuracy": 0.9}, {"roc_auc": 0.5, "rmse": 1.0}, "classification")
    assert verdicts(result) == [False, False] and result["passed"] is False
    assert [c["reason"] for c in result["checks"]] == ["roc_auc is not measured for this classification model",
                                                        "rmse is not measured for this classification model"]
    assert check_gate({"accuracy": 0.9}, {}, "classification") == {"passed": True, "checks": []}


# --- the baseline: beat the dummy by the margin ------------------------------------------

@pytest.mark.parametrize("value, passed", [(0.75, True), (0.8125, True), (0.75 - 2 ** -20, False), (0.625, False)])
def test_a_score_must_beat_the_dummy_by_the_whole_margin(value, passed):
    """balanced_accuracy (the classification default): the dummy's 0.5 plus 0.25 points."""
    result = check_gate({"balanced_accuracy": value}, {}, "classification",
                        baseline={"balanced_accuracy": 0.5}, baseline_margin=0.25)
    (check,) = result["checks"]
    assert result["passed"] is passed and check["passed"] is passed
    assert (check["metric"], check["threshold"], check["baseline"]) == ("balanced_accuracy", 0.75, 0.5)
    assert check["reason"] == (f"balanced_accuracy {value:.4f} {'beats' if passed else 'does not beat'} the dummy "
                               "baseline 0.5000 by the margin (+0.25: >= 0.7500)")


@pytest.mark.parametrize("value, passed", [(3.0, True), (2.0, True), (3.0 + 2 ** -20, False), (3.5, False),
                                           (4.5, False)])
def test_an_error_must_beat_the_dummy_by_the_margin_as_a_fraction(value, passed):
    """rmse 4.0 for the dummy and a margin of 25 %: at most 3.0. A model at 3.5 beats the
    dummy, but not by the margin."""
    result = check_gate({"rmse": value, "r2": 0.5}, {}, "regression", baseline={"rmse": 4.0, "r2": 0.0},
                        baseline_metric="rmse", baseline_margin=0.25)
    (check,) = result["checks"]
    assert result["passed"] is passed and check["passed"] is passed
    assert (check["metric"], check["threshold"], check["baseline"]) == ("rmse", 3.0, 4.0)
    assert check["reason"].endswith("by the margin (-25%: <= 3.0000)")


def test_the_regression_default_is_r2_and_a_zero_margin_only_needs_a_tie():
    result = check_gate({"r2": 0.0, "rmse": 1.0}, {}, "regression", baseline={"r2": 0.0, "rmse": 1.0},
                        baseline_margin=0.0)
    assert result["passed"] is True and result["checks"][0]["metric"] == "r2"
    result = check_gate({"r2": -2 ** -20, "rmse": 1.0}, {}, "regression", baseline={"r2": 0.0}, baseline_margin=0.0)
    assert result["passed"] is False


def test_no_margin_means_no_baseline_check_and_the_baseline_comes_before_the_thresholds():
    metrics = {"balanced_accuracy": 0.5, "accuracy": 0.9}
    assert check_gate(metrics, {"accuracy": 0.5}, "classification", baseline={"balanced_accuracy": 0.9},
                      baseline_margin=None)["passed"] is True
    assert check_gate(metrics, {"accuracy": 0.5}, "classification", baseline=None,
                      baseline_margin=0.02)["passed"] is True
    result = check_gate(metrics, {"accuracy": 0.5}, "classification", baseline={"balanced_accuracy": 0.9},
                        baseline_margin=0.02)
    assert result["passed"] is False and verdicts(result) == [False, True]
    assert result["checks"][0]["baseline"] == 0.9 and "baseline" not in result["checks"][1]


@pytest.mark.parametrize("metrics, baseline, name", [
    ({"accuracy": 0.9}, {"balanced_accuracy": 0.5}, "balanced_accuracy"),     # the model's value is missing
    ({"balanced_accuracy": 0.9}, {"accuracy": 0.5}, "balanced_accuracy"),     # the baseline's is
])
def test_a_baseline_metric_not_measured_fails_the_gate(metrics, baseline, name):
    result = check_gate(metrics, {}, "classification", baseline=baseline, baseline_margin=0.02)
    (check,) = result["checks"]
    assert result["passed"] is False and check["passed"] is False and check["metric"] == name
    assert check["reason"] == f"{name} is not measured for this classification model and its baseline"
    assert check["threshold"] == baseline.get(name, 0.0)


def test_a_baseline_metric_of_the_other_task_fails_the_gate():
    result = check_gate({"rmse": 1.0}, {}, "classification", baseline={"rmse": 2.0}, baseline_metric="rmse",
                        baseline_margin=0.1)
    assert result["passed"] is False and result["checks"][0]["reason"].startswith("rmse is not measured")


def test_enforce_gate_raises_with_the_failed_reasons_only():
    enforce_gate(check_gate({"accuracy": 0.75}, {"accuracy": 0.75}, "classification"))
    result = check_gate({"accuracy": 0.5, "f1": 0.9}, {"accuracy": 0.75, "f1": 0.5}, "classification")
    with pytest.raises(GateFailed) as info:
        enforce_gate(result)
    assert info.value.failures == ["accuracy 0.5000 misses >= 0.75"]


def test_the_baseline_options_are_keywords_only():
    with pytest.raises(TypeError):
        check_gate({"balanced_accuracy": 0.5}, {}, "classification", {"balanced_accuracy": 0.9})
