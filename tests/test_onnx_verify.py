"""ONNX verification (``compile.verify``) catches each way the compiled graph can differ from
scikit-learn: equal labels with probabilities outside the tolerance, a label of another type,
a missing row, regression predictions off by more than the tolerance. The real compiled
graph runs in onnxruntime; only scikit-learn's side is altered, to play a graph that differs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mlops_kit import artifacts, compile as compiling, model_io
from mlops_kit.compile import ATOL, RTOL, compile_model


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, model_dir, mixed_model_dir, regression_model_dir):
    """Compiled copies: int labels (breast cancer), text labels (mixed), a regression forest."""
    folders = {}
    for name, source in (("int", model_dir), ("text", mixed_model_dir), ("regression", regression_model_dir)):
        folder = tmp_path_factory.mktemp(f"verify-{name}") / "artifacts"
        shutil.copytree(source, folder)
        assert compile_model(folder).passed
        folders[name] = folder
    return folders


def load(folder):
    sha256 = json.loads((folder / artifacts.MODEL_CARD.name).read_text())["sha256"]
    return model_io.load_model(folder, expected_sha256=sha256)


class Altered:
    """The scikit-learn model with its predictions or probabilities passed through a function."""

    def __init__(self, model, predict=None, proba=None):
        self.model, self._predict, self._proba = model, predict, proba

    def predict(self, X):
        out = self.model.predict(X)
        return self._predict(out) if self._predict else out

    def predict_proba(self, X):
        out = self.model.predict_proba(X)
        return self._proba(out) if self._proba else out


def verify(folder, **alter) -> artifacts.OnnxCheck:
    report = artifacts.read_document(folder / artifacts.ONNX_REPORT.name, artifacts.OnnxReport)
    schema = json.loads((folder / artifacts.SCHEMA.name).read_text())
    test = pd.read_parquet(folder / artifacts.TEST_SPLIT.name)
    model = Altered(load(folder), **alter)
    return compiling.verify((folder / artifacts.ONNX_MODEL.name).read_bytes(), report, model, test, schema)


def toward_the_label(eps):
    """Probabilities moved toward each row's most likely class: the labels stay the same."""
    def alter(proba):
        onehot = np.eye(proba.shape[1])[np.argmax(proba, axis=1)]
        return proba * (1 - eps) + eps * onehot
    return alter


@pytest.mark.parametrize("name", ["int", "text", "regression"])
def test_the_unaltered_model_verifies(compiled, name):
    check = verify(compiled[name])
    assert check.predictions_equal and check.mismatched_predictions == 0
    assert check.rows == len(pd.read_parquet(compiled[name] / artifacts.TEST_SPLIT.name)) and check.edge_rows > 0
    assert check.max_abs_diff <= ATOL + RTOL * 1e3                 # regression values are about 100
    assert check.compared == ("predictions" if name == "regression" else "probabilities")


@pytest.mark.parametrize("name", ["int", "text"])
def test_equal_labels_with_probabilities_outside_the_tolerance_fail(compiled, name):
    check = verify(compiled[name], proba=toward_the_label(1e-3))
    assert check.mismatched_predictions == 0                                   # every label equal
    assert check.predictions_equal is False and check.compared == "probabilities"
    assert ATOL < check.max_abs_diff <= 1e-3


def test_probabilities_within_the_tolerance_pass(compiled):
    check = verify(compiled["text"], proba=toward_the_label(ATOL / 4))
    assert check.predictions_equal and 0 < check.max_abs_diff <= ATOL


def test_a_label_of_another_type_or_value_is_a_mismatch(compiled):
    rows = len(pd.read_parquet(compiled["int"] / artifacts.TEST_SPLIT.name))
    check = verify(compiled["int"], predict=lambda labels: labels.astype(np.float64))   # 1.0 == 1, but not an int
    assert check.predictions_equal is False and check.mismatched_predictions == rows + check.edge_rows
    for other in ("maybe", "zzz"):                                    # before and after "no" and "yes"
        check = verify(compiled["text"], predict=lambda labels: np.where(np.arange(len(labels)) == 3, other, labels))
        assert check.predictions_equal is False and check.mismatched_predictions == 1


def test_a_missing_prediction_is_a_mismatch(compiled):
    check = verify(compiled["text"], predict=lambda labels: labels[:-1])
    assert check.predictions_equal is False and check.mismatched_predictions == 1


def test_regression_predictions_outside_the_tolerance_fail_and_are_counted(compiled):
    check = verify(compiled["regression"], predict=lambda y: y + np.where(np.arange(len(y)) < 5, 1e-2, 0.0))
    assert check.predictions_equal is False and check.mismatched_predictions == 5
    assert check.compared == "predictions" and check.max_abs_diff == pytest.approx(1e-2, abs=1e-4)


def test_the_stage_refuses_a_graph_whose_probabilities_differ(compiled, tmp_path, monkeypatch):
    """compile_model end to end: no model.onnx, and onnx.json says why."""
    folder = tmp_path / "artifacts"
    shutil.copytree(compiled["text"], folder)
    loader = model_io.load_model

    def altered_model(*args, **kwargs):
        model = loader(*args, **kwargs)
        estimator = model[-1]
        estimator.predict_proba = lambda X, original=estimator.predict_proba: toward_the_label(1e-3)(original(X))
        return model

    monkeypatch.setattr(model_io, "load_model", altered_model)
    report = compile_model(folder)
    assert report.passed is False and not (folder / artifacts.ONNX_MODEL.name).exists()
    assert report.check.mismatched_predictions == 0 and not report.check.predictions_equal
    assert "0 of" in report.reason and "largest probabilities difference" in report.reason
    assert f"(allowed {ATOL:g} + {RTOL:g} x |value|)" in report.reason


@pytest.mark.parametrize("got, want, close", [
    ([0.5, ATOL], [0.5, 0.0], True),                # exactly the absolute tolerance
    ([0.5, 2 * ATOL], [0.5, 0.0], False),
    ([1e6 + 1], [1e6], True),                       # within ATOL + RTOL * |1e6| = 1.00001
    ([1e6 + 1.5], [1e6], False),
    ([-1e6 - 1], [-1e6], True),                     # |value|: a negative one too
    ([-1e6 - 1.5], [-1e6], False),
    ([], [], True),
])
def test_close_is_the_documented_tolerance(got, want, close):
    result, diff = compiling._close(np.array(got), np.array(want))
    assert result is close
    assert diff == (float(np.max(np.abs(np.array(got) - np.array(want)))) if got else 0.0)


def test_close_refuses_a_different_shape():
    assert compiling._close(np.zeros((3, 2)), np.zeros((3, 3))) == (False, float("inf"))
    assert compiling._close(np.zeros(3), np.zeros((3, 1))) == (False, float("inf"))
    assert compiling._close(np.zeros((3, 3)), np.zeros((3, 2))) == (False, float("inf"))
    assert compiling._close(np.zeros((3, 1)), np.zeros(3)) == (False, float("inf"))
