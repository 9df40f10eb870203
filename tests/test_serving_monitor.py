"""Monitoring on the server: live bins (the core's bins, counted per request), drift on
/metrics, request ids, and the request log written by a real server process.

Ground truth by construction: the live counts must equal what the statistical core
(:func:`mlops_kit.monitor.bin_window`) counts on the same rows; unchanged traffic is rows of
the training split itself, shifted traffic the same rows with known features moved.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from _datagen import make_table
from _serving_process import ServerProcess
from conftest import train_into
from mlops_kit import artifacts, monitor
from mlops_kit.errors import ArtifactError
from mlops_kit.monitor import live
from mlops_kit.monitor.requestlog import log_files, read_request_log


# --- helpers ----------------------------------------------------------------------------------

def records_of(frame: pd.DataFrame, schema) -> list[dict]:
    """Rows as a client sends them: numbers, true/false, text, null for missing."""
    out = []
    for row in frame.to_dict(orient="records"):
        record = {}
        for feature in schema.features:
            value = row[feature.name]
            if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
                record[feature.name] = None
            elif feature.kind == "datetime":
                record[feature.name] = pd.Timestamp(value).isoformat()
            elif feature.kind == "boolean":
                record[feature.name] = bool(value)
            elif feature.kind == "numeric":
                record[feature.name] = float(value)
            else:
                record[feature.name] = str(value)
        out.append(record)
    return out


def metric_values(text: str, name: str, *labels: str) -> dict[tuple, float]:
    """``{(values of labels...): value}`` of one metric in a Prometheus exposition."""
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[1] or ""))
            values[tuple(found[label] for label in labels)] = float(match[2])
    return values


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    """A classifier on the generated table: numeric, categorical (one with many levels),
    boolean and date features, missing values everywhere."""
    folder = tmp_path_factory.mktemp("table-model")
    path = folder / "table.csv"
    make_table(3000, seed=0).drop(columns=["customer_id"]).to_csv(path, index=False)
    return train_into(folder, str(path), "label")


# --- the live bins are the core's bins --------------------------------------------------------

@pytest.mark.parametrize("which", ["table_model", "mixed_model_dir", "regression_model_dir", "model_dir"])
def test_live_bins_are_the_cores_bins(request, which):
    """Rows sent as clients send them (with a level never seen in training) counted by the
    server's numpy path equal the core's counts of the same rows, feature by feature and for
    the predictions."""
    from mlops_kit.serving import create_app

    folder = request.getfixturevalue(which)
    app = create_app(folder)
    service = app.state.service
    schema = artifacts.SCHEMA.load(folder)
    profile = artifacts.MONITOR_PROFILE.load(folder)
    frame = pd.read_parquet(folder / "test.parquet")
    sent = records_of(frame, schema)
    category = next((f.name for f in schema.features if f.kind == "categorical"), None)
    if category is not None:
        sent[0][category] = "a level never seen"
    answers = []
    for start in range(0, len(sent), 37):            # requests of several sizes add up
        batch = service.schema.parse_records(sent[start:start + 37])
        predictions, _ = service.predictor.predict(batch)
        service.live_monitor.observe(batch, predictions)
        answers.extend(predictions.tolist())
    expected = monitor.bin_window(profile, pd.DataFrame(sent), predictions=np.array(answers, dtype=object
                                                                                    if which != "regression_model_dir"
                                                                                    else np.float64))
    totals = service.live_monitor.totals()
    for name, labels, offset in service.live_monitor.labels():
        counts = expected.prediction if name == live.PREDICTION else expected.features[name]
        assert totals[offset:offset + len(labels)].tolist() == counts.counts.tolist(), name
        entry = profile.prediction if name == live.PREDICTION else profile.feature(name)
        assert labels == entry.labels
    if category is not None:
        unseen = profile.feature(category).labels.index("unseen")
        assert expected.features[category].counts[unseen] >= 1



def test_the_buffers_kept_between_binnings_grow_and_carry_nothing_over(mixed_model_dir):
    """Binned at every scrape, small then large then small (the monitor's buffers reused,
    grown when a binning holds more rows), the counts are those of the same requests binned
    at once."""
    from mlops_kit.serving import create_app

    service = create_app(mixed_model_dir).state.service
    sent = records_of(pd.read_parquet(mixed_model_dir / "test.parquet"), artifacts.SCHEMA.load(mixed_model_dir))
    assert len(sent) >= 20 and any(row["age"] is None for row in sent[3:-5])   # missing values too
    requests = []
    for part in (sent[:3], sent[3:-5], sent[-5:]):
        batch = service.schema.parse_records(part)
        requests.append((batch, service.predictor.predict(batch)[0]))
    scraped = service.live_monitor
    at_once = live.LiveMonitor(live.read_profile(mixed_model_dir / "monitor_profile.json"),
                               list(service.schema.names), classes=service.predictor.classes)
    for batch, predictions in requests:
        scraped.observe(batch, predictions)
        scraped.totals()
        at_once.observe(batch, predictions)
    assert scraped.totals().tolist() == at_once.totals().tolist()
    assert scraped.snapshot()[2].tolist() == at_once.snapshot()[2].tolist()


@pytest.mark.parametrize("tile_rows", [1, 7])
def test_rows_beyond_the_tiled_edges_are_binned_in_slices_alike(table_model, monkeypatch, tile_rows):
    """A chunk longer than the edges' tile (a slice of rows at a time, the last one shorter)
    counts what the whole chunk at once counts (that one is the core's: the test above)."""
    from mlops_kit.serving import create_app

    service = create_app(table_model).state.service
    batch = service.schema.parse_records(records_of(pd.read_parquet(table_model / "test.parquet"),
                                                    artifacts.SCHEMA.load(table_model))[:250])
    assert batch.rows % 7 and batch.rows <= service.live_monitor._tile_rows
    predictions, _ = service.predictor.predict(batch)
    whole = service.live_monitor
    whole.observe(batch, predictions)
    monkeypatch.setattr(live, "_TILE_ROWS", tile_rows)
    sliced = live.LiveMonitor(live.read_profile(table_model / "monitor_profile.json"), list(service.schema.names),
                              classes=service.predictor.classes)
    assert sliced._tile_rows == tile_rows
    sliced.observe(batch, predictions)
    assert sliced.totals().tolist() == whole.totals().tolist()


def test_numeric_classes_are_binned_by_numpy_as_by_the_levels_dict(model_dir):
    """The default model's integer classes: the vectorized path (no dict per row) gives each
    value the bin the levels' dict gives it: a class, an integral float of a class, a value
    that is no class (the fallback), NaN (missing)."""
    from mlops_kit.serving import create_app

    monitor_ = create_app(model_dir).state.service.live_monitor
    assert monitor_._class_values is not None
    _, lookup = monitor_._prediction
    for values in (np.array([0, 1, 1, 7, -3, 0], np.int64), np.array([0.0, 1.0, np.nan, 0.5, 2.0, -1.0])):
        assert monitor_._class_indexes(values).tolist() == [lookup[v] for v in values.tolist()]


def test_the_onnx_server_counts_the_same_bins_without_scipy_or_pandas(mixed_model_dir, tmp_path):
    """The lean image (onnxruntime, numpy, pydantic: no scipy, pandas or scikit-learn). The ONNX
    runtime's live counts equal the skops runtime's on the same requests (numeric, categorical,
    missing, an unseen level)."""
    import shutil
    import subprocess
    import sys

    from mlops_kit.compile import compile_model
    from mlops_kit.serving import create_app

    folder = tmp_path / "artifacts"
    shutil.copytree(mixed_model_dir, folder)
    assert compile_model(folder).passed
    schema = artifacts.SCHEMA.load(folder)
    sent = records_of(pd.read_parquet(folder / "test.parquet"), schema)
    sent[0]["city"] = "a city never seen"
    (tmp_path / "sent.json").write_text(json.dumps(sent))
    script = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {{"scipy", "pandas", "sklearn", "skops"}}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from mlops_kit.serving import create_app
service = create_app({str(folder)!r}, runtime="onnx").state.service
batch = service.schema.parse_records(json.loads(open({str(tmp_path / "sent.json")!r}).read()))
service.live_monitor.observe(batch, service.predictor.predict(batch)[0])
judged = service.live_monitor.judge(service.live_monitor.snapshot())
print(json.dumps({{"platform": service.predictor.platform, "totals": service.live_monitor.totals().tolist(),
                  "scores": judged.scores}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    onnx = json.loads(done.stdout)
    service = create_app(folder, runtime="skops").state.service
    batch = service.schema.parse_records(sent)
    service.live_monitor.observe(batch, service.predictor.predict(batch)[0])
    assert onnx["platform"] != service.predictor.platform
    assert onnx["totals"] == service.live_monitor.totals().tolist()
    assert onnx["scores"] == pytest.approx(service.live_monitor.judge(service.live_monitor.snapshot()).scores)


@pytest.mark.parametrize("bin_rows", [None, 1, 25])
def test_the_window_slides_and_judges_like_the_core(mixed_model_dir, monkeypatch, bin_rows):
    """The window keeps the last ``window`` rows (give or take a chunk); its verdict per
    feature is the core's permutation test at the core's Bonferroni level. Whether the
    requests are binned one by one, a few chunks at a time (a chunk left half filled) or all
    at the scrape, the window is the same."""
    from mlops_kit.serving import create_app

    if bin_rows:
        monkeypatch.setattr(live, "BIN_ROWS", bin_rows)
    app = create_app(mixed_model_dir, drift_window=100)
    assert app.state.service.live_monitor._bin_rows == max(10, bin_rows or live.BIN_ROWS)
    counting = app.state.service.live_monitor
    schema = artifacts.SCHEMA.load(mixed_model_dir)
    train = pd.read_parquet(mixed_model_dir / "train.parquet")
    shifted = train.assign(age=train["age"] + 40)
    for frame in (train.iloc[:150], shifted.iloc[:150]):
        for start in range(0, 150, 10):
            batch = app.state.service.schema.parse_records(records_of(frame.iloc[start:start + 10], schema))
            counting.observe(batch, app.state.service.predictor.predict(batch)[0])
    seen, rows, counts = snapshot = counting.snapshot()
    assert seen == 300 and 100 <= rows <= 110
    assert [chunk for chunk, _ in counting._chunks] == [10] * 10    # a chunk closes at window / 10 rows
    # a window of 150: chunks of 15 rows at least, so two requests of 10 each, the open one carried over
    wider = live.LiveMonitor(live.read_profile(mixed_model_dir / "monitor_profile.json"),
                             list(app.state.service.schema.names), window=150,
                             classes=app.state.service.predictor.classes)
    for start in range(0, 150, 10):
        batch = app.state.service.schema.parse_records(records_of(train.iloc[start:start + 10], schema))
        wider.observe(batch, app.state.service.predictor.predict(batch)[0])
    assert wider.snapshot()[1] == 150 and [chunk for chunk, _ in wider._chunks] == [20] * 7
    window = shifted.iloc[150 - rows:150]
    alone = live.LiveMonitor(live.read_profile(mixed_model_dir / "monitor_profile.json"),
                             list(app.state.service.schema.names), classes=app.state.service.predictor.classes)
    batch = app.state.service.schema.parse_records(records_of(window, schema))
    alone.observe(batch, app.state.service.predictor.predict(batch)[0])
    assert counts.tolist() == alone.totals().tolist()      # the window's counts: exactly its rows'
    assert counting.totals().tolist() == (counts + _counts_of(
        app, train.iloc[:150], schema) + _counts_of(app, shifted.iloc[:150 - rows], schema)).tolist()
    judged = counting.judge(snapshot)
    profile = artifacts.MONITOR_PROFILE.load(mixed_model_dir)
    window = shifted.iloc[150 - rows:150]
    batch = app.state.service.schema.parse_records(records_of(window, schema))
    verdict = monitor.check_window(profile, pd.DataFrame(records_of(window, schema)),
                                   predictions=app.state.service.predictor.predict(batch)[0])
    assert judged.detected["age"] and verdict.features["age"].drift
    assert {n for n, d in judged.detected.items() if d} - {"__prediction__"} == \
        {n for n in verdict.drifted if n != "prediction"}
    assert judged.scores["age"] == pytest.approx(verdict.features["age"].score)


def _counts_of(app, frame, schema):
    service = app.state.service
    alone = live.LiveMonitor(live.read_profile(service.predictor.model_dir / "monitor_profile.json"),
                             list(service.schema.names), classes=service.predictor.classes)
    if len(frame):
        batch = service.schema.parse_records(records_of(frame, schema))
        alone.observe(batch, service.predictor.predict(batch)[0])
    return alone.totals()


# --- the profile the server reads -------------------------------------------------------------

def _profile_document(model_dir) -> dict:
    return json.loads((model_dir / "monitor_profile.json").read_text())


CRAFTED_PROFILES = {
    "edges not increasing": lambda d: d["features"][0]["numeric"]["edges"].reverse(),
    "two edges swapped": lambda d: d["features"][0]["numeric"]["edges"].insert(1, d["features"][0]["numeric"]["edges"].pop(2)),
    "an infinite edge": lambda d: d["features"][0]["numeric"].update(edges=[1e400]),
    "too many edges": lambda d: d["features"][0]["numeric"].update(edges=list(range(200))),
    "counts not adding up": lambda d: d["features"][0]["counts"].__setitem__(0, d["features"][0]["counts"][0] + 1),
    "a negative count": lambda d: d["features"][0]["counts"].__setitem__(0, -1),
    "an unknown kind": lambda d: d["features"][0].update(kind="image"),
    "a long name": lambda d: d["features"][0].update(name="x" * 300),
    "another version": lambda d: d.update(version=2),
    "features not a list": lambda d: d.update(features={"a": 1}),
    "a level twice": lambda d: d["prediction"]["categorical"].update(
        other_levels=[d["prediction"]["categorical"]["levels"][0]]),
}


@pytest.mark.security
@pytest.mark.parametrize("name", list(CRAFTED_PROFILES))
def test_a_crafted_profile_is_refused_naming_the_field(model_dir, tmp_path, name):
    document = _profile_document(model_dir)
    CRAFTED_PROFILES[name](document)
    path = tmp_path / "monitor_profile.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match=r"monitor_profile.json (is not a valid monitoring profile|must be)"):
        live.read_profile(path)


@pytest.mark.security
def test_a_huge_or_broken_profile_is_refused(tmp_path):
    path = tmp_path / "monitor_profile.json"
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(ArtifactError, match="must be JSON"):
        live.read_profile(path)
    path.write_bytes(b" " * (live.MAX_PROFILE_BYTES + 1))
    with pytest.raises(ArtifactError, match="must be at most"):
        live.read_profile(path)


def test_a_model_without_profile_is_served_without_live_bins(model_dir, tmp_path):
    import shutil

    from mlops_kit.serving import create_app

    copy = tmp_path / "artifacts"
    shutil.copytree(model_dir, copy)
    (copy / "monitor_profile.json").unlink()
    app = create_app(copy)
    assert app.state.service.live_monitor is None


# --- a real server process --------------------------------------------------------------------

def _send(url: str, records: list[dict], *, v2: bool = False, request_id: str | None = None) -> httpx.Response:
    if v2:
        columns = {name: [r[name] for r in records] for name in records[0]}
        body = {"inputs": [{"name": n, "shape": [len(v)], "datatype": "BYTES", "data": v} for n, v in columns.items()]}
        if request_id is not None:
            body["id"] = request_id
        return httpx.post(f"{url}/v2/models/logistic_regression/infer", json=body, timeout=30)
    headers = {"x-request-id": request_id} if request_id is not None else {}
    return httpx.post(f"{url}/predict", json=records, headers=headers, timeout=30)


def test_shifted_traffic_moves_the_named_features_gauges_on_a_real_server(mixed_model_dir, tmp_path):
    """Unchanged traffic (rows of the training split) leaves every drift gauge at 0; the same
    rows with ``age`` moved by 40 years and every ``city`` set to one level flag exactly those
    two (and perhaps the predictions), through both HTTP paths."""
    schema = artifacts.SCHEMA.load(mixed_model_dir)
    train = pd.read_parquet(mixed_model_dir / "train.parquet")
    unchanged = records_of(train.sample(200, replace=True, random_state=1), schema)
    shifted = [{**r, "age": None if r["age"] is None else r["age"] + 40, "city": "paris"} for r in unchanged]
    server = ServerProcess(mixed_model_dir, env={"MLOPS_KIT_DRIFT_WINDOW": "200"}).wait_ready()
    try:
        for v2, rows in ((False, unchanged[:100]), (True, unchanged[100:])):
            assert _send(server.url, rows, v2=v2).status_code == 200
        before = httpx.get(f"{server.url}/metrics").text
        for v2, rows in ((False, shifted[:100]), (True, shifted[100:])):
            assert _send(server.url, rows, v2=v2).status_code == 200
        after = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    detected_before = metric_values(before, "mlops_kit_drift_detected", "feature")
    detected_after = metric_values(after, "mlops_kit_drift_detected", "feature")
    score_before, score_after = (metric_values(t, "mlops_kit_drift_score", "feature") for t in (before, after))
    assert set(detected_before) == {("age",), ("income",), ("city",), ("plan",), ("__prediction__",)}
    assert not any(detected_before.values()), detected_before
    assert {name for (name,), flag in detected_after.items() if flag} - {"__prediction__"} == {"age", "city"}
    assert score_after[("age",)] > 10 * score_before[("age",)] and score_after[("city",)] > 1.0
    assert metric_values(after, "mlops_kit_drift_window_rows")[()] == 200
    bins = metric_values(after, "mlops_kit_feature_bin_total", "feature", "bin")
    assert sum(v for (feature, _), v in bins.items() if feature == "city") == 400
    assert bins[("city", "paris")] >= 200 and bins[("city", "unseen")] == 0
    assert sum(metric_values(after, "mlops_kit_prediction_bin_total", "bin").values()) == 400


def test_request_ids_on_both_paths(mixed_model_dir):
    import asyncio

    from mlops_kit.serving import create_app

    schema = artifacts.SCHEMA.load(mixed_model_dir)
    rows = records_of(pd.read_parquet(mixed_model_dir / "test.parquet").head(2), schema)
    server = ServerProcess(mixed_model_dir).wait_ready()
    try:
        answer = _send(server.url, rows, request_id="order-17:a")
        assert answer.headers["x-request-id"] == "order-17:a"
        generated = _send(server.url, rows, request_id="not valid!").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert _send(server.url, rows, v2=True, request_id="oip.1").json()["id"] == "oip.1"
        answered = _send(server.url, rows, v2=True)
        assert re.fullmatch(r"[0-9a-f]{32}", answered.json()["id"]) and answered.headers["x-request-id"] == \
            answered.json()["id"]
        refused = _send(server.url, rows, v2=True, request_id="../../x")
        assert refused.status_code == 400 and refused.json()["detail"]["field"] == "id"
    finally:
        server.stop()

    async def asgi() -> httpx.Response:   # the ASGI path (what the httptools protocol does not answer itself)
        transport = httpx.ASGITransport(app=create_app(mixed_model_dir))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post("/predict", json=rows, headers={"x-request-id": "abc"})

    assert asyncio.run(asgi()).headers["x-request-id"] == "abc"


def _load(url: str, records: list[dict], *, threads: int, requests: int, size: int, ids: list | None = None,
          stop: threading.Event | None = None) -> None:
    def work(k: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(requests):
                if stop is not None and stop.is_set():
                    return
                start = (k * requests + i) * size % max(1, len(records) - size)
                try:
                    answer = client.post(f"{url}/predict", json=records[start:start + size])
                except httpx.TransportError:
                    return
                if ids is not None and answer.status_code == 200:
                    ids.append((answer.headers["x-request-id"], size))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_under_load_the_log_is_complete_up_to_counted_drops(mixed_model_dir, tmp_path):
    schema = artifacts.SCHEMA.load(mixed_model_dir)
    records = records_of(pd.read_parquet(mixed_model_dir / "train.parquet"), schema)
    log = tmp_path / "log"
    server = ServerProcess(mixed_model_dir, "--log-requests", str(log), "--log-sample", "1").wait_ready()
    ids: list = []
    try:
        _load(server.url, records, threads=6, requests=40, size=10, ids=ids)
        deadline = time.monotonic() + 20
        while True:   # the writer catches up off the request path
            counted = metric_values(httpx.get(f"{server.url}/metrics").text, "mlops_kit_request_log_rows_total", "outcome")
            if counted[("written",)] + counted[("dropped",)] == 2400 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        server.stop()
    assert counted[("written",)] + counted[("dropped",)] == 2400 and counted[("sampled_out",)] == 0
    frame = read_request_log(log, model_sha256=json.loads((mixed_model_dir / "model_card.json").read_text())["sha256"],
                             features=[f.name for f in schema.features])
    assert len(frame) == counted[("written",)] and frame.attrs["torn_lines"] == 0
    sent = dict(ids)
    per_request = frame.groupby("request_id")["row"].agg(["count", "max"])
    assert set(per_request.index) <= set(sent)                  # every logged request was answered
    assert all(per_request["count"] == 10) and all(per_request["max"] == 9)   # whole requests, never a part
    assert len(per_request) == len(sent) - counted[("dropped",)] / 10


def test_the_log_is_bounded_on_disk(mixed_model_dir, tmp_path):
    schema = artifacts.SCHEMA.load(mixed_model_dir)
    records = records_of(pd.read_parquet(mixed_model_dir / "train.parquet"), schema)
    log = tmp_path / "log"
    server = ServerProcess(mixed_model_dir, "--log-requests", str(log),
                           env={"MLOPS_KIT_LOG_MAX_FILE_BYTES": "16384",
                                "MLOPS_KIT_LOG_MAX_TOTAL_BYTES": "65536"}).wait_ready()
    try:
        _load(server.url, records, threads=2, requests=60, size=20)
    finally:
        server.stop()
    files = log_files(log)
    assert len(files) >= 4 and sum(p.stat().st_size for p in files) <= 65536
    assert all(p.stat().st_size <= 16384 for p in files)
    assert len(read_request_log(log)) > 0


def test_kill_9_mid_load_leaves_a_readable_log(mixed_model_dir, tmp_path):
    schema = artifacts.SCHEMA.load(mixed_model_dir)
    records = records_of(pd.read_parquet(mixed_model_dir / "train.parquet"), schema)
    log = tmp_path / "log"
    server = ServerProcess(mixed_model_dir, "--log-requests", str(log), "--log-sample", "1").wait_ready()
    stop = threading.Event()
    load = threading.Thread(target=_load, args=(server.url, records),
                            kwargs=dict(threads=4, requests=10_000, size=50, stop=stop))
    load.start()
    try:
        deadline = time.monotonic() + 30
        while not (log_files(log) and sum(p.stat().st_size for p in log_files(log)) > 200_000):
            assert time.monotonic() < deadline, "the server wrote no log under load"
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
    finally:
        stop.set()
        load.join()
        server.stop()
    frame = read_request_log(log)
    assert len(frame) > 0 and frame.attrs["torn_lines"] <= 1
    assert set(frame.columns) >= {"request_id", "row", "time", "model_sha256", "age", "city", "prediction"}


# --- settings: parameters, local deploys, the MicroK8s manifest --------------------------------

def test_serve_monitor_parameters_reach_local_and_microk8s_servers(_isolated_runs):
    from mlops_kit.deploy import local
    from mlops_kit.deploy.k8s import _render
    from mlops_kit.params import load_params

    params = load_params(overrides=["serve.monitor.sample=0.25", "serve.monitor.window=300",
                                    "serve.monitor.max_total_bytes=33554432"]).params
    env = local.server_env(params, {}, run_id="20260101-000000-abcd")
    folder = _isolated_runs / ".requests" / "20260101-000000-abcd"        # beside the run, never in it
    assert env["MLOPS_KIT_LOG_REQUESTS"] == str(folder) and env["MLOPS_KIT_LOG_SAMPLE"] == "0.25"
    assert env["MLOPS_KIT_DRIFT_WINDOW"] == "300" and env["MLOPS_KIT_LOG_MAX_TOTAL_BYTES"] == "33554432"
    settings, mounts = local._container_settings(env)   # a container: the folder bind-mounted, writable
    assert settings["MLOPS_KIT_LOG_REQUESTS"] == _render.REQUEST_LOG_DIR_IN_IMAGE
    assert mounts == [(str(folder.resolve()), _render.REQUEST_LOG_DIR_IN_IMAGE)] and folder.is_dir()
    assert "MLOPS_KIT_LOG_REQUESTS" not in local.server_env(load_params().params, {}, run_id="r")   # sample 0

    objects = _render.render(params, image="localhost:32000/m:1", model_sha256="a" * 64, run_id="r")
    config = _render.find(objects, "ConfigMap")["data"]
    assert config["MLOPS_KIT_LOG_SAMPLE"] == "0.25" and config["MLOPS_KIT_DRIFT_WINDOW"] == "300"
    assert config["MLOPS_KIT_LOG_REQUESTS"] == _render.REQUEST_LOG_DIR_IN_IMAGE
    pod = _render.find(objects, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == _render.REQUESTS_VOLUME]
    assert mount["mountPath"] == _render.REQUEST_LOG_DIR_IN_IMAGE
    (volume,) = [v for v in pod["volumes"] if v["name"] == _render.REQUESTS_VOLUME]
    assert volume["emptyDir"] == {"sizeLimit": "48Mi"}                  # 32 MiB of log + a 16 MiB file


def test_bad_monitor_settings_are_refused_naming_the_key():
    from mlops_kit.errors import ParameterError
    from mlops_kit.params import load_params
    from mlops_kit.serving import ServeSettings

    with pytest.raises(ParameterError, match="serve.monitor.sample"):
        load_params(overrides=["serve.monitor.sample=2"])
    with pytest.raises(ParameterError, match="max_file_bytes must be at most max_total_bytes"):
        load_params(overrides=["serve.monitor.max_file_bytes=4096", "serve.monitor.max_total_bytes=2048"])
    with pytest.raises(ParameterError, match="log_requests: expected a folder for the request log"):
        ServeSettings(log_sample=0.5)
    with pytest.raises(ParameterError, match="MLOPS_KIT_DRIFT_WINDOW: expected an integer"):
        ServeSettings.from_env({"MLOPS_KIT_DRIFT_WINDOW": "many"})
