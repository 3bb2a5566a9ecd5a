"""One clock for all timing logic, injectable so tests can control time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale (for timeouts and deadlines)."""

    def wall_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch (for timestamps shown to users)."""


class SystemClock:
    """The default clock: the system's monotonic and wall clocks.

    Not the event loop's time(): uvloop's has 1 ms resolution, which rounded every measured latency to
    whole milliseconds. Timers (call_later) keep using the loop's clock; nothing here mixes the two.
    """

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns()


SYSTEM_CLOCK = SystemClock()
