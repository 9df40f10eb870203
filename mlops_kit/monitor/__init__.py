"""Monitoring's statistical core: a reference profile of the training split, live windows
counted in its bins, and a verdict on drift and data quality that holds at any window size.

>>> from mlops_kit import monitor
>>> profile = monitor.build_profile(train, schema, predictions=model.predict(train))
>>> profile.save(path); profile = monitor.load_profile(path)      # validated, bounded
>>> verdict = monitor.check_window(profile, live_rows, predictions=answers)
>>> verdict.verdict, verdict.exit_code, verdict.drifted

The server counts windows with :func:`bin_window` (counts merge by addition) and judges them
with :func:`assess`. The statistics are described in :mod:`mlops_kit.monitor._drift`.
"""

from ._bins import Counts, WindowCounts, bin_values, bin_window
from ._drift import DEFAULT_ALPHA
from ._profile import (DEFAULT_BINS, DEFAULT_LEVELS, FeatureProfile, Profile, build_profile, load_profile,
                       profile_column)
from ._verdict import (EXIT_CODES, EXIT_DRIFT, EXIT_HEALTHY, EXIT_PERFORMANCE, EXIT_QUALITY, FeatureDrift,
                       FeatureQuality, Verdict, assess, check_window)

__all__ = [
    "Counts", "WindowCounts", "bin_values", "bin_window", "DEFAULT_ALPHA", "DEFAULT_BINS", "DEFAULT_LEVELS", "FeatureProfile",
    "Profile", "build_profile", "load_profile", "profile_column", "EXIT_CODES", "EXIT_DRIFT", "EXIT_HEALTHY",
    "EXIT_PERFORMANCE", "EXIT_QUALITY", "FeatureDrift", "FeatureQuality", "Verdict", "assess", "check_window",
]
