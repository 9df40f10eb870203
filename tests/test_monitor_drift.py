"""The monitor's statistical core, on ground truth by construction.

Unchanged traffic is drawn from the same distribution as the training split (a generated
table: fresh seeds of ``tests/_datagen.make_table``; breast cancer: held-out rows), shifted
traffic is the same rows with known features moved: the verdict must flag exactly those.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _datagen import make_table
from mlops_kit import data, monitor
from mlops_kit.errors import ArtifactError

SIZES = (50, 500, 5000)
SEEDS = 40


def _rule_predictions(frame: pd.DataFrame, task: str) -> np.ndarray:
    """A fixed "model" of the generated table: its answers are a known function of two features."""
    x0, x1 = frame["x0"].fillna(0).to_numpy(), frame["x1"].fillna(0).to_numpy()
    if task == "classification":
        return np.where(x0 - x1 > 1.0, "yes", "no").astype(object)
    return 2 * x0 - x1


@pytest.fixture(scope="module")
def generated():
    """The generated table's training split as 01_data leaves it, and its schema."""
    validation = data.validate_dataset(data._dataset(make_table(20_000, seed=0), "generated", "label", []))
    return validation.frame, data.infer_schema(validation, "label")


@pytest.fixture(scope="module", params=["classification", "regression"])
def profile(request, generated):
    train, schema = generated
    schema = {**schema, "task": request.param, "classes": None if request.param == "regression" else schema["classes"]}
    return monitor.build_profile(train, schema, predictions=_rule_predictions(train, request.param))


def _window(n: int, seed: int) -> pd.DataFrame:
    """Live rows as a client sends them (yes/no text for the boolean, text for categories)."""
    return make_table(n, seed=10_000 + seed).drop(columns=["label"])


def _check(profile, frame: pd.DataFrame, seed: int = 0):
    return monitor.check_window(profile, frame, predictions=_rule_predictions(frame, profile.task), seed=seed)


# --- unchanged traffic: false alarms at most 5 % of windows, whatever their size --------------

def test_unchanged_traffic_rarely_alarms_at_any_window_size(profile):
    """40 windows per size; every verdict that is not healthy (any feature's drift, the
    predictions' drift or a data-quality flag) counts as a false alarm.

    The family-wise rate is at most 5 % by construction; with 120 windows the count of alarms
    is at most Binomial(120, 0.05): P(> 12) < 1 %, so 12 (10 %) is the margin for noise. Per
    size, Binomial(40, 0.05): P(> 6) < 1 %.
    """
    alarms = {}
    for n in SIZES:
        verdicts = [_check(profile, _window(n, seed), seed) for seed in range(SEEDS)]
        alarms[n] = [(v.drifted, v.quality_issues) for v in verdicts if v.verdict != "healthy"]
        assert verdicts[0].window.drift_tests == len(profile.features) + 1
    assert sum(len(a) for a in alarms.values()) <= 12, alarms
    assert all(len(a) <= 6 for a in alarms.values()), alarms


def test_unchanged_breast_cancer_rows_rarely_alarm():
    """A real data set (30 numeric features) and a real model: windows of 50 held-out rows
    (the held-out split has 171: larger windows would repeat rows, which is not the same
    distribution). Binomial(40, 0.05): P(> 6) < 1 %."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame["target"])
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train[features], train["target"])
    schema = {"version": 2, "task": "classification", "target": "target", "target_dtype": "int64", "rows": len(train),
              "features": [{"name": c, "kind": "numeric", "dtype": "float64", "nullable": False} for c in features]}
    profile = monitor.build_profile(train, schema, predictions=model.predict(train[features]))
    rng = np.random.default_rng(0)
    alarms = []
    for seed in range(SEEDS):
        rows = test.iloc[rng.choice(len(test), 50, replace=False)]
        verdict = monitor.check_window(profile, rows, predictions=model.predict(rows[features]), seed=seed)
        if verdict.verdict != "healthy":
            alarms.append((verdict.drifted, verdict.quality_issues))
    assert len(alarms) <= 6, alarms
    # a shifted feature is seen, and moves the predictions
    rows = test.iloc[:50].copy()
    rows["worst concave points"] += 2 * train["worst concave points"].std()
    rows["worst radius"] += 2 * train["worst radius"].std()
    verdict = monitor.check_window(profile, rows, predictions=model.predict(rows[features]))
    assert {"worst concave points", "worst radius", "prediction"} <= set(verdict.drifted)


# --- shifted traffic: exactly the moved features --------------------------------------------

def _shifted(n: int, seed: int) -> pd.DataFrame:
    """x0 moved by one standard deviation, x1's spread doubled, a new level in c3 (30 % of rows)."""
    frame = _window(n, seed)
    frame["x0"] = frame["x0"] + 1.0
    frame["x1"] = frame["x1"] * 2.0
    new = np.random.default_rng(seed).random(n) < 0.3
    frame["c3"] = frame["c3"].where(~new, "c3_new")
    return frame


@pytest.mark.parametrize("n", [500, 5000])
def test_shifted_features_and_a_new_level_are_exactly_those_flagged(profile, n):
    for seed in range(5):
        verdict = _check(profile, _shifted(n, seed), seed)
        assert set(verdict.drifted) == {"x0", "x1", "c3", "prediction"}, (seed, verdict.drifted)
        # the new level is a data-quality problem; x1's doubled spread leaves the training range
        assert "c3" in verdict.quality_issues and set(verdict.quality_issues) <= {"x0", "x1", "c3"}
        assert verdict.quality["c3"].unseen.share > 0.2
        assert verdict.verdict == "quality" and verdict.exit_code == monitor.EXIT_QUALITY
        assert verdict.features["x0"].min_detectable.mean_shift_sd < 1.0


def test_prediction_drift_alone_is_drift(profile):
    """Rows whose x0 moves only inside its training range: a drift verdict (exit 3), not quality."""
    frame = _window(5000, 1)
    frame["x0"] = frame["x0"].abs()  # the same range, other shape: the predictions move too
    verdict = _check(profile, frame)
    assert set(verdict.drifted) == {"x0", "prediction"}
    assert verdict.verdict == "drift" and verdict.exit_code == monitor.EXIT_DRIFT
    assert verdict.prediction.drift and verdict.prediction.p_value <= verdict.prediction.threshold


def test_missing_values_rising_is_a_quality_problem(profile):
    frame = _window(2000, 2)
    frame.loc[frame.index[:600], "x4"] = np.nan
    verdict = _check(profile, frame)
    assert verdict.quality_issues == ["x4"] and verdict.quality["x4"].missing.flagged
    assert verdict.drifted == []  # the values present did not move


# --- what a window can detect, the verdict's shape -------------------------------------------

def test_min_detectable_shrinks_with_the_window(profile):
    shifts = [_check(profile, _window(n, 0)).features["x0"].min_detectable for n in SIZES]
    assert shifts[0].psi > shifts[1].psi > shifts[2].psi > 0
    assert shifts[0].mean_shift_sd > shifts[1].mean_shift_sd > shifts[2].mean_shift_sd > 0
    # a normal feature, 5,000 rows, Bonferroni over 29 tests: about a tenth of a standard deviation
    assert 0.05 < shifts[2].mean_shift_sd < 0.2


def test_verdict_is_json_with_the_issue_shape(profile):
    verdict = _check(profile, _window(500, 3))
    document = json.loads(verdict.model_dump_json())
    assert {"window", "features", "prediction", "quality", "performance", "verdict"} <= set(document)
    assert set(document["features"]["x0"]) >= {"method", "score", "p_value", "threshold", "drift", "min_detectable"}
    assert document["performance"] is None
    assert {monitor.EXIT_HEALTHY, monitor.EXIT_DRIFT, monitor.EXIT_QUALITY, monitor.EXIT_PERFORMANCE} == {0, 3, 4, 5}


# --- binning -----------------------------------------------------------------------------------

def test_bins_count_like_a_plain_loop(profile):
    frame = _window(300, 4)
    window = monitor.bin_window(profile, frame)
    x2 = profile.feature("x2")
    edges = x2.numeric.edges
    expected = [0] * (len(edges) + 2)
    for value in frame["x2"]:
        expected[-1 if pd.isna(value) else sum(e <= value for e in edges)] += 1
    assert window.features["x2"].counts.tolist() == expected
    c1 = profile.feature("c1")
    labels = c1.categorical.levels
    expected = [0] * (len(labels) + 3)
    for value in frame["c1"]:
        expected[-1 if pd.isna(value) else labels.index(value) if value in labels else -2] += 1
    assert window.features["c1"].counts.tolist() == expected


def test_booleans_are_read_as_01_data_reads_them(profile):
    member = profile.feature("member")
    assert member.categorical.levels[0] in ("false", "true") and set(member.categorical.levels) == {"false", "true"}
    values = pd.Series(["yes", "NO", True, 0, 1.0, None, "maybe"], dtype=object)
    counts = monitor.bin_values(member, values).counts
    index = {label: i for i, label in enumerate(member.labels)}
    assert counts[index["true"]] == 3 and counts[index["false"]] == 2
    assert counts[index["unseen"]] == 1 and counts[index["missing"]] == 1


def test_windows_add_up(profile):
    a, b = _window(200, 5), _window(300, 6)
    merged = monitor.bin_window(profile, a) + monitor.bin_window(profile, b)
    whole = monitor.bin_window(profile, pd.concat([a, b], ignore_index=True))
    assert merged.rows == 500
    assert all((merged.features[k].counts == whole.features[k].counts).all() for k in whole.features)


def test_a_window_without_a_feature_is_refused(profile):
    from mlops_kit.errors import DataError

    with pytest.raises(DataError, match="x0"):
        monitor.bin_window(profile, _window(10, 0).drop(columns=["x0"]))


# --- the profile file: round trip and hostile files ---------------------------------------------

def test_profile_round_trips(profile, tmp_path):
    path = profile.save(tmp_path / "profile.json")
    assert monitor.load_profile(path) == profile
    assert path.stat().st_size < 200_000  # 28 features, a 5,000-level one among them
    assert "signup" in profile.skipped  # dates are not monitored, and say so


def _hostile(profile, tmp_path, change) -> str:
    document = json.loads(profile.model_dump_json())
    change(document)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ArtifactError) as caught:
        monitor.load_profile(path)
    return str(caught.value)


def _feature(document, name):
    return next(f for f in document["features"] if f["name"] == name)


def _set(name, key, value):
    def change(document):
        entry = _feature(document, name)
        for part in key[:-1]:
            entry = entry[part]
        entry[key[-1]] = value(entry[key[-1]]) if callable(value) else value
    return change


@pytest.mark.security
@pytest.mark.parametrize("change, expected", [
    (_set("x0", ["numeric", "edges"], lambda e: e[::-1]), "strictly increasing"),
    (_set("x0", ["numeric", "edges"], lambda e: [e[0], float("nan"), *e[2:]]), "finite"),
    (_set("x0", ["numeric", "edges"], lambda e: [e[0], float("inf"), *e[2:]]), "finite"),
    (_set("x0", ["numeric", "edges"], lambda e: list(np.linspace(-1, 1, 5000))), "at most 99"),
    (_set("x0", ["numeric", "min"], 100.0), "min must be at most max"),
    (_set("x0", ["counts"], lambda c: [-1, *c[1:]]), "greater than or equal to 0"),
    (_set("x0", ["counts"], lambda c: c[:-1]), "counts must hold"),
    (_set("x0", ["counts"], lambda c: [10**30, *c[1:]]), "less than or equal"),
    (_set("x0", ["counts"], lambda c: [c[0] + 1, *c[1:]]), "add up to rows"),
    (_set("c1", ["counts"], lambda c: [*c[:-2], 5, c[-1]]), "unseen levels must be 0"),
    (_set("c1", ["categorical", "levels"], lambda lv: [f"l{i}" for i in range(5000)]), "at most 1000"),
    (_set("c1", ["categorical", "levels"], lambda lv: ["x" * 10_000, *lv[1:]]), "at most 256"),
    (_set("c1", ["categorical", "other_levels"], lambda lv: [_LEVEL_OF_C1]), "distinct"),
    (_set("c1", ["kind"], "numeric"), "numeric bins"),
    (_set("c1", ["surprise"], 1), "no such key"),
    (lambda d: d["features"].append(d["features"][0]), "unique"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update(features="x" * 100), "features"),
])
def test_hostile_profiles_are_refused_clearly(profile, tmp_path, change, expected):
    message = _hostile(profile, tmp_path, change)
    assert expected in message and "profile.json" in message


_LEVEL_OF_C1 = "c1_0"


@pytest.mark.security
def test_unreadable_and_oversized_profiles_are_refused(tmp_path):
    from mlops_kit.artifacts import MAX_DOCUMENT_BYTES

    path = tmp_path / "profile.json"
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="must be a JSON document"):
        monitor.load_profile(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="profile.json"):
        monitor.load_profile(path)
    with open(path, "wb") as fh:
        fh.truncate(MAX_DOCUMENT_BYTES + 1)
    with pytest.raises(ArtifactError, match="at most"):
        monitor.load_profile(path)


# --- a small reference, a window 100 times larger; degenerate columns ---------------------------

def _numpy_frame(n: int, seed: int) -> pd.DataFrame:
    """20 numeric features (normal, exponential, integer), 3 categorical (Zipf, 4 to 200 levels),
    a boolean; 5 % missing everywhere."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for j in range(20):
        values = [rng.normal(size=n), rng.exponential(size=n), rng.integers(0, 8, n).astype(float)][j % 3]
        columns[f"x{j}"] = np.where(rng.random(n) < 0.05, np.nan, values)
    for i, levels in enumerate((4, 30, 200)):
        names = np.array([f"c{i}_{k}" for k in range(levels)], dtype=object)
        columns[f"c{i}"] = np.where(rng.random(n) < 0.05, None, names[(rng.zipf(1.6, n) - 1) % levels])
    columns["member"] = np.where(rng.random(n) < 0.3, "yes", "no").astype(object)
    return pd.DataFrame(columns)


def test_a_window_far_larger_than_the_reference_rarely_alarms():
    """500 reference rows, windows of 50 and 50,000: the tests are two-sample ones (the reference's
    own noise counted), so the big window does not turn the reference's noise into drift.
    Binomial(40, 0.05): P(> 6) < 1 %."""
    train = _numpy_frame(500, 0)
    kinds = {n: "numeric" if n.startswith("x") else "boolean" if n == "member" else "categorical" for n in train}
    schema = {"version": 2, "task": "classification", "target": "y", "target_dtype": "int64", "rows": 500,
              "features": [{"name": n, "kind": k, "dtype": "object", "nullable": True} for n, k in kinds.items()]}
    profile = monitor.build_profile(train, schema)
    alarms = []
    for n in (50, 50_000):
        for seed in range(20):
            verdict = monitor.check_window(profile, _numpy_frame(n, 100 + seed), seed=seed)
            if verdict.verdict != "healthy":
                alarms.append((n, verdict.drifted, verdict.quality_issues))
    assert len(alarms) <= 6, alarms


def test_degenerate_columns_and_windows_give_a_verdict():
    """A constant feature, a categorical without any value, an empty window, an all-missing one."""
    train = pd.DataFrame({"k": [3.0] * 40, "c": [None] * 40, "x": np.arange(40.0)})
    schema = {"version": 2, "task": "regression", "target": "y", "target_dtype": "float64", "rows": 40,
              "features": [{"name": "k", "kind": "numeric", "dtype": "float64", "nullable": False},
                           {"name": "c", "kind": "categorical", "dtype": "object", "nullable": True},
                           {"name": "x", "kind": "numeric", "dtype": "float64", "nullable": False}]}
    profile = monitor.build_profile(train, schema, predictions=np.arange(40.0))
    assert profile.feature("k").numeric.edges == [] and profile.feature("c").categorical.levels == []
    for window in (train.iloc[:0], pd.DataFrame({"k": [np.nan] * 5, "c": [None] * 5, "x": [np.nan] * 5}),
                   pd.DataFrame({"k": [3.0] * 5, "c": ["new"] * 5, "x": [100.0] * 5})):
        verdict = monitor.check_window(profile, window, predictions=np.zeros(len(window)))
        assert verdict.exit_code in (monitor.EXIT_HEALTHY, monitor.EXIT_DRIFT, monitor.EXIT_QUALITY)
    assert set(verdict.quality_issues) >= {"x"}  # 100 is outside [0, 39]


@pytest.mark.security
def test_an_extreme_but_valid_profile_gives_a_verdict_not_a_crash():
    """Edges near the float limits, a subnormal spread: valid JSON, so the verdict must still come."""
    from mlops_kit.monitor import Profile

    profile = Profile.model_validate({"rows": 10, "features": [
        {"name": "x", "kind": "numeric", "counts": [2, 3, 3, 2, 0],
         "numeric": {"edges": [-1e300, 0, 1e300], "min": -1.7e308, "max": 1.7e308, "mean": 0, "std": 1.7e308}},
        {"name": "y", "kind": "numeric", "counts": [2, 3, 3, 2, 0],
         "numeric": {"edges": [1e-300, 2e-300, 3e-300], "min": 0, "max": 4e-300, "mean": 0, "std": 5e-324}}]})
    verdict = monitor.check_window(profile, pd.DataFrame({"x": [1.0, 2, -5, 1e308], "y": [0, 1e-300, 5, np.nan]}))
    assert verdict.verdict in ("healthy", "drift", "quality")


def test_integer_levels_read_back_as_floats_are_the_same_levels():
    """Integer classes and integer-coded categories: the request log's reader gives a column of
    numbers as float64 (1.0), the training split had int64 (1). They are one level, so traffic
    from the training distribution is no drift and no unseen category (session 6 found the
    default breast-cancer model's predictions flagged with PSI 11.5 on its own test split)."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"plan": rng.integers(1, 4, 2_000), "x": rng.normal(size=2_000)})
    schema = {"version": 1, "task": "classification", "target": "y", "target_dtype": "int64", "rows": 2_000,
              "classes": [0, 1], "features": [
                  {"name": "plan", "kind": "categorical", "dtype": "int64", "nullable": False},
                  {"name": "x", "kind": "numeric", "dtype": "float64", "nullable": False}]}
    predictions = (train["x"] > 0).astype(np.int64).to_numpy()
    profile = monitor.build_profile(train, schema, predictions=predictions)
    assert sorted(profile.feature("plan").categorical.levels) == ["1", "2", "3"]

    live = train.astype({"plan": np.float64})                     # as read back from the log
    verdict = monitor.check_window(profile, live, predictions.astype(np.float64))
    assert not verdict.drifted and verdict.prediction.score < 1e-9
    counts = monitor.bin_window(profile, live, predictions.astype(np.float64))
    assert counts.features["plan"].counts[-2] == 0                  # nothing unseen


# --- the laws' tails, without scipy.stats (its import is the report's memory at 10 k rows) -----

@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("seed", range(3))
def test_the_tails_equal_scipys_laws_summed_term_by_term(seed, chunk, monkeypatch):
    """hypergeom_sf and betabinom_sf against scipy.stats' pmf summed over the tail (scipy's own
    sf is 1 - cdf, which is round-off far in the tail), on both sides of the mode and at the
    ends of the support; the non-centrality for 80 % power against scipy's ncx2 and brentq."""
    from scipy import optimize, stats
    from scipy.special import logsumexp

    from mlops_kit.monitor import _drift

    if chunk:   # a few terms at a time: the stopping rule decides where the sum ends
        monkeypatch.setattr(_drift, "_TAIL_CHUNK", chunk)
    rng = np.random.default_rng(seed)
    for _ in range(150):
        total = int(rng.integers(2, 20_000))
        successes, draws = int(rng.integers(0, total + 1)), int(rng.integers(0, total + 1))
        k = int(rng.integers(-1, min(successes, draws) + 2))
        tail = np.arange(k + 1, min(successes, draws) + 1)
        expected = min(1.0, float(np.exp(logsumexp(stats.hypergeom.logpmf(tail, total, successes, draws))))) \
            if tail.size else 0.0
        assert _drift.hypergeom_sf(k, total, successes, draws) == pytest.approx(expected, rel=1e-8, abs=1e-300)
        n, a, b = int(rng.integers(0, 20_000)), float(rng.integers(1, 500)), float(rng.integers(1, 50_000))
        k = int(rng.integers(-1, n + 2))
        tail = np.arange(k + 1, n + 1)
        expected = min(1.0, float(np.exp(logsumexp(stats.betabinom.logpmf(tail, n, a, b))))) if tail.size else 0.0
        assert _drift.betabinom_sf(k, n, a, b) == pytest.approx(expected, rel=1e-8, abs=1e-300)
    df, level = int(rng.integers(1, 40)), 0.05 / int(rng.integers(1, 40))
    critical = stats.chi2.isf(level, df)
    expected = optimize.brentq(lambda lam: stats.ncx2.sf(critical, df, lam) - 0.8, 1e-9, 1e6)
    assert _drift.noncentrality_for_power(df, level) == pytest.approx(expected, rel=1e-7)
