"""Real components: a test that needs one that is absent skips with the reason locally,
and fails in CI, where MLOPS_KIT_REQUIRE_REAL=1 says every component must be there."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_REAL = os.environ.get("MLOPS_KIT_REQUIRE_REAL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (or, under MLOPS_KIT_REQUIRE_REAL=1, fail) when ``condition`` is false."""
    if condition:
        return
    if REQUIRE_REAL:
        pytest.fail(f"required real component missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    need(not missing, f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")
