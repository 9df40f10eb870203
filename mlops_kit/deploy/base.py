"""The deploy interface every target implements, and the one smoke test they share.

A :class:`Target` deploys a run, says what runs, rolls back and undeploys. Each returns a
plain JSON-able dict; ``deploy`` and ``rollback`` return the release record, validated by
:class:`mlops_kit.artifacts.Release` and written to ``artifacts/release.json``.

Every target smoke-tests a new deployment the same way: :func:`smoke_test` posts the
recorded examples (:func:`mlops_kit.artifacts.smoke_request`: a JSON list of records) to
``/predict`` and compares the answers with the recorded predictions under one tolerance
(:func:`same_prediction`). Only how a request reaches the server differs (a local URL, or
the API server's Service proxy), so a target passes its own ``post``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import artifacts
from ..errors import DeployError

Log = Callable[[str], None]
#: ``post(path, json_body) -> parsed JSON answer``; raises DeployError (``status`` set when the
#: server answered with an error).
Post = Callable[[str, Any], Any]
PREDICT_PATH = "/predict"
#: Float predictions (regression) are compared with this tolerance, relatively and absolutely;
#: class labels exactly: integers of any size, text (as their text when the types differ:
#: JSON has no int64), booleans.
REL_TOL, ABS_TOL = 1e-6, 1e-9


class SmokeTestFailed(DeployError):
    """The new deployment answered the recorded examples wrongly or not at all."""


class Target(Protocol):
    """What ``deploy.target`` names. The CLI, 05_deploy and the DeployPanel use only this."""

    name: str

    def deploy(self, run_dir: Path, params: Any, *, log: Log = print, dry_run: bool = False,
               **options: Any) -> dict: ...

    def status(self, params: Any) -> dict: ...

    def rollback(self, params: Any, *, log: Log = print, to_revision: int | None = None) -> dict: ...

    def undeploy(self, params: Any, *, log: Log = print, delete_namespace: bool = False) -> dict: ...


def smoke_test(post: Post, examples: artifacts.Examples, *, log: Log = print, attempts: int = 3,
               sleep: Callable[[float], None] = time.sleep) -> dict:
    """POST the recorded examples to ``/predict``; the predictions must be the recorded ones.

    A 5xx answer is retried (endpoints may lag a rollout by a moment); anything else fails at
    once with :class:`SmokeTestFailed`."""
    body = artifacts.smoke_request(examples)
    expected = list(examples.predictions)
    if len(body) != len(expected):
        raise SmokeTestFailed(f"examples.json must hold as many predictions as records. Got {len(body)} records "
                              f"and {len(expected)} predictions instead.")
    answer: Any = None
    for attempt in range(attempts):
        try:
            answer = post(PREDICT_PATH, body)
            break
        except DeployError as exc:
            status = getattr(exc, "status", None) or 0
            if status < 500 or attempt == attempts - 1:
                raise SmokeTestFailed(f"The smoke test (POST {PREDICT_PATH} with examples.json) must succeed. "
                                      f"Got {exc.message} instead.", status=status or None) from None
            sleep(1.0)
    got = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(got, list) or len(got) != len(expected):
        raise SmokeTestFailed(f"The smoke test: POST {PREDICT_PATH} must answer {len(expected)} predictions. "
                              f"Got {str(answer)[:300]} instead.")
    for index, (want, have) in enumerate(zip(expected, got)):
        if not same_prediction(want, have):
            raise SmokeTestFailed(f"The smoke test: prediction {index} must be {want!r} (recorded at training). "
                                  f"Got {have!r} instead.",
                                  hint="the served model is not the trained one, or its settings differ.")
    log(f"smoke test: {len(got)} predictions match examples.json")
    return {"records": len(got), "passed": True}


def same_prediction(want: Any, have: Any) -> bool:
    """``have`` (served) is ``want`` (recorded): within the tolerance when either is a float;
    exactly otherwise (``math.isclose(1000000, 1000001, rel_tol=1e-6)`` is true)."""
    if isinstance(want, bool) or isinstance(have, bool) or (isinstance(want, int) and isinstance(have, int)):
        return want == have
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return math.isclose(want, have, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return want == have or str(want) == str(have)


def release_table(result: dict):
    """A one-column table of a release or status (for the notebook); long lists left out."""
    import json

    import pandas as pd

    rows = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in result.items()
            if k not in ("manifests", "changes", "releases", "pods")}
    return pd.DataFrame({"value": list(rows.values())}, index=list(rows.keys()))
