"""Registered workers and their load bookkeeping: the one owner of every worker's projection.

Callers say what happened (`offer_made`, `offer_accepted`, `job_ended`, `status_reported`, ...);
the registry updates the numbers and re-ranks the worker in its index in the same step, so no
caller can change a count and forget the index. docs/server.md "Selection" states the rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from livekit.protocol import agent

from ..protocol import sanitize_load
from ..util import SYSTEM_CLOCK, Clock
from .events import WorkerSummary
from .load_index import LoadIndex
from .load_state import NO_JOBS, LoadState, with_job, without_job
from .session import WS_AVAILABLE, WS_FULL, WorkerKey, WorkerSession

#: a worker whose projection reaches this is treated as full until it reports again or a job ends
FULL_PROJECTION = 1.0


@dataclass(frozen=True)
class SelectionRules:
    per_job_load: float = 0.1
    #: first backoff after an unanswered offer (doubles per further timeout)
    offer_timeout: float = 5.0
    max_backoff: float = 60.0
    #: a worker that reports status and then falls silent this long is not AVAILABLE (0 = off)
    status_stale_after: float = 15.0


class WorkerRegistry:
    def __init__(
        self,
        rules: SelectionRules,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        node_id: str = "",
    ) -> None:
        self._rules = rules
        self._clock = clock
        self._rng = rng or random.Random()
        self._node_id = node_id
        self._workers: dict[str, WorkerSession] = {}
        self._index: dict[WorkerKey, LoadIndex] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self) -> Iterator[WorkerSession]:
        return iter(list(self._workers.values()))

    def get(self, worker_id: str) -> WorkerSession | None:
        return self._workers.get(worker_id)

    # -- membership ----------------------------------------------------------------------------
    def add(self, session: WorkerSession) -> None:
        self._workers[session.id] = session
        for key in session.registration.index_keys():
            if key not in self._index:
                self._index[key] = LoadIndex(self._rng)
        session.load.ranked_load = None
        self._rerank(session)

    def remove(self, session: WorkerSession) -> None:
        if self._workers.pop(session.id, None) is None:
            return
        session.load.ranked_load = None
        for key in session.registration.index_keys():
            index = self._index.get(key)
            if index is not None:
                index.remove(session.id)
                if not len(index):
                    del self._index[key]

    # -- what happened (each re-ranks once) ----------------------------------------------------
    def status_reported(self, session: WorkerSession, update: agent.UpdateWorkerStatus) -> None:
        """Apply an UpdateWorkerStatus, load sanitised (docs/server.md "Load")."""
        load = session.load
        if update.HasField("status"):
            session.status = update.status
        session.draining = update.draining
        status_only = update.load == 0.0 and (
            session.draining or (update.HasField("status") and update.status == WS_FULL)
        )
        if not status_only:
            load.reported = sanitize_load(update.load)
        load.since_report = NO_JOBS
        load.last_status_at = self._clock.monotonic()
        held = load.held
        if session.status == WS_FULL and not session.draining and held:
            load.full_at = held  # what it holds when full (an offer being accepted counts)
        elif session.status == WS_AVAILABLE and not session.draining:
            if load.full_at and update.job_count < load.full_at:
                # room again, but it said FULL holding full_at jobs: offer the difference, not the queue
                # (a job end reported before or after this report then frees one more)
                load.credit = max(0, load.full_at - held)
            else:
                load.full_at = 0
                load.credit = None  # room again, as much as its load says: trust its report
        self._rerank(session)

    def status_repeated(self, session: WorkerSession) -> bool:
        """A report identical to the last one applied: if applying it again could change nothing but
        its time (no job counted since the last report, no credit to restore), record the time and
        return True; else False (apply it in full)."""
        load = session.load
        if load.since_report or load.credit is not None or load.last_status_at is None:
            return False
        load.last_status_at = self._clock.monotonic()
        return True

    def offer_made(self, session: WorkerSession, job_id: str) -> None:
        load = session.load
        load.offers = with_job(load.offers, job_id)
        if load.credit is not None:
            load.credit = max(0, load.credit - 1)
        self._rerank(session)

    def offer_accepted(self, session: WorkerSession, job_id: str) -> None:
        load = session.load
        load.offers = without_job(load.offers, job_id)
        load.jobs = with_job(load.jobs, job_id)
        load.since_report = with_job(load.since_report, job_id)
        self._answered(load)
        self._rerank(session)

    def offer_declined(self, session: WorkerSession, job_id: str) -> None:
        """A refusal says the worker is (near) full: no more offers until a capacity signal."""
        load = session.load
        load.offers = without_job(load.offers, job_id)
        load.credit = 0
        self._answered(load)
        self._rerank(session)

    def offer_timed_out(self, session: WorkerSession, job_id: str) -> float:
        """An unanswered offer counts against the worker; returns the backoff it now serves."""
        load = session.load
        load.offers = without_job(load.offers, job_id)
        now = self._clock.monotonic()
        if load.backoff_until > now:  # offers sent before the first timeout: one failure, not many
            self._rerank(session)
            return load.backoff_until - now
        load.timeouts += 1
        backoff = min(self._rules.max_backoff, self._rules.offer_timeout * 2.0 ** (load.timeouts - 1))
        load.backoff_until = now + backoff
        self._rerank(session)
        return backoff

    def late_answer(self, session: WorkerSession) -> None:
        """The worker answered after its offer timed out: it is alive, clear its backoff."""
        self._answered(session.load)
        self._rerank(session)

    def offer_voided(self, session: WorkerSession, job_id: str) -> None:
        """An offer ended without an answer that says anything (job ended, send failed)."""
        load = session.load
        if job_id in load.offers:
            load.offers = without_job(load.offers, job_id)
            self._rerank(session)

    def job_adopted(self, session: WorkerSession, job_id: str) -> None:
        load = session.load
        load.jobs = with_job(load.jobs, job_id)
        self._rerank(session)

    def job_ended(self, session: WorkerSession, job_id: str) -> None:
        """A job of this worker ended: its slot is free, which is worth one offer after a refusal."""
        load = session.load
        if job_id not in load.jobs:
            return
        load.jobs = without_job(load.jobs, job_id)
        load.since_report = without_job(load.since_report, job_id)
        if load.credit is not None:
            load.credit += 1
        self._rerank(session)

    def backoff_over(self, session: WorkerSession) -> None:
        self._rerank(session)

    @staticmethod
    def _answered(load: LoadState) -> None:
        load.timeouts = 0
        load.backoff_until = 0.0
        load.answered_any = True

    # -- reading -------------------------------------------------------------------------------
    def projected(self, session: WorkerSession) -> float:
        return session.load.projected(self._rules.per_job_load)

    def is_eligible(self, session: WorkerSession) -> bool:
        """May be offered a job now (docs/server.md "Selection")."""
        return self._static_eligible(session) and self._fresh(session)

    def _static_eligible(self, session: WorkerSession) -> bool:
        load = session.load
        return (
            session.is_open
            and session.status == WS_AVAILABLE
            and not session.draining
            and load.credit != 0
            and self.projected(session) < FULL_PROJECTION
        )

    def _fresh(self, session: WorkerSession) -> bool:
        load = session.load
        now = self._clock.monotonic()
        if load.backoff_until > now or session.backpressured:
            return False
        stale = self._rules.status_stale_after
        return not (stale > 0 and load.last_status_at is not None and now - load.last_status_at > stale)

    def unresponsive(self, session: WorkerSession) -> bool:
        return session.load.backoff_until > self._clock.monotonic()

    def best(self, key: WorkerKey, exclude: Collection[str] = ()) -> WorkerSession | None:
        index = self._index.get(key)
        if index is None:
            return None
        accept: Callable[[str], bool] = lambda wid: self._fresh(self._workers[wid])  # noqa: E731
        worker_id = index.best(exclude, accept)
        return None if worker_id is None else self._workers[worker_id]

    def job_types(self, agent_name: str, namespace: str, deployment: str) -> set[int]:
        """Job types for which a worker with this name is registered (any status)."""
        dep = deployment or "*"
        return {k[2] for k in self._index if k[0] == agent_name and k[1] == namespace and k[3] == dep}

    def agent_names(self) -> list[str]:
        """Agent names registered on this node (for error messages), sorted."""
        return sorted({k[0] for k in self._index})

    def summary(self, session: WorkerSession) -> WorkerSummary:
        reg = session.registration
        load = session.load
        return WorkerSummary(
            worker_id=session.id,
            agent_name=reg.agent_name,
            namespace=reg.namespace,
            job_type=reg.job_type,
            deployment=reg.deployment,
            version=reg.version,
            status=session.status,
            load=load.reported,
            projected_load=round(self.projected(session), 4),
            draining=session.draining,
            active_jobs=len(load.jobs),
            pending_offers=len(load.offers),
            unresponsive=self.unresponsive(session),
            node_id=self._node_id,
            connected_at_ns=session.connected_at_ns,
        )

    def _rerank(self, session: WorkerSession) -> None:
        if session.id not in self._workers:
            return
        projected = self.projected(session)
        eligible = self._static_eligible(session)
        if math.isnan(projected):  # cannot happen after sanitising; never let it into the heap
            projected, eligible = FULL_PROJECTION, False
        load = session.load
        held = load.held
        if load.ranked_load == projected and load.ranked_eligible == eligible and load.ranked_held == held:
            return  # e.g. the periodic status report of an idle worker: its heap entry is still right
        load.ranked_load, load.ranked_eligible, load.ranked_held = projected, eligible, held
        for key in session.registration.index_keys():
            self._index[key].update(session.id, projected, eligible, held)
