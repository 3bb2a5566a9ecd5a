"""One clock for all timing logic, injectable so tests can control time."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale (for timeouts and deadlines)."""

    def wall_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch (for timestamps shown to users)."""


class SystemClock:
    """The default clock: the event loop's monotonic time and the system wall clock."""

    def monotonic(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns()


SYSTEM_CLOCK = SystemClock()
