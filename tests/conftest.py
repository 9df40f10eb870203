"""Shared fixtures. Real papermill, real kernels, real servers: see DESIGN.md, Testing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory, monkeypatch):
    """Every test writes runs into its own folder, never into the checkout's runs/."""
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("MLOPS_KIT_RUNS_DIR", str(runs))
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(REPO))
    return runs


def make_mixed_frame(n: int = 300, *, task: str = "classification", seed: int = 0) -> pd.DataFrame:
    """A tabular frame with numeric and categorical columns and missing values."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = rng.normal(50_000, 15_000, n)
    city = rng.choice(["paris", "lyon", "nantes", "lille"], n)
    plan = rng.choice(["basic", "pro", None], n, p=[0.5, 0.4, 0.1])
    score = 0.03 * (age - 50) + (income - 50_000) / 20_000 + (city == "paris") * 1.0 + rng.normal(0, 0.5, n)
    age[rng.random(n) < 0.1] = np.nan
    income[rng.random(n) < 0.05] = np.nan
    frame = pd.DataFrame({"age": age, "income": income, "city": city, "plan": plan,
                          "constant": 1, "empty": np.nan})
    frame["label"] = np.where(score > 0, "yes", "no") if task == "classification" else score * 10 + 100
    return frame


@pytest.fixture(scope="session")
def mixed_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "customers.csv"
    make_mixed_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def mixed_regression_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "spend.csv"
    make_mixed_frame(task="regression").to_csv(path, index=False)
    return path


def train_into(folder: Path, source: str, target: str, *, model: str = "logistic_regression",
               params: dict | None = None, seed: int = 42) -> Path:
    """The data, train and evaluate stages' work, in-process (no notebooks): a model folder for
    tests of what comes after training (serving, image, deploy)."""
    from mlops_kit import data, train

    folder = folder / "artifacts"  # the catalog's layout: a run folder's artifacts/
    folder.mkdir(parents=True, exist_ok=True)
    dataset = data.load_dataset(source, target)
    validation = data.validate_dataset(dataset)
    schema = data.infer_schema(validation, target)
    train_frame, test_frame = data.split_dataset(validation, target, test_size=0.2, seed=seed)
    data.save_splits(train_frame, test_frame, schema, folder)
    _, _, schema = data.load_splits(folder)
    result = train.train_model(train_frame, schema, model=model, params=params or {}, seed=seed)
    train.save_trained(result, schema, test_frame, folder, model=model, params=params or {}, seed=seed)
    train.save_profile(result.model, train_frame, schema, folder)
    # and the evaluate stage's: metrics.json with the gate (package refuses an unevaluated model)
    from mlops_kit import evaluate

    X_test, y_test = train.features_and_target(test_frame, schema)
    metrics = evaluate.compute_metrics(result.model, X_test, y_test, schema["task"])
    evaluate.save_metrics(folder, schema["task"], metrics, evaluate.check_gate(metrics, {}, schema["task"]),
                          data_fingerprint=schema.get("fingerprint"), model=model)
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The default model (breast cancer, logistic regression) in a folder laid out like a
    run's artifacts/: model.skops, model_card.json, schema.json, examples.json, monitor_profile.json."""
    return train_into(tmp_path_factory.mktemp("model"), "sklearn:breast_cancer", "target")


@pytest.fixture(scope="session")
def mixed_model_dir(tmp_path_factory, mixed_csv) -> Path:
    """A classifier on numeric + categorical columns with missing values."""
    return train_into(tmp_path_factory.mktemp("mixed-model"), str(mixed_csv), "label")


@pytest.fixture(scope="session")
def regression_model_dir(tmp_path_factory, mixed_regression_csv) -> Path:
    return train_into(tmp_path_factory.mktemp("regression-model"), str(mixed_regression_csv), "label",
                      model="random_forest", params={"n_estimators": 20})


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    """A project folder of its own, so a test can change a notebook."""
    project = tmp_path / "project"
    import shutil

    shutil.copytree(REPO / "notebooks", project / "notebooks")
    shutil.copytree(REPO / "parameters", project / "parameters")
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(project))
    return project



@pytest.fixture(scope="session")
def image_env():
    """The base-image cache of the session (see test_image_support.image_cache) as the kit's
    cache folder, for the tests that build images."""
    import os

    from test_image_support import image_cache

    old = os.environ.get("MLOPS_KIT_CACHE_DIR")
    os.environ["MLOPS_KIT_CACHE_DIR"] = str(image_cache())
    yield image_cache()
    if old is None:
        os.environ.pop("MLOPS_KIT_CACHE_DIR", None)
    else:
        os.environ["MLOPS_KIT_CACHE_DIR"] = old
