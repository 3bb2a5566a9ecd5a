"""The dispatcher in cluster mode: the one lifecycle owner, with placement and hand-offs cluster-wide.

`ClusteredDispatcher` is the Dispatcher with four seams filled in (everything else is unchanged):

- `submit` stores the job and routes it (ClusterNode.route) to the node of the best worker of the
  whole cluster, instead of placing it among this node's workers only;
- `take` (Host) is where a hand-off arrives: the job is admitted and placed here as usual;
- `end_job` also relays the termination to the node holding the job's worker;
- a rebalance loop moves jobs waiting in this node's queue to a node that has an eligible worker for
  them (a worker registered elsewhere after the job was queued here).
It also republishes a worker's summary when one of its jobs is assigned or ends, so the cluster sees
projections move between status reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from livekit.protocol import agent

from ..protocol.errors import ConfigError
from ..protocol.tokens import KeyPair
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from .cluster import REDIS_DOWN, ClusterNode, ClusterOptions
from .config import ServerConfig
from .dispatcher import ENDED, Dispatcher
from .events import EventBus, JobEvent, JobEventKind, WorkerEvent, WorkerEventKind, WorkerSummary
from .registry import WorkerRegistry
from .session import WorkerSession
from .store import Store, StoreUnavailable
from .store_redis import RedisStore

log = logging.getLogger("agentdispatch.server.cluster")

JS_PENDING = agent.JobStatus.JS_PENDING
_TOUCHES_LOAD = (JobEventKind.ASSIGNED, JobEventKind.ENDED, JobEventKind.MIGRATED, JobEventKind.OFFERED)
REBALANCE_INTERVAL = 0.25
HELD_RETRY_INTERVAL = 0.25


class ClusteredDispatcher(Dispatcher):
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        registry: WorkerRegistry,
        keys: KeyPair,
        events: EventBus,
        clock: Clock = SYSTEM_CLOCK,
        *,
        node_id: str,
        url: str = "",
    ) -> None:
        if not isinstance(store, RedisStore):
            raise ConfigError("cluster mode needs the Redis store (--redis URL)")
        super().__init__(config, store, registry, keys, events, clock)
        options = ClusterOptions(node_id=node_id, url=url, per_job_load=config.per_job_load)
        self.cluster = ClusterNode(store, options, self)
        events.subscribe(self.cluster.on_event)
        events.subscribe(self._republish)
        self._cluster_tasks = TaskSet(f"cluster-dispatch:{node_id}")
        #: worker id -> (projection, eligible, jobs held) last sent to the directory
        self._published: dict[str, tuple[float, bool, int]] = {}
        self._held: list[tuple[Callable[[], Awaitable[None]], str, str]] = []
        self._suspects: set[str] = set()  # held hand-offs not waiting here at the last check

    async def start(self, url: str = "") -> None:
        await self.cluster.start(url)
        self._cluster_tasks.spawn(self._rebalance_loop(), "rebalance")

    async def aclose(self) -> None:
        await self._cluster_tasks.aclose()
        await self.cluster.aclose()
        await super().aclose()

    # -- the seams ---------------------------------------------------------------------------------
    async def submit(self, job: agent.Job, deadline: float | None = None) -> None:
        """Hand a new job to the node of the cluster's best worker; when that is this node (or no worker
        is eligible anywhere) place it here at once, behind a durable hand-off to this node's stream."""
        self.check_capacity(1, job.ByteSize())
        wait = self._config.dispatch_deadline if deadline is None else deadline
        job.state.status = JS_PENDING
        job.state.updated_at = self._clock.wall_ns()
        node, _ = await self.cluster.place_new(job, wait)  # stored, worker picked, hand-off sent: 1 trip
        if node == self.cluster.node_id:
            pj = await self._admit(job, wait, resuming=False, new=False, stored=True)
            self._warn_if_unserved(pj)
            self._place(pj)

    async def take(self, job: agent.Job, deadline: float | None, resuming: bool, prefer: str) -> None:
        if self.is_pending(job.id):
            return  # a repeated hand-off (redelivery after a restart): already waiting here
        # read from the store just now: unless it comes back from a restart it is stored as pending
        stored = job.state.status == JS_PENDING and not job.state.worker_id and not resuming
        pj = await self._admit(job, deadline, resuming, new=False, stored=stored)
        self._place(pj)

    async def terminate(self, job_id: str, worker_id: str) -> None:
        worker = self._registry.get(worker_id)
        if worker is not None and job_id in worker.load.jobs:
            worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
            self._registry.job_ended(worker, job_id)
        timer = self._orphans.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    async def orphaned(self, job_ids: Sequence[str], node_id: str) -> None:
        """Jobs of a dead node's workers: they get the reconnect grace here, then the restart policy."""
        loop = asyncio.get_running_loop()
        for job_id in job_ids:
            job = await self._store.get_job(job_id)
            if job is None or job.state.status in ENDED or job_id in self._orphans:
                continue
            self._orphans[job_id] = loop.call_later(
                self._config.reconnect_grace, self._orphan_expired_cb, job_id, job.state.worker_id
            )
            self._emit(JobEventKind.ORPHANED, job, job.state.worker_id, f"node {node_id} lost")

    def local_workers(self) -> list[WorkerSummary]:
        return [self._registry.summary(w) for w in self._registry]

    async def end_job(self, job_id: str, status: int, error: str, reason: int = 0) -> agent.Job | None:
        if not self.is_pending(job_id):
            job = await self._store.get_job(job_id)
            owner = "" if job is None or job.state.status in ENDED else job.state.worker_id
            if owner and self._registry.get(owner) is None:  # its worker is connected elsewhere
                await self.cluster.relay_termination(job_id, owner)
        return await super().end_job(job_id, status, error, reason)

    # -- Redis trouble: a worker's job status or migrate_job waits instead of cutting the worker -----------
    async def on_job_update(self, worker: WorkerSession, update: agent.UpdateJobStatus) -> None:
        """As the Dispatcher's, but while Redis is unreachable the update is held and applied when Redis
        answers again (in order), instead of failing the worker's connection and losing the status."""
        await self._or_hold(lambda: super(ClusteredDispatcher, self).on_job_update(worker, update),
                            update.job_id, worker.id)  # fmt: skip

    async def migrate(self, worker: WorkerSession, req: agent.MigrateJobRequest) -> None:
        """As the Dispatcher's; while Redis is unreachable the worker keeps running its jobs and the
        migration is applied when Redis is back."""
        job_ids = ",".join(req.job_ids)
        await self._or_hold(lambda: super(ClusteredDispatcher, self).migrate(worker, req), job_ids, worker.id)

    async def _or_hold(self, apply: Callable[[], Awaitable[None]], job_id: str, worker_id: str) -> None:
        if self._held:
            self._held.append((apply, job_id, worker_id))  # keep the order of what this node was told
            return
        try:
            await apply()
        except StoreUnavailable as exc:
            log.warning(
                "Redis unavailable: worker frame held until it is back",
                extra={"job_id": job_id, "worker_id": worker_id, "error": exc.msg},
            )
            self._held.append((apply, job_id, worker_id))
            self._cluster_tasks.spawn(self._replay_held(), "held-frames")

    async def _replay_held(self) -> None:
        while self._held:
            apply, job_id, worker_id = self._held[0]
            try:
                await apply()
            except StoreUnavailable:
                await asyncio.sleep(HELD_RETRY_INTERVAL)
                continue
            self._held.pop(0)
            log.info("held worker frame applied", extra={"job_id": job_id, "worker_id": worker_id})

    # -- keeping the cluster's view current --------------------------------------------------------
    def _republish(self, event: object) -> None:
        if isinstance(event, JobEvent) and event.kind in _TOUCHES_LOAD and event.worker_id:
            worker = self._registry.get(event.worker_id)
            if worker is not None:
                self._publish_worker(worker)

    def worker_status(self, worker: WorkerSession, update: agent.UpdateWorkerStatus) -> None:
        """A status report resets the worker's projection (jobs since the last report): the cluster must
        see that too, or the worker looks fuller and fuller in Redis until its next event."""
        super().worker_status(worker, update)
        self._publish_worker(worker)

    def worker_gone(self, worker: WorkerSession) -> None:
        super().worker_gone(worker)
        self._published.pop(worker.id, None)

    def _publish_worker(self, worker: WorkerSession) -> None:
        summary = self._registry.summary(worker)
        eligible = self._registry.is_eligible(worker)
        last = self._published.get(worker.id)
        held = summary.held  # the tie-break among equal projections
        if (
            last is not None
            and last[1] == eligible
            and last[2] == held
            and abs(last[0] - summary.projected_load) < 0.05
        ):
            return  # nothing placement would decide differently on
        self._published[worker.id] = (summary.projected_load, eligible, held)
        self.cluster.on_event(WorkerEvent(WorkerEventKind.STATUS, summary))

    async def _rebalance_loop(self) -> None:
        while True:
            await asyncio.sleep(REBALANCE_INTERVAL)
            try:
                await self._rebalance()
                await self._recover_dropped()
            except REDIS_DOWN as exc:
                log.warning("rebalance skipped", extra={"node_id": self.cluster.node_id, "error": str(exc)})

    async def _recover_dropped(self) -> None:
        """A job this node holds a hand-off for, but neither waits here nor was assigned or ended (a
        step failed half-way, e.g. Redis went away while an offer was being accepted): place it again.
        Seen twice in a row first, so a job between its hand-off and its admission is left alone."""
        held = {j for j in self.cluster.held_jobs() if not self.is_pending(j)}
        suspects, self._suspects = held & self._suspects, held
        for job_id in suspects:
            job = await self._store.get_job(job_id)
            if job is None or job.state.status in ENDED or job.state.worker_id or self.is_pending(job_id):
                continue
            log.warning("job lost its place here; placing it again", extra={"job_id": job_id})
            await self.take(job, None, bool(job.state.reason == agent.JobStateReason.JSR_RETRYING), "")

    async def _rebalance(self) -> None:
        """Queued here, but an eligible worker exists on another node: move the job there."""
        loop = asyncio.get_running_loop()
        for key, queue in list(self._queues.items()):
            for pj in list(queue.values()):
                best = await self.cluster.directory.best(key, exclude=pj.tried)
                if best is None or best.node_id == self.cluster.node_id:
                    break
                if self._pending.get(pj.job.id) is not pj or pj.offered_to is not None:
                    continue
                timer = pj.deadline_timer
                remaining = max(0.001, timer.when() - loop.time()) if timer is not None else None
                self._forget_pending(pj)
                self.cluster.release(pj.job.id)
                await self.cluster.route(pj.job, remaining, pj.resuming)
                log.info(
                    "queued job moved to another node",
                    extra={"job_id": pj.job.id, "node_id": best.node_id, "worker_id": best.worker_id},
                )
