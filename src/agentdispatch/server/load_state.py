"""The numbers behind one worker's projected load. Only WorkerRegistry writes them."""

from __future__ import annotations

from dataclasses import dataclass, field

#: extra projected load of each unanswered offer to a worker that has never answered one: a new or
#: silent worker holds at most two offers (0.6, then 1.2 = full) while workers that answer take the rest
PROBATION_WEIGHT = 0.5


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
    #: has answered at least one offer; until then each open offer weighs PROBATION_WEIGHT more
    answered_any: bool = False
    #: monotonic time of the last status report (None until the worker sends one)
    last_status_at: float | None = None

    def projected(self, per_job_load: float) -> float:
        open_offers = len(self.offers)
        probation = 0.0 if self.answered_any else open_offers * PROBATION_WEIGHT
        return self.reported + (len(self.since_report) + open_offers) * per_job_load + probation
