"""Cluster bookkeeping on a real redis-server: leases, the worker directory, durable hand-offs, takeover.

Each "node" here is a ClusterNode with its own Redis client and a recording host in place of the
dispatcher, so the tests see exactly what the cluster asked each node to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from livekit.protocol import agent, models

from agentdispatch.server.cluster import ClusterNode, ClusterOptions
from agentdispatch.server.events import JobEvent, JobEventKind, WorkerEvent, WorkerEventKind, WorkerSummary
from agentdispatch.server.store_redis import RedisStore
from agentdispatch.testing.services import RedisProcess

WS_AVAILABLE = int(agent.WorkerStatus.WS_AVAILABLE)
WS_FULL = int(agent.WorkerStatus.WS_FULL)


async def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll an async or sync predicate until it is truthy (generous timeout; no timing assumptions)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


class RecordingHost:
    def __init__(self) -> None:
        self.taken: list[tuple[str, str, bool]] = []  # (job id, preferred worker, resuming)
        self.terminated: list[tuple[str, str]] = []
        self.orphans: list[tuple[list[str], str]] = []

    async def take(self, job: agent.Job, deadline: float | None, resuming: bool, prefer: str) -> None:
        self.taken.append((job.id, prefer, resuming))

    async def terminate(self, job_id: str, worker_id: str) -> None:
        self.terminated.append((job_id, worker_id))

    async def orphaned(self, job_ids: Sequence[str], node_id: str) -> None:
        self.orphans.append((sorted(job_ids), node_id))

    def local_workers(self) -> list[WorkerSummary]:
        return []


def summary(worker_id: str, node: str, load: float = 0.0, **kw: Any) -> WorkerSummary:
    base = WorkerSummary(
        worker_id=worker_id, agent_name="agent", namespace="", job_type=0, deployment="", version="",
        status=WS_AVAILABLE, load=load, projected_load=load, draining=False, active_jobs=0,
        pending_offers=0, unresponsive=False, node_id=node, connected_at_ns=0,
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


def make_job(job_id: str, worker: str = "") -> agent.Job:
    j = agent.Job(id=job_id, dispatch_id="AD_1", agent_name="agent", room=models.Room(name="r"))
    j.state.worker_id = worker
    return j


class Cluster:
    def __init__(self, url: str) -> None:
        self.url = url
        self.nodes: dict[str, tuple[ClusterNode, RecordingHost, RedisStore]] = {}

    async def node(self, node_id: str, **opts: Any) -> tuple[ClusterNode, RecordingHost, RedisStore]:
        store = RedisStore(self.url, cluster="t")
        host = RecordingHost()
        options = ClusterOptions(
            # a 2 s lease: a node is seen dead only after a 2 s stall, not a busy moment of the machine
            node_id=node_id,
            lease_ttl=2.0,
            heartbeat_interval=0.1,
            read_block=0.2,
            **opts,
        )
        node = ClusterNode(store, options, host)
        await node.start()
        self.nodes[node_id] = (node, host, store)
        return node, host, store

    async def kill(self, node_id: str) -> None:
        """Like SIGKILL: the node stops at once, keeps its lease until it lapses, cleans up nothing."""
        node, _host, store = self.nodes.pop(node_id)
        await node._tasks.aclose()
        await store.aclose()

    async def aclose(self) -> None:
        for node, _host, store in self.nodes.values():
            await node.aclose()
            await store.aclose()


@pytest.fixture
async def cluster(redis_proc: RedisProcess) -> AsyncIterator[Cluster]:
    c = Cluster(redis_proc.url)
    yield c
    await c.aclose()


async def test_a_node_whose_lease_lapses_is_seen_dead_by_the_others(cluster: Cluster) -> None:
    a, _, _ = await cluster.node("ND_a")
    await cluster.node("ND_b")
    assert await a.leases.alive() == {"ND_a": True, "ND_b": True}
    await cluster.kill("ND_b")
    await wait_until(lambda: a.leases.alive(), what="any answer")
    await wait_until(
        lambda: _not_listed_or_dead(a, "ND_b"), what="ND_b's lease to lapse and ND_b to be taken over"
    )


async def _not_listed_or_dead(node: ClusterNode, dead: str) -> bool:
    alive = await node.leases.alive()
    return alive.get(dead) is not True


async def test_a_clean_shutdown_gives_the_lease_up_and_removes_its_workers(cluster: Cluster) -> None:
    a, _, _ = await cluster.node("ND_a")
    b, _, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b")))
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    node, _host, store = cluster.nodes.pop("ND_b")
    await node.aclose()
    await store.aclose()
    assert (await a.leases.alive()).get("ND_b") is False
    assert await a.directory.get("AW_b1") is None
    assert await a.directory.best(("agent", "", 0, "*")) is None


async def test_placement_picks_the_least_loaded_eligible_worker_cluster_wide(cluster: Cluster) -> None:
    a, _, _ = await cluster.node("ND_a")
    b, _, _ = await cluster.node("ND_b")
    a.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_a1", "ND_a", 0.5)))
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.2)))
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b2", "ND_b", 0.0, status=WS_FULL)))
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b3", "ND_b", 0.0, draining=True)))
    key = ("agent", "", 0, "*")
    await wait_until(lambda: a.directory.get("AW_b3"), what="summaries published")
    assert await a.directory.best(key) == ("AW_b1", "ND_b", 0.2)
    assert await a.directory.best(key, exclude={"AW_b1"}) == ("AW_a1", "ND_a", 0.5)
    # picking a worker raises its projection at once: the next pick goes elsewhere
    chosen = await a.directory.pick(key, 0.4)
    assert chosen is not None and chosen.worker_id == "AW_b1"
    assert await _best_is(a, key, "AW_a1")  # AW_b1 is at 0.6 now
    # pick = best + bump in one atomic step: concurrent picks spread instead of piling on one worker
    picks = await asyncio.gather(*(a.directory.pick(key, 0.25) for _ in range(2)))
    assert sorted(p.worker_id for p in picks if p is not None) == ["AW_a1", "AW_b1"]
    # a worker that leaves is no longer a candidate
    a.on_event(WorkerEvent(WorkerEventKind.DISCONNECTED, summary("AW_a1", "ND_a", 0.5)))
    await wait_until(lambda: _best_is(a, key, "AW_b1"), what="AW_a1 gone from the directory")


async def test_equal_projections_place_on_the_worker_holding_fewer_jobs(cluster: Cluster) -> None:
    """As on one node: the directory orders equal projections by the jobs held (ND_a's member sorts
    first in Redis, so without the tie-break the busy worker would win every time)."""
    a, _, _ = await cluster.node("ND_a")
    b, _, _ = await cluster.node("ND_b")
    a.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_a1", "ND_a", 0.3, active_jobs=4)))
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.3, pending_offers=1)))
    key = ("agent", "", 0, "*")
    await wait_until(lambda: a.directory.get("AW_b1"), what="summaries published")
    await wait_until(lambda: a.directory.get("AW_a1"), what="summaries published")
    best = await a.directory.best(key)
    assert best is not None and best.worker_id == "AW_b1"
    chosen = await a.directory.pick(key, 0.1)
    assert chosen is not None and chosen.worker_id == "AW_b1"
    assert await _best_is(a, key, "AW_a1")  # AW_b1 is at 0.4 now: the lower projection wins again


async def _best_is(node: ClusterNode, key: Any, worker_id: str) -> bool:
    best = await node.directory.best(key)
    return best is not None and best.worker_id == worker_id


async def test_a_job_created_on_one_node_is_handed_to_the_node_of_the_best_worker(cluster: Cluster) -> None:
    a, host_a, store = await cluster.node("ND_a")
    b, host_b, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.1)))
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    job = make_job("AJ_1")
    await store.add_job(job)
    assert await a.route(job, deadline=30) == "ND_b"
    await wait_until(lambda: host_b.taken, what="ND_b to take the job")
    assert host_b.taken == [("AJ_1", "AW_b1", False)] and host_a.taken == []
    stream = b.streams.stream("ND_b")
    pending = await store.redis.xpending(stream, "nodes")
    assert pending["pending"] == 1, "the hand-off stays pending until the job is assigned"
    b.on_event(JobEvent(JobEventKind.ASSIGNED, job, "AW_b1"))
    await wait_until(
        lambda: _pending_count(store, stream, 0), what="the hand-off to be acknowledged after assignment"
    )


async def test_a_new_job_is_stored_placed_and_handed_off_in_one_step(cluster: Cluster) -> None:
    a, host_a, store = await cluster.node("ND_a")
    b, host_b, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.1)))
    a.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_a1", "ND_a", 0.25)))
    await wait_until(lambda: a.directory.get("AW_a1"), what="AW_a1 published")
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    job = make_job("AJ_new")
    job.metadata = "m" * 300
    assert await a.place_new(job, deadline=30) == ("ND_b", "AW_b1")
    stored = await store.get_job("AJ_new")
    assert stored is not None and stored.metadata == job.metadata  # stored before the hand-off is read
    assert [j.id for j in await store.jobs_of_dispatch("AD_1")] == ["AJ_new"]
    await wait_until(lambda: host_b.taken, what="ND_b to take the job")
    assert host_b.taken == [("AJ_new", "AW_b1", False)] and host_a.taken == []
    assert a.held_jobs() == []  # handed to ND_b: nothing held on ND_a
    # the pick raised AW_b1's projection (0.1 + 0.1 per job): the next job goes to the next lowest
    key = ("agent", "", 0, "*")
    assert await _best_is(a, key, "AW_b1")  # 0.2 < 0.25
    assert await a.place_new(make_job("AJ_2"), deadline=30) == ("ND_b", "AW_b1")
    assert await a.place_new(make_job("AJ_3"), deadline=30) == ("ND_a", "AW_a1")  # 0.25 < 0.3
    assert a.held_jobs() == ["AJ_3"]  # placed by ND_a itself: held here until assigned
    # ND_a's consumer read its own entry (pending = delivered, not acknowledged) and left it to the caller
    await wait_until(
        lambda: _pending_count(store, a.streams.stream("ND_a"), 1), what="ND_a to read its own hand-off"
    )
    assert host_a.taken == [], "a job placed by its own node is not delivered to it a second time"
    a.on_event(JobEvent(JobEventKind.ASSIGNED, make_job("AJ_3"), "AW_a1"))
    await wait_until(lambda: _pending_count(store, a.streams.stream("ND_a"), 0), what="the ack")


async def test_placing_a_new_job_skips_nodes_known_dead_and_keeps_it_when_none_is_eligible(
    cluster: Cluster,
) -> None:
    a, _host_a, store = await cluster.node("ND_a")
    b, _host_b, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.0)))
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    a._known_dead.add("ND_b")  # its lease lapsed; not taken over yet, so its workers are still listed
    assert await a.place_new(make_job("AJ_1"), deadline=None) == ("ND_a", "")
    assert (await store.get_job("AJ_1")) is not None
    assert a.held_jobs() == ["AJ_1"]
    a._known_dead.clear()
    assert await a.place_new(make_job("AJ_2"), deadline=None) == ("ND_b", "AW_b1")


async def _pending_count(store: RedisStore, stream: str, n: int) -> bool:
    return int((await store.redis.xpending(stream, "nodes"))["pending"]) == n


async def test_with_no_eligible_worker_anywhere_the_creating_node_keeps_the_job(cluster: Cluster) -> None:
    a, host_a, store = await cluster.node("ND_a")
    await cluster.node("ND_b")
    job = make_job("AJ_1")
    await store.add_job(job)
    assert await a.route(job) == "ND_a"
    await wait_until(lambda: host_a.taken, what="ND_a to keep the job")
    assert host_a.taken == [("AJ_1", "", False)]


async def test_a_termination_is_relayed_to_the_node_holding_the_worker(cluster: Cluster) -> None:
    a, _, _ = await cluster.node("ND_a")
    b, host_b, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b")))
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    assert await a.relay_termination("AJ_1", "AW_b1")
    await wait_until(lambda: host_b.terminated, what="ND_b to terminate")
    assert host_b.terminated == [("AJ_1", "AW_b1")]
    assert not await a.relay_termination("AJ_2", "AW_unknown")


async def test_a_dead_nodes_pending_handoffs_and_running_jobs_are_taken_over(cluster: Cluster) -> None:
    a, host_a, store = await cluster.node("ND_a")
    b, host_b, _ = await cluster.node("ND_b")
    b.on_event(WorkerEvent(WorkerEventKind.REGISTERED, summary("AW_b1", "ND_b", 0.1)))
    await wait_until(lambda: a.directory.get("AW_b1"), what="AW_b1 published")
    running = make_job("AJ_run", worker="AW_b1")
    await store.add_job(running)
    queued = make_job("AJ_queued")
    await store.add_job(queued)
    assert await a.route(queued, deadline=30) == "ND_b"
    await wait_until(lambda: host_b.taken, what="ND_b took the job (and then dies before assigning it)")
    await cluster.kill("ND_b")
    await wait_until(lambda: host_a.orphans, what="ND_a to take over ND_b")
    assert host_a.orphans == [(["AJ_run"], "ND_b")]
    await wait_until(lambda: host_a.taken, what="the queued job to come to ND_a")
    assert host_a.taken == [("AJ_queued", "", False)]
    assert await a.directory.get("AW_b1") is None
    assert "ND_b" not in await a.leases.known()


async def test_concurrent_placement_from_three_nodes_never_assigns_a_job_twice(cluster: Cluster) -> None:
    stores = [(await cluster.node(f"ND_{i}"))[2] for i in range(3)]
    ids = [f"AJ_{n}" for n in range(100)]
    for job_id in ids:
        await stores[0].add_job(make_job(job_id))
    claims = [stores[i].claim_job(make_job(job_id, worker=f"AW_{i}")) for job_id in ids for i in range(3)]
    results = await asyncio.gather(*claims)
    wins_per_job = [sum(results[k * 3 : k * 3 + 3]) for k in range(len(ids))]
    assert wins_per_job == [1] * len(ids)
    owners = {(await stores[1].get_job(j)).state.worker_id for j in ids}  # type: ignore[union-attr]
    assert owners <= {"AW_0", "AW_1", "AW_2"}
