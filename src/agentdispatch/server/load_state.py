"""The numbers behind one worker's projected load. Only WorkerRegistry writes them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadState:
    """The numbers behind one worker's projection. Written by WorkerRegistry only."""

    reported: float = 0.0
    #: jobs assigned since the last status report and still running (each adds `per_job_load`)
    since_report: set[str] = field(default_factory=set)
    #: jobs offered and not yet answered (each adds `per_job_load`)
    offers: set[str] = field(default_factory=set)
    #: jobs this worker runs (assigned or migrated), ended ones removed
    jobs: set[str] = field(default_factory=set)
    #: offers allowed before the next capacity signal; None = unlimited (governed by the projection)
    credit: int | None = None
    #: consecutive unanswered offers, and the monotonic time before which it gets no offer
    timeouts: int = 0
    backoff_until: float = 0.0
    #: has answered at least one offer; until then it is trusted with one offer at a time
    answered_any: bool = False
    #: monotonic time of the last status report (None until the worker sends one)
    last_status_at: float | None = None

    def projected(self, per_job_load: float) -> float:
        return self.reported + (len(self.since_report) + len(self.offers)) * per_job_load
