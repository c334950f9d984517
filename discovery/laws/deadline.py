"""Fit time limits in CPU seconds, so that other work on the machine does not change a fit.

With a wall-clock limit, a fit that shares its core with other work gets fewer evaluations before the limit,
and the same law could end with other constants, or fail, on a busy machine. A Deadline counts the CPU seconds
of the thread that runs the fit instead (`time.thread_time`: a local-pool process, the serial path and a Dask
worker thread alike). A fit that is still running after WALL_FACTOR times its limit in wall time is stopped
anyway (a starved or blocked fit), so nothing can hang. A thread's CPU clock is its own: a Deadline is read
on the thread that made it, as every fit runs start to end on one thread. The formula bound of
discovery.laws.guard counts CPU seconds the same way, with the same factor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

WALL_FACTOR = 6.0  # how many times its CPU limit a fit (or a formula's parse) may take in wall time


@dataclass(frozen=True)
class Deadline:
    cpu: float  # time.thread_time() after which the fit stops
    wall: float  # time.monotonic() after which it stops whatever its CPU time

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        """The deadline `seconds` of CPU from now (None or 0: never)."""
        if not seconds:
            return NEVER
        return cls(time.thread_time() + seconds, time.monotonic() + WALL_FACTOR * seconds)

    def passed(self) -> bool:
        return time.thread_time() > self.cpu or time.monotonic() > self.wall

    def sooner(self, other: "Deadline | None") -> "Deadline":
        """Whichever of the two comes first, on each clock."""
        if other is None:
            return self
        return Deadline(min(self.cpu, other.cpu), min(self.wall, other.wall))


NEVER = Deadline(math.inf, math.inf)
