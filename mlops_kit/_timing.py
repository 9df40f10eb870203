"""Where a run's time goes outside its stages: named phases, measured by the runner.

>>> phases = Phases(origin=process_started())
>>> with phases.measure("planning"):
...     with phases.measure("hashing"):   # counted in hashing only, not twice
...         ...
>>> phases.breakdown(stage_seconds)       # {"seconds": ..., "phases": {..., "other": ...}}

Each phase holds its own time, without the phases measured inside it. ``other`` is the wall
time since ``origin`` less the stages' seconds and the named phases: what no phase names.
Measured in the thread that runs the run (not thread-safe).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator


def process_started() -> float | None:
    """This process's start (``time.time()`` scale), from ``/proc``; None where unknown.

    ``/proc/self/stat`` gives it in clock ticks (10 ms) since boot: compared with the clock
    since boot, not with ``/proc/stat``'s boot time, whole seconds only (up to 1 s off)."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - max(0.0, age)


class Phases:
    """Seconds per named phase since ``origin`` (a ``time.time()``; default: now)."""

    def __init__(self, origin: float | None = None) -> None:
        now_wall, now = time.time(), time.perf_counter()
        # the origin as a perf_counter reading: wall clock only to place the process's start
        self._origin = now - max(0.0, now_wall - origin) if origin is not None else now
        self._seconds: dict[str, float] = {}
        self._stack: list[float] = []  # per open phase: the seconds of the phases inside it
        self.stages = 0.0  # the seconds of the stages executed in this run
        self._notes: dict[str, str] = {}

    def note(self, name: str, value: str) -> None:
        """A fact about the run's cost, recorded beside the seconds (``kernels: warm``)."""
        self._notes[name] = value

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds
        if self._stack:  # an enclosing phase does not count it again
            self._stack[-1] += seconds

    def since_origin(self, name: str) -> None:
        """Book the time from the origin to now not yet booked to any phase as ``name``
        (the start-up: process start to the runner's first step)."""
        self.add(name, max(0.0, self.wall() - sum(self._seconds.values())))

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self._stack.append(0.0)
        try:
            yield
        finally:
            inner = self._stack.pop()
            self.add(name, time.perf_counter() - started - inner)

    def wall(self) -> float:
        return time.perf_counter() - self._origin

    def breakdown(self) -> dict:
        """``{"seconds": wall - stages, "wall": ..., "stages": ..., "phases": {name: s, "other": s}}``
        and the notes (:meth:`note`)."""
        wall = self.wall()
        phases = {name: round(seconds, 3) for name, seconds in self._seconds.items()}
        outside = wall - self.stages
        phases["other"] = round(outside - sum(self._seconds.values()), 3)
        return {"seconds": round(outside, 3), "wall": round(wall, 3), "stages": round(self.stages, 3),
                "phases": phases, **self._notes}


#: a file to append the run's timeline to (``time.time()``, pid, event; one line each), from
#: every process of the run (the CLI, the kernels' parent, each kernel, the report process):
#: ``MLOPS_KIT_TIMELINE=/tmp/t.log mlops-kit run`` (benchmarks and tracing only)
TIMELINE_ENV = "MLOPS_KIT_TIMELINE"


def mark(event: str, at: float | None = None) -> None:
    """Append ``event`` (at ``at``, default now) to the timeline file, when
    ``$MLOPS_KIT_TIMELINE`` names one."""
    path = os.environ.get(TIMELINE_ENV)
    if path:
        line = f"{time.time() if at is None else at:.4f} {os.getpid()} {event}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
