"""Monitoring's statistical core: a reference profile of the training split, live windows
counted in its bins, and a verdict on drift and data quality that holds at any window size.

>>> from mlops_kit import monitor
>>> profile = monitor.build_profile(train, schema, predictions=model.predict(train))
>>> profile.save(path); profile = monitor.load_profile(path)      # validated, bounded
>>> verdict = monitor.check_window(profile, live_rows, predictions=answers)
>>> verdict.verdict, verdict.exit_code, verdict.drifted

06_monitor (a run of kind ``monitor``: ``mlops-kit monitor``, the Monitor panel) judges the
request log against the profile and joins late labels:

>>> record, result = monitor.watch(run_id, labels="labels.csv", export_labelled="live.csv")
>>> result.verdict.status, result.verdict.exit_code, result.table()

The server counts windows with :func:`bin_window` (counts merge by addition) and judges them
with :func:`assess`. The statistics are described in :mod:`mlops_kit.monitor._drift`.

Importing this package is cheap: the names below load their module (pandas, pydantic, scipy)
on first use, so that the model server, which has none of these in its image, imports the
pydantic-free modules :mod:`.live` and :mod:`.requestlog` alone.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "_bins": ("Counts", "WindowCounts", "bin_values", "bin_window"),
    "_drift": ("DEFAULT_ALPHA",),
    "_profile": ("DEFAULT_BINS", "DEFAULT_LEVELS", "FeatureProfile", "Profile", "build_profile", "load_profile",
                 "profile_column"),
    "_verdict": ("EXIT_CODES", "EXIT_DRIFT", "EXIT_HEALTHY", "EXIT_PERFORMANCE", "EXIT_QUALITY", "FeatureDrift",
                 "FeatureQuality", "Verdict", "assess", "check_window"),
    "requestlog": ("RequestLogWriter", "read_request_log"),
    "_report": ("MIN_LABELLED_ROWS", "MonitorReport", "class_text", "export_labelled", "join_labels",
                "live_performance", "load_report", "model_profile", "plot_feature", "plot_features", "read_labels",
                "read_live", "report"),
    "_stage": ("deployed_run", "run_stage", "watch"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'mlops_kit.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
