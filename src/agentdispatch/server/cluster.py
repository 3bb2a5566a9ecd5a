"""Cluster mode: any node, any worker. Placement cluster-wide, hand-offs durable, dead nodes taken over.

How a job moves (docs/cluster.md has the whole design and what each failure costs):

1. `route(job)` on the node that created it picks the least loaded eligible worker of the whole
   cluster from the worker directory (summaries each node publishes from its registry events), raises
   that worker's projection at once, and appends a hand-off to the stream of the node holding the
   worker's socket (its own stream when the worker is local, or when no worker is eligible anywhere).
2. That node's consumer reads it and gives it to its dispatcher (`Host.take`). The entry stays
   *pending* in the consumer group until the job is assigned or ended there (job events), so a node
   that dies with jobs queued or on offer leaves them in Redis.
3. "This job belongs to that worker" is `Store.claim_job`, a compare-and-set in Redis.
4. Every node renews a lease; a node whose lease lapses is dead. One survivor (SET NX) takes over:
   it moves the dead node's pending hand-offs to its own stream (XAUTOCLAIM, then re-send, then ack),
   drops the dead node's workers from the directory, and hands the dead node's running jobs to
   `Host.orphaned`, which gives their workers the reconnect grace to come back with `migrate_job`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit.protocol import agent
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..protocol.errors import ConfigError
from ..util import TaskSet
from .cluster_state import (
    PLACE_NEW,
    Candidate,
    Handoff,
    HandoffStreams,
    NodeLeases,
    WorkerDirectory,
    as_text,
    key_name,
)
from .events import Event, JobEvent, JobEventKind, WorkerEvent, WorkerEventKind, WorkerSummary
from .session import job_key
from .store import StoreUnavailable
from .store_redis import RedisStore, guarded

log = logging.getLogger("agentdispatch.server.cluster")

_SETTLED = (JobEventKind.ASSIGNED, JobEventKind.ENDED, JobEventKind.MIGRATED)
_ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED)
#: Redis unreachable or slow: loops log, wait, and try again (anything else is a bug and surfaces)
#: hand-offs being given to the dispatcher at once (each waits on its own Redis round trips)
MAX_DELIVERIES = 64
#: heartbeats between full republishes of this node's workers
REPUBLISH_EVERY = 30
REDIS_DOWN = (StoreUnavailable, RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True)
class ClusterOptions:
    node_id: str
    #: this node's own base URL, kept in its lease (for operators)
    url: str = ""
    #: seconds after the last heartbeat at which a node counts as dead
    lease_ttl: float = 5.0
    heartbeat_interval: float = 1.0
    #: how long one read of the hand-off stream blocks (bounds shutdown, not latency)
    read_block: float = 1.0
    #: coalescing delay for worker summary writes
    publish_delay: float = 0.02
    #: load added to a remote worker's projection when a hand-off is sent to it
    per_job_load: float = 0.1

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ConfigError("cluster node_id must be set")
        if not 0 < self.heartbeat_interval < self.lease_ttl:
            raise ConfigError("heartbeat_interval must be > 0 and below lease_ttl")


class Host(Protocol):
    """What the cluster needs from the node it runs in (the dispatcher behind a narrow seam)."""

    async def take(self, job: agent.Job, deadline: float | None, resuming: bool, prefer: str) -> None:
        """Place a job handed to this node (stored already), on `prefer` if it can."""

    async def terminate(self, job_id: str, worker_id: str) -> None:
        """End a job running on a worker of this node (deleted through another node)."""

    async def orphaned(self, job_ids: Sequence[str], node_id: str) -> None:
        """Running jobs of a dead node's workers: start their reconnect grace here."""

    def local_workers(self) -> list[WorkerSummary]:
        """Summaries of the workers connected to this node now."""


class ClusterNode:
    def __init__(self, store: RedisStore, options: ClusterOptions, host: Host) -> None:
        self.options = options
        self.node_id = options.node_id
        self._store = store
        self._host = host
        r, p = store.redis, store.prefix
        self.leases = NodeLeases(r, p, self.node_id, options.lease_ttl)
        self.directory = WorkerDirectory(r, p)
        self.streams = HandoffStreams(r, p, self.node_id)
        self._place_new = r.register_script(PLACE_NEW)
        self._rng = random.Random()
        self._tasks = TaskSet(f"cluster:{self.node_id}")
        self._dirty: dict[str, WorkerSummary] = {}
        # workers that left: out of placement, but kept in their node's set until the node itself is
        # taken over, so a survivor finds every job they may still hold (orphan timers die with a node)
        self._gone: dict[str, WorkerSummary] = {}
        self._publish_wakeup = asyncio.Event()
        self._delivering = asyncio.Semaphore(MAX_DELIVERIES)
        self._unacked: dict[str, tuple[str, str]] = {}  # job id -> (stream node, entry id)
        self._local_jobs: set[str] = set()  # placed here directly; their own entry is not delivered
        self._acks: list[tuple[str, str]] = []
        self._known_dead: set[str] = set()
        self._closing = False
        self.url = options.url

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, url: str = "") -> None:
        """Take the lease (recording `url`, this node's address, for operators and tests) and run."""
        self.url = url or self.options.url
        await self.leases.renew(self.url)
        await self.streams.ensure_group(self.node_id)
        self._tasks.spawn(self._heartbeat_loop(), "heartbeat")
        self._tasks.spawn(self._consume_loop(), "consume")
        self._tasks.spawn(self._publish_loop(), "publish")
        log.info("cluster node up", extra={"node_id": self.node_id})

    async def aclose(self) -> None:
        """Clean shutdown: stop, drop this node's workers from the directory, give the lease up."""
        self._closing = True
        await self._tasks.aclose()
        try:
            await self._flush()
            await self.directory.remove(await self.directory.of_node(self.node_id), keep_membership=True)
            await self.leases.release()
        except REDIS_DOWN as exc:
            _reraise_if_cancelled(exc)
            log.warning("cluster shutdown without Redis", extra={"node_id": self.node_id, "error": str(exc)})

    # -- events from this node (sync listener: queue, never await) --------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, WorkerEvent):
            wid = event.worker.worker_id
            if event.kind is WorkerEventKind.DISCONNECTED:
                self._dirty.pop(wid, None)
                self._gone[wid] = event.worker
            else:
                self._dirty[wid] = event.worker
            self._publish_wakeup.set()
        elif isinstance(event, JobEvent) and event.kind in _SETTLED:
            held = self._unacked.pop(event.job.id, None)
            if held is not None and held[1]:
                self._acks.append(held)
                self._publish_wakeup.set()

    def held_jobs(self) -> list[str]:
        """Jobs whose hand-off this node holds pending (not yet assigned or ended)."""
        return list(self._unacked)

    def release(self, job_id: str) -> None:
        """This node no longer holds the job (moved on with a new hand-off): acknowledge its entry."""
        held = self._unacked.pop(job_id, None)
        if held is not None and held[1]:
            self._acks.append(held)
            self._publish_wakeup.set()

    # -- placement -----------------------------------------------------------------------------
    async def route(self, job: agent.Job, deadline: float | None = None, resuming: bool = False) -> str:
        """Hand a stored job to the node of the best worker cluster-wide; returns that node's id."""
        best = await self.choose(job)
        target = best.node_id if best is not None else self.node_id
        await self.send_offer(target, job, deadline, resuming, best.worker_id if best else "")
        return target

    @guarded
    async def place_new(self, job: agent.Job, deadline: float | None) -> tuple[str, str]:
        """Store a new job, pick its worker cluster-wide and append the hand-off to that worker's node,
        in one round trip (PLACE_NEW). Returns (node id, worker id, "" when none is eligible). The node
        is this one when the best worker is here or no worker is eligible anywhere: the caller then
        places the job itself, and the entry stays pending until the job is assigned or ended."""
        me = self.node_id
        # held as local until the reply says otherwise: the consumer may read the entry before that
        self._local_jobs.add(job.id)
        self._unacked[job.id] = (me, "")
        keys, job_args = self._store.new_job_write(job)
        dead = sorted(self._known_dead)
        args: list[str | bytes | int | float] = [self.streams.stream(""), me, self.options.per_job_load]
        args.append(self._rng.random())
        args += [self.streams.maxlen, *job_args, _deadline_ms(deadline), "0", len(dead), *dead]
        zkey = f"{self._store.prefix}wkey:{key_name(job_key(job))}"
        try:
            reply: Any = await self._place_new(keys=[zkey, *keys], args=args)
        except BaseException:
            self._local_jobs.discard(job.id)
            if self._unacked.get(job.id) == (me, ""):
                del self._unacked[job.id]
            raise
        node, worker, entry = (as_text(part) for part in reply)
        held_here = self._unacked.get(job.id) == (me, "")
        if node == me:
            if held_here:
                self._unacked[job.id] = (me, entry)
        else:
            self._local_jobs.discard(job.id)
            if held_here:
                del self._unacked[job.id]
        return node, worker

    async def choose(self, job: agent.Job) -> Candidate | None:
        """The cluster's best worker for a job (its projection raised at once), or None."""
        best = await self.directory.pick(job_key(job), self.options.per_job_load)
        if best is None or best.node_id in self._known_dead:
            return None  # (a dead node's workers leave the directory when the node is taken over)
        return best

    async def send_offer(
        self, target: str, job: agent.Job, deadline: float | None, resuming: bool, worker_id: str = ""
    ) -> str:
        """Append the durable hand-off of a stored job to `target`'s stream (a new job: `place_new`)."""
        handoff = Handoff("offer", job.id, worker_id, _deadline_ms(deadline), resuming, self.node_id)
        return await self.streams.send(target, handoff)

    async def relay_termination(self, job_id: str, worker_id: str) -> bool:
        """Tell the node holding `worker_id` to terminate the job there; False if no node holds it."""
        summary = await self.directory.get(worker_id)
        if summary is None or summary.node_id == self.node_id:
            return False
        await self.streams.send(
            summary.node_id, Handoff("terminate", job_id, worker_id, 0, False, self.node_id)
        )
        return True

    # -- loops -----------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        beats = 0
        while _not_cancelled():
            try:
                await self.leases.renew(self.url)
                if beats % REPUBLISH_EVERY == 0:  # heals the directory after Redis lost its data
                    await self.directory.publish(self._host.local_workers())
                beats += 1
                await self._watch_peers()
            except REDIS_DOWN as exc:
                _reraise_if_cancelled(exc)
                log.warning("cluster heartbeat failed", extra={"node_id": self.node_id, "error": str(exc)})
            await asyncio.sleep(interval)

    async def _consume_loop(self) -> None:
        block_ms = int(self.options.read_block * 1000)
        pending = True  # first what this node id read before a restart and never settled
        while _not_cancelled():
            try:
                batch = await self.streams.read(block_ms, pending=pending)
                if pending and not batch:
                    pending = False
                    continue
                for handoff in batch:  # concurrently: each waits on Redis round trips of its own
                    if self._placed_here(handoff):
                        continue
                    await self._delivering.acquire()
                    self._tasks.spawn(self._deliver_one(handoff), f"deliver:{handoff.job_id}")
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning(
                    "hand-off stream lost (Redis restarted empty?); recreating",
                    extra={"node_id": self.node_id},
                )
                await self.streams.ensure_group(self.node_id)
            except REDIS_DOWN as exc:
                _reraise_if_cancelled(exc)
                log.warning("hand-off read failed", extra={"node_id": self.node_id, "error": str(exc)})
                await asyncio.sleep(min(1.0, self.options.heartbeat_interval))

    def _placed_here(self, h: Handoff) -> bool:
        """A hand-off this node sent itself while placing the job directly (`place_new`)."""
        if h.kind != "offer" or h.from_node != self.node_id or h.job_id not in self._local_jobs:
            return False
        self._local_jobs.discard(h.job_id)
        held = self._unacked.get(h.job_id)
        if held is None:  # settled already: nothing left to keep pending
            self._acks.append((self.node_id, h.entry_id))
            self._publish_wakeup.set()
        elif held == (self.node_id, ""):  # read before send_offer had its reply
            self._unacked[h.job_id] = (self.node_id, h.entry_id)
        return True

    async def _deliver_one(self, h: Handoff) -> None:
        try:
            await self._deliver(self.node_id, h)
        except REDIS_DOWN as exc:  # stays pending in the stream: redelivered after a restart / takeover
            _reraise_if_cancelled(exc)
            log.warning("hand-off not delivered", extra={"job_id": h.job_id, "error": str(exc)})
        finally:
            self._delivering.release()

    async def _deliver(self, stream_node: str, h: Handoff) -> None:
        if h.kind == "terminate":
            await self._host.terminate(h.job_id, h.worker_id)
            await self.streams.ack(stream_node, [h.entry_id])
            return
        job = await self._store.get_job(h.job_id)
        if job is None or job.state.status in _ENDED or job.state.worker_id:
            await self.streams.ack(stream_node, [h.entry_id])  # settled elsewhere meanwhile
            return
        deadline = _seconds_left(h.deadline_ms)
        self._unacked[job.id] = (stream_node, h.entry_id)
        await self._host.take(job, deadline, h.resuming, h.worker_id)

    async def _publish_loop(self) -> None:
        while _not_cancelled():
            await self._publish_wakeup.wait()
            await asyncio.sleep(self.options.publish_delay)  # coalesce a burst of changes
            self._publish_wakeup.clear()
            try:
                await self._flush()
            except REDIS_DOWN as exc:
                _reraise_if_cancelled(exc)
                log.warning("summary publish failed", extra={"node_id": self.node_id, "error": str(exc)})
                self._publish_wakeup.set()
                await asyncio.sleep(min(1.0, self.options.heartbeat_interval))

    async def _flush(self) -> None:
        dirty, gone, acks = self._dirty, self._gone, self._acks
        self._dirty, self._gone, self._acks = {}, {}, []
        try:
            await self.directory.publish(list(dirty.values()))
            await self.directory.remove(list(gone.values()), keep_membership=True)
            by_stream: dict[str, list[str]] = {}
            for node, entry in acks:
                by_stream.setdefault(node, []).append(entry)
            for node, entries in by_stream.items():
                await self.streams.ack(node, entries)
        except BaseException:
            # keep what was not written; newer summaries of the same worker win
            self._dirty = {**dirty, **self._dirty}
            self._gone = {**gone, **self._gone}
            self._acks = acks + self._acks
            raise

    # -- dead peers ----------------------------------------------------------------------------
    async def _watch_peers(self) -> None:
        for node, alive in (await self.leases.alive()).items():
            if alive or node == self.node_id:
                self._known_dead.discard(node)
                continue
            if node not in self._known_dead:
                self._known_dead.add(node)
                log.warning("node lease lapsed", extra={"node_id": node, "seen_by": self.node_id})
            if await self.leases.begin_takeover(node, hold=10 * self.options.lease_ttl):
                await self.take_over(node)

    async def take_over(self, dead: str) -> None:
        """Adopt a dead node's hand-offs, forget its workers, and report its running jobs orphaned."""
        members = await self.directory.members(dead)
        workers = await self.directory.of_node(dead)
        await self.directory.remove(workers)  # before re-routing, so nothing goes back to the dead
        claimed = await self.streams.claim(dead, min_idle=0)
        for h in claimed:  # re-sent (to a live node's stream) before the ack, so they stay durable
            if h.kind == "offer":
                await self.route_existing(h)
            await self.streams.ack(dead, [h.entry_id])
        orphans = await self._store.jobs_held_by(members)
        await self.leases.forget(dead)
        log.warning(
            "took over dead node",
            extra={"node_id": dead, "by": self.node_id, "handoffs": len(claimed), "orphans": len(orphans)},
        )
        if orphans:
            await self._host.orphaned(orphans, dead)

    async def route_existing(self, h: Handoff) -> None:
        job = await self._store.get_job(h.job_id)
        if job is None or job.state.status in _ENDED or job.state.worker_id:
            return
        remaining = _seconds_left(h.deadline_ms)
        await self.route(job, remaining, h.resuming)


def _deadline_ms(deadline: float | None) -> int:
    """A hand-off's deadline: wall-clock ms at which it passes, 0 = the receiving node's default."""
    return 0 if deadline is None else int((time.time() + deadline) * 1000)


def _seconds_left(deadline_ms: int) -> float | None:
    """The wait a received hand-off has left (at least 1 ms: its deadline then fires at once)."""
    return None if not deadline_ms else max(0.001, deadline_ms / 1000 - time.time())


def _reraise_if_cancelled(exc: BaseException) -> None:
    """redis-py may turn a cancellation into a timeout error; a task being cancelled must stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _not_cancelled() -> bool:
    """Loop condition: redis-py's retries can swallow a cancellation; stop when one was requested."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return True
