"""Model files: skops with the kit's own allow-list of types, and a sha256 check first."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlops_kit import data, model_io, train
from mlops_kit.errors import ArtifactError, DataError

from conftest import make_mixed_frame


@pytest.mark.parametrize("model, task, n_classes", [
    (model, task, n_classes) for model, spec in sorted(train.ESTIMATORS.items())
    for task, n_classes in (("classification", 2), ("classification", 3), ("regression", 0))
    if (spec.classifier if task == "classification" else spec.regressor)])
def test_every_registry_model_saves_and_loads_back(tmp_path, model, task, n_classes):
    frame = make_mixed_frame(n=120, task="regression" if task == "regression" else "classification")
    if n_classes == 3:
        frame["label"] = np.where(frame.index % 3 == 0, "maybe", frame["label"])
    checked = data.validate_dataset(data.Dataset(frame, "test", "label"), task=task)
    schema = data.infer_schema(checked, "label")
    params = {"n_estimators": 5} if "forest" in model or model == "gradient_boosting" else {}
    result = train.train_model(checked.frame, schema, model=model, params=params, seed=0)
    saved = model_io.save_model(result.model, tmp_path)
    (tmp_path / model_io.CARD_FILE).write_text(json.dumps(saved))
    loaded = model_io.load_model(tmp_path)
    X, _ = train.features_and_target(checked.frame, schema)
    assert (loaded.predict(X) == result.model.predict(X)).all()


def test_tampered_file_is_refused_before_parsing(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    path = copy / model_io.MODEL_FILE
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(ArtifactError, match="does not match its record: sha256 must be"):
        model_io.load_model(copy)


def test_types_outside_the_kit_allow_list_are_refused(tmp_path):
    """skops trusts most scikit-learn classes by default; the kit trusts only its own."""
    import skops.io as sio
    from sklearn.preprocessing import MinMaxScaler

    scaler = MinMaxScaler().fit(np.arange(6.0).reshape(3, 2))
    with pytest.raises(ArtifactError, match="MinMaxScaler"):
        model_io.save_model(scaler, tmp_path)
    data_bytes = sio.dumps(scaler)  # written by someone else, with a matching card
    (tmp_path / model_io.MODEL_FILE).write_bytes(data_bytes)
    import hashlib
    (tmp_path / model_io.CARD_FILE).write_text(json.dumps({"sha256": hashlib.sha256(data_bytes).hexdigest()}))
    with pytest.raises(ArtifactError, match="does not trust: sklearn.preprocessing._data.MinMaxScaler"):
        model_io.load_model(tmp_path)


def test_missing_model_and_card_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="No model at"):
        model_io.load_model(tmp_path)


@pytest.mark.parametrize("mutate, words", [
    (lambda f: f.assign(label=np.where(f.index == 0, "rare", f["label"])), "classes 'rare' have a single row"),
    (lambda f: f.assign(label=f["label"].where(f.index > 3)), "has 4 missing values"),
    (lambda f: f.head(5), "has 5 rows; data.min_rows asks for at least 20"),
    (lambda f: f[["label", "constant", "empty"]], "no usable feature columns"),
])
def test_data_validation_messages(mutate, words):
    frame = mutate(make_mixed_frame(n=60))
    with pytest.raises(DataError, match=words):
        data.validate_dataset(data.Dataset(frame, "table.csv", "label"))


def test_missing_target_names_the_columns_and_a_suggestion(tmp_path):
    path = tmp_path / "table.csv"
    make_mixed_frame(n=30).to_csv(path, index=False)
    with pytest.raises(DataError, match="'lable' is not a column of .*table.csv. Columns: 'age'") as excinfo:
        data.load_dataset(str(path), "lable")
    assert excinfo.value.column == "lable" and "did you mean 'label'" in str(excinfo.value)


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="could not be read"):
        data.load_dataset(str(path), "label")


def test_regression_target_must_be_numeric():
    frame = make_mixed_frame(n=60)
    with pytest.raises(DataError, match="must be numeric for regression"):
        data.validate_dataset(data.Dataset(frame, "table.csv", "label"), task="regression")
