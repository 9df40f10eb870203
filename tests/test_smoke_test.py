"""The smoke test every deploy target shares (``deploy.base.smoke_test``), with ``post`` as
the seam: float predictions within the tolerance and no further, class labels exactly (of
any size), a 5xx retried and anything else failing at once."""

from __future__ import annotations

import pytest

from mlops_kit import artifacts
from mlops_kit.deploy.base import ABS_TOL, PREDICT_PATH, REL_TOL, SmokeTestFailed, same_prediction, smoke_test
from mlops_kit.errors import DeployError

RECORDS = [{"age": 30, "city": "paris"}, {"age": 41, "city": None}]


def examples(*predictions) -> artifacts.Examples:
    return artifacts.Examples(records=RECORDS[:len(predictions)], predictions=list(predictions))


class Server:
    """``post`` answering from a script: each item an answer, or a DeployError to raise."""

    def __init__(self, *script):
        self.script, self.calls = list(script), []

    def __call__(self, path, body):
        self.calls.append((path, body))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_the_tolerance_is_the_documented_one():
    assert (REL_TOL, ABS_TOL) == (1e-6, 1e-9)


@pytest.mark.parametrize("want, have, same", [
    (1.0, 1.0 + 5e-7, True),            # within the relative tolerance
    (1.0, 1.0 + 2e-6, False),           # a regression model that drifted by 2 ppm
    (1.0, 1.001, False),
    (100.0, 100.00005, True),
    (100.0, 100.0005, False),
    (0.0, 5e-10, True),                 # within the absolute tolerance
    (0.0, 1e-8, False),
    (2.5, 2, False),
    (3.0, 3, True),                     # an integral float served as an int
])
def test_float_predictions_are_compared_within_the_tolerance(want, have, same):
    assert same_prediction(want, have) is same and same_prediction(have, want) is same


@pytest.mark.parametrize("want, have, same", [
    (1000000, 1000001, False),          # math.isclose(1000000, 1000001, rel_tol=1e-6) is True
    (1000001, 1000000, False),
    (2 ** 53, 2 ** 53 + 1, False),
    (10 ** 12, int("1000000000000"), True),   # equal, not the same object
    (-7, -7, True),
    (1, 2, False),
    (True, 1.0000001, False),           # booleans exactly, never within a tolerance
    (False, 1e-10, False),
    (True, True, True),
    (False, True, False),
    (True, False, False),
    ("yes", "yes", True),
    ("yes", "no", False),
    ("no", "yes", False),
    (5, "6", False),
    (5, "5", True),                     # the label as text (JSON has no int64)
    ("5", 5, True),
    (None, None, True),
    (None, 0, False),
])
def test_labels_are_compared_exactly_whatever_their_size(want, have, same):
    assert same_prediction(want, have) is same


def test_a_matching_answer_passes_and_posts_the_records_once():
    server, lines = Server({"predictions": [1000000, 2.5 + 1e-7]}), []
    assert smoke_test(server, examples(1000000, 2.5), log=lines.append) == {"records": 2, "passed": True}
    assert server.calls == [(PREDICT_PATH, RECORDS)]
    assert lines == ["smoke test: 2 predictions match examples.json"]


@pytest.mark.parametrize("answer, index", [([1000000, 2.5 + 1e-3], 1), ([1000001, 2.5], 0)])
def test_a_wrong_prediction_fails_and_names_it(answer, index):
    with pytest.raises(SmokeTestFailed) as info:
        smoke_test(Server({"predictions": answer}), examples(1000000, 2.5), log=lambda _: None)
    assert info.value.message == (f"The smoke test: prediction {index} must be {[1000000, 2.5][index]!r} (recorded "
                                  f"at training). Got {answer[index]!r} instead.")
    assert "not the trained one" in info.value.hint


def test_a_long_wrong_answer_is_quoted_to_300_characters():
    answer = {"predictions": "x" * 1000}
    with pytest.raises(SmokeTestFailed) as info:
        smoke_test(Server(answer), examples(1, 2), log=lambda _: None)
    assert info.value.message.endswith(f"Got {str(answer)[:300]} instead.")


@pytest.mark.parametrize("answer", [{"predictions": [1]}, {"predictions": [1, 2, 3]}, {"predictions": "1,2"},
                                    [1, 2], None, {"outputs": [1, 2]}])
def test_an_answer_of_the_wrong_shape_fails(answer):
    with pytest.raises(SmokeTestFailed, match=r"must answer 2 predictions\. Got .* instead"):
        smoke_test(Server(answer), examples(1, 2), log=lambda _: None)


@pytest.mark.parametrize("records, predictions", [(2, 1), (1, 2)])
def test_examples_with_more_records_or_predictions_fail_before_any_request(records, predictions):
    broken = artifacts.Examples(records=RECORDS[:records], predictions=[1] * predictions)
    server = Server()
    with pytest.raises(SmokeTestFailed, match=f"as many predictions as records. Got {records} records and "
                                              f"{predictions} predictions"):
        smoke_test(server, broken, log=lambda _: None)
    assert server.calls == []


def test_a_5xx_is_retried_until_the_attempts_run_out():
    sleeps = []
    server = Server(DeployError("503", status=503), DeployError("502", status=502), {"predictions": [1, 2]})
    assert smoke_test(server, examples(1, 2), log=lambda _: None, sleep=sleeps.append)["passed"]
    assert len(server.calls) == 3 and sleeps == [1.0, 1.0]
    server = Server(*[DeployError("server down", status=500)] * 3)
    with pytest.raises(SmokeTestFailed) as info:
        smoke_test(server, examples(1, 2), log=lambda _: None, sleep=sleeps.append)
    assert len(server.calls) == 3 and info.value.status == 500
    assert info.value.message == (f"The smoke test (POST {PREDICT_PATH} with examples.json) must succeed. "
                                  "Got server down instead.")
    server = Server(DeployError("503", status=503), {"predictions": [1, 2]})
    with pytest.raises(SmokeTestFailed):
        smoke_test(server, examples(1, 2), log=lambda _: None, sleep=lambda _: None, attempts=1)


@pytest.mark.parametrize("status", [400, 404, 422, 499, None])
def test_a_client_error_or_no_answer_fails_at_once(status):
    sleeps = []
    server = Server(DeployError("refused", status=status), {"predictions": [1, 2]})
    with pytest.raises(SmokeTestFailed) as info:
        smoke_test(server, examples(1, 2), log=lambda _: None, sleep=sleeps.append)
    assert len(server.calls) == 1 and sleeps == [] and info.value.status == status


def test_log_sleep_and_attempts_are_keywords_only():
    with pytest.raises(TypeError):
        smoke_test(Server({"predictions": [1]}), examples(1), print)


def test_many_examples_are_counted_by_value():
    """300 of them: lengths past CPython's cached small integers are equal, not identical."""
    many = artifacts.Examples(records=[{"age": i} for i in range(300)], predictions=list(range(300)))
    server = Server({"predictions": list(range(300))})
    assert smoke_test(server, many, log=lambda _: None) == {"records": 300, "passed": True}
