"""The kit's seconds outside the stages, from run.json's ``overhead`` (issue 23): medians
over the rounds of a benchmark, one line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def newest_overhead(runs_dir: Path) -> dict:
    """The newest run's ``overhead`` (empty when its record has none)."""
    newest = max(runs_dir.glob("*/run.json"), key=lambda p: p.parent.name)
    return json.loads(newest.read_text()).get("overhead") or {}


def breakdown_line(overheads: list[dict], measured: list[float] | None = None) -> str:
    """``outside the stages, medians of N runs: 3.6 s of 5.2 s (kernel start 2.74, ...)``,
    largest first; with the seconds measured around each process, also its time after the
    record was written (stopping kernels, interpreter exit)."""
    overheads = [o for o in overheads if o]
    if not overheads:
        return "outside the stages: no overhead in run.json"
    names = sorted({name for o in overheads for name in o["phases"]})
    phases = {name: statistics.median(o["phases"].get(name, 0.0) for o in overheads) for name in names}
    line = (f"outside the stages, medians of {len(overheads)} runs: {statistics.median(o['seconds'] for o in overheads):.2f} s "
            f"of {statistics.median(o['wall'] for o in overheads):.2f} s (stages {statistics.median(o['stages'] for o in overheads):.2f} s): "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(phases.items(), key=lambda item: -item[1])))
    warm = sum(o.get("kernels") == "warm" for o in overheads)
    if warm:  # run.json says so: forked from a warm kernels' parent (MLOPS_KIT_WARM_MINUTES)
        line += f"; kernels from a warm parent in {warm} of {len(overheads)} runs"
    if measured and len(measured) == len(overheads):
        line += f"; after the record (exit) {statistics.median(m - o['wall'] for m, o in zip(measured, overheads)):.2f}"
    return line
