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
"""

from ._bins import Counts, WindowCounts, bin_values, bin_window
from ._drift import DEFAULT_ALPHA
from ._profile import (DEFAULT_BINS, DEFAULT_LEVELS, FeatureProfile, Profile, build_profile, load_profile,
                       profile_column)
from ._verdict import (EXIT_CODES, EXIT_DRIFT, EXIT_HEALTHY, EXIT_PERFORMANCE, EXIT_QUALITY, FeatureDrift,
                       FeatureQuality, Verdict, assess, check_window)
from ._report import (MIN_LABELLED_ROWS, MonitorReport, class_text, export_labelled, join_labels, live_performance,
                      load_report, model_profile, plot_feature, plot_features, read_labels, read_live, report)
from ._stage import deployed_run, log_folder, run_stage, watch

__all__ = [
    "Counts", "WindowCounts", "bin_values", "bin_window", "DEFAULT_ALPHA", "DEFAULT_BINS", "DEFAULT_LEVELS", "FeatureProfile",
    "Profile", "build_profile", "load_profile", "profile_column", "EXIT_CODES", "EXIT_DRIFT", "EXIT_HEALTHY",
    "EXIT_PERFORMANCE", "EXIT_QUALITY", "FeatureDrift", "FeatureQuality", "Verdict", "assess", "check_window",
    "MIN_LABELLED_ROWS", "MonitorReport", "class_text", "export_labelled", "join_labels", "live_performance",
    "load_report", "model_profile", "plot_feature", "plot_features", "read_labels", "read_live", "report",
    "deployed_run", "log_folder", "run_stage", "watch",
]
