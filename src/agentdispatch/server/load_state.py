"""The numbers behind one worker's projected load. Only WorkerRegistry writes them.

One LoadState per connected worker, so it is kept small (issue 12, P4: server memory per idle
worker): slots, and the three job-id sets are the shared empty `NO_JOBS` until a job id goes in and
again once the last one leaves (an empty set costs 216 bytes; an idle worker has three).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

#: extra projected load of each unanswered offer to a worker that has never answered one: a new or
#: silent worker holds at most two offers (0.6, then 1.2 = full) while workers that answer take the rest
PROBATION_WEIGHT = 0.5

#: the job-id set of a worker that has none (shared by every LoadState; never mutated)
NO_JOBS: frozenset[str] = frozenset()


def with_job(jobs: Set[str], job_id: str) -> Set[str]:
    """`jobs` with `job_id` in it: the same set when it is one of ours, a new set for `NO_JOBS`."""
    if isinstance(jobs, set):
        jobs.add(job_id)
        return jobs
    return {*jobs, job_id}


def without_job(jobs: Set[str], job_id: str) -> Set[str]:
    """`jobs` without `job_id`; `NO_JOBS` once it is empty (the emptied set is dropped)."""
    if isinstance(jobs, set):
        jobs.discard(job_id)
        return jobs if jobs else NO_JOBS
    return jobs - {job_id} if job_id in jobs else jobs


@dataclass(slots=True)
class LoadState:
    """The numbers behind one worker's projection. Written by WorkerRegistry only."""

    reported: float = 0.0
    #: jobs assigned since the last status report and still running (each adds `per_job_load`)
    since_report: Set[str] = NO_JOBS
    #: jobs offered and not yet answered (each adds `per_job_load`)
    offers: Set[str] = NO_JOBS
    #: jobs this worker runs (assigned or migrated), ended ones removed
    jobs: Set[str] = NO_JOBS
    #: offers allowed before the next capacity signal; None = unlimited (governed by the projection)
    credit: int | None = None
    #: jobs held (running + on offer) when the worker last reported FULL; 0 = no such report. Until it
    #: reports AVAILABLE while holding as many, AVAILABLE is worth only the difference in offers
    full_at: int = 0
    #: consecutive unanswered offers, and the monotonic time before which it gets no offer
    timeouts: int = 0
    backoff_until: float = 0.0
    #: has answered at least one offer; until then each open offer weighs PROBATION_WEIGHT more
    answered_any: bool = False
    #: monotonic time of the last status report (None until the worker sends one)
    last_status_at: float | None = None
    #: projected load and eligibility at the registry's last re-rank (None: not ranked since it joined)
    ranked_load: float | None = None
    ranked_eligible: bool = False
    #: jobs held (running + on offer) at that re-rank: the index's tie-break among equal projections
    ranked_held: int = 0

    @property
    def held(self) -> int:
        """Jobs this worker holds: running plus on offer."""
        return len(self.jobs) + len(self.offers)

    def projected(self, per_job_load: float) -> float:
        open_offers = len(self.offers)
        probation = 0.0 if self.answered_any else open_offers * PROBATION_WEIGHT
        return self.reported + (len(self.since_report) + open_offers) * per_job_load + probation
