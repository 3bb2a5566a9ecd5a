"""A read-only view of the fleet for observers (admin API, dashboard, metrics): no mutable state leaks."""

from __future__ import annotations

from dataclasses import dataclass

from ..util import SYSTEM_CLOCK, Clock
from .dispatcher import Dispatcher
from .events import WorkerSummary
from .registry import WorkerRegistry


@dataclass(frozen=True)
class WaitingSummary:
    agent_name: str
    waiting: int
    oldest_wait_s: float


class FleetView:
    def __init__(self, registry: WorkerRegistry, dispatcher: Dispatcher, clock: Clock = SYSTEM_CLOCK) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._clock = clock

    def workers(self) -> list[WorkerSummary]:
        return [self._registry.summary(w) for w in self._registry if w.reg is not None]

    def worker(self, worker_id: str) -> WorkerSummary | None:
        session = self._registry.get(worker_id)
        return None if session is None or session.reg is None else self._registry.summary(session)

    def waiting(self) -> list[WaitingSummary]:
        """Jobs queued for a worker, per agent name, with how long the oldest has waited."""
        now_ns = self._clock.wall_ns()
        per: dict[str, tuple[int, float]] = {}
        for job, _deadline in self._dispatcher.waiting():
            count, oldest = per.get(job.agent_name, (0, 0.0))
            waited = max(0.0, (now_ns - job.state.updated_at) / 1e9) if job.state.updated_at else 0.0
            per[job.agent_name] = (count + 1, max(oldest, waited))
        return [WaitingSummary(name, n, round(w, 3)) for name, (n, w) in sorted(per.items())]

    @property
    def pending_jobs(self) -> int:
        return self._dispatcher.pending_count
