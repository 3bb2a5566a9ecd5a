"""One contract for every Store: MemoryStore (sharing and copying) and RedisStore on a real redis-server.

The dispatch logic may rely on exactly what these tests pin, and on nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from livekit.protocol import agent, agent_dispatch, models

from agentdispatch.server.idempotency import IdempotencyCache
from agentdispatch.server.store import MemoryStore, ReplayState, Store
from agentdispatch.testing.services import RedisProcess, require

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return int(self.now * 1e9)


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    binary = require("redis-server", "redis-server")
    with RedisProcess(binary) as proc:
        yield proc


@pytest.fixture(params=["memory", "memory-copies", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "memory-copies":
        yield MemoryStore(copies=True)
        return
    from agentdispatch.server.store_redis import RedisStore

    proc: RedisProcess = request.getfixturevalue("redis_proc")
    rs = RedisStore(proc.url, cluster="contract")
    await rs.redis.flushdb()
    yield rs
    await rs.aclose()


def copies(store: Store) -> bool:
    return not isinstance(store, MemoryStore) or store._copies


def room(name: str, metadata: str = "") -> models.Room:
    return models.Room(name=name, sid=f"RM_{name}", metadata=metadata)


def dispatch(did: str, room_name: str, agent_name: str = "a") -> agent_dispatch.AgentDispatch:
    return agent_dispatch.AgentDispatch(id=did, room=room_name, agent_name=agent_name)


def job(jid: str, did: str, room_name: str, worker: str = "") -> agent.Job:
    j = agent.Job(id=jid, dispatch_id=did, room=models.Room(name=room_name))
    j.state.worker_id = worker
    return j


# -- rooms ---------------------------------------------------------------------------------------------
async def test_create_room_inserts_once_and_returns_the_stored_room(store: Store) -> None:
    stored, created = await store.create_room(room("r1", "first"))
    assert created and stored.metadata == "first"
    again, created = await store.create_room(room("r1", "second"))
    assert not created and again.metadata == "first"
    got = await store.get_room("r1")
    assert got is not None and got.metadata == "first"
    assert await store.get_room("nope") is None


async def test_update_room_saves_changes_and_never_creates(store: Store) -> None:
    await store.create_room(room("r1"))
    got = await store.get_room("r1")
    assert got is not None
    got.num_participants = 3
    await store.update_room(got)
    saved = await store.get_room("r1")
    assert saved is not None and saved.num_participants == 3
    await store.update_room(room("ghost"))
    assert await store.get_room("ghost") is None


async def test_list_rooms_in_creation_order_or_by_names(store: Store) -> None:
    for name in ("b", "a", "c"):
        await store.create_room(room(name))
    assert [r.name for r in await store.list_rooms()] == ["b", "a", "c"]
    assert [r.name for r in await store.list_rooms(["c", "missing", "b"])] == ["c", "b"]


async def test_delete_room_cascades_to_participants_dispatches_and_jobs(store: Store) -> None:
    for name in ("r1", "r2"):
        await store.create_room(room(name))
        await store.add_participant(name, models.ParticipantInfo(identity=f"u-{name}"))
        await store.add_dispatch(dispatch(f"AD_{name}", name))
        await store.add_job(job(f"AJ_{name}", f"AD_{name}", name))
    deleted = await store.delete_room("r1")
    assert deleted is not None and deleted.name == "r1"
    assert await store.get_room("r1") is None
    assert await store.list_participants("r1") == []
    assert await store.list_dispatches("r1") == []
    assert await store.get_dispatch("AD_r1") is None
    assert await store.get_job("AJ_r1") is None
    assert await store.jobs_of_dispatch("AD_r1") == []
    # the other room is untouched
    assert [p.identity for p in await store.list_participants("r2")] == ["u-r2"]
    assert [j.id for j in await store.jobs_of_room("r2")] == ["AJ_r2"]
    assert await store.delete_room("r1") is None
    # a room of the same name starts empty
    await store.create_room(room("r1"))
    assert await store.list_dispatches("r1") == [] and await store.list_participants("r1") == []


# -- participants ---------------------------------------------------------------------------------------
async def test_participants_add_replace_list_and_remove(store: Store) -> None:
    await store.create_room(room("r"))
    await store.add_participant("r", models.ParticipantInfo(identity="u1", name="one"))
    await store.add_participant("r", models.ParticipantInfo(identity="u2"))
    await store.add_participant("r", models.ParticipantInfo(identity="u1", name="uno"))
    listed = await store.list_participants("r")
    assert [(p.identity, p.name) for p in listed] == [("u1", "uno"), ("u2", "")]
    removed = await store.remove_participant("r", "u1")
    assert removed is not None and removed.name == "uno"
    assert await store.remove_participant("r", "u1") is None
    assert [p.identity for p in await store.list_participants("r")] == ["u2"]
    assert await store.list_participants("empty") == []


# -- dispatches -------------------------------------------------------------------------------------------
async def test_dispatches_add_get_update_and_list_by_room(store: Store) -> None:
    await store.create_room(room("r"))
    await store.add_dispatch(dispatch("AD_2", "r", "second"))
    await store.add_dispatch(dispatch("AD_1", "r", "first"))
    await store.add_dispatch(dispatch("AD_x", "other"))
    assert [d.id for d in await store.list_dispatches("r")] == ["AD_2", "AD_1"]
    got = await store.get_dispatch("AD_1")
    assert got is not None and got.agent_name == "first"
    got.state.deleted_at = 42
    await store.update_dispatch(got)
    saved = await store.get_dispatch("AD_1")
    assert saved is not None and saved.state.deleted_at == 42
    await store.update_dispatch(dispatch("AD_ghost", "r"))
    assert await store.get_dispatch("AD_ghost") is None
    assert len(await store.list_dispatches("r")) == 2


# -- jobs -----------------------------------------------------------------------------------------------
async def test_jobs_add_get_update_and_list_by_dispatch_and_room(store: Store) -> None:
    await store.create_room(room("r"))
    await store.add_dispatch(dispatch("AD_1", "r"))
    await store.add_dispatch(dispatch("AD_2", "r"))
    await store.add_job(job("AJ_1", "AD_1", "r"))
    await store.add_job(job("AJ_2", "AD_1", "r"))
    await store.add_job(job("AJ_3", "AD_2", "r"))
    assert [j.id for j in await store.jobs_of_dispatch("AD_1")] == ["AJ_1", "AJ_2"]
    assert [j.id for j in await store.jobs_of_room("r")] == ["AJ_1", "AJ_2", "AJ_3"]
    got = await store.get_job("AJ_2")
    assert got is not None
    got.state.status = JS_RUNNING
    got.state.worker_id = "AW_1"
    await store.update_job(got)
    saved = await store.get_job("AJ_2")
    assert saved is not None and saved.state.status == JS_RUNNING and saved.state.worker_id == "AW_1"
    await store.update_job(job("AJ_ghost", "AD_1", "r"))
    assert await store.get_job("AJ_ghost") is None
    assert await store.jobs_of_dispatch("AD_none") == []
    assert await store.jobs_of_room("none") == []


async def test_a_record_changed_but_not_saved_is_unchanged_in_a_copying_store(store: Store) -> None:
    if not copies(store):
        pytest.skip("the sharing MemoryStore hands out its own records")
    await store.create_room(room("r"))
    r = await store.get_room("r")
    assert r is not None
    r.metadata = "not saved"
    again = await store.get_room("r")
    assert again is not None and again.metadata == ""
    j = job("AJ_1", "AD_1", "r")
    await store.add_job(j)
    j.state.worker_id = "AW_changed_after_add"
    stored = await store.get_job("AJ_1")
    assert stored is not None and stored.state.worker_id == ""


# -- claim_job: the one compare-and-set ----------------------------------------------------------------------
async def test_claim_job_assigns_an_unassigned_job_once(store: Store) -> None:
    await store.add_job(job("AJ_1", "AD_1", "r"))
    assert await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_a"))
    assert not await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_b"))
    assert await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_a")), "same owner again is a no-op win"
    stored = await store.get_job("AJ_1")
    assert stored is not None and stored.state.worker_id == "AW_a"


async def test_claim_job_moves_a_job_only_from_the_expected_owner(store: Store) -> None:
    await store.add_job(job("AJ_1", "AD_1", "r", worker="AW_old"))
    assert not await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_new"), expected_worker="AW_other")
    assert await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_new"), expected_worker="AW_old")
    stored = await store.get_job("AJ_1")
    assert stored is not None and stored.state.worker_id == "AW_new"


async def test_claim_job_refuses_ended_and_missing_jobs(store: Store) -> None:
    ended = job("AJ_1", "AD_1", "r")
    ended.state.status = JS_SUCCESS
    await store.add_job(ended)
    assert not await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_a"))
    assert not await store.claim_job(job("AJ_missing", "AD_1", "r", worker="AW_a"))
    assert await store.get_job("AJ_missing") is None


async def test_claim_job_sees_owners_written_by_update_job(store: Store) -> None:
    await store.add_job(job("AJ_1", "AD_1", "r"))
    await store.update_job(job("AJ_1", "AD_1", "r", worker="AW_a"))
    assert not await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_b"))
    await store.update_job(job("AJ_1", "AD_1", "r", worker=""))  # released (restart)
    assert await store.claim_job(job("AJ_1", "AD_1", "r", worker="AW_b"))


async def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    await store.add_job(job("AJ_1", "AD_1", "r"))
    stores: list[Store] = [store]
    if not isinstance(store, MemoryStore):  # independent clients, as separate nodes would have
        from agentdispatch.server.store_redis import RedisStore

        assert isinstance(store, RedisStore)
        stores += [RedisStore(store.url, cluster="contract") for _ in range(2)]
    try:
        claims = [
            stores[i % len(stores)].claim_job(job("AJ_1", "AD_1", "r", worker=f"AW_{i}")) for i in range(30)
        ]
        results = await asyncio.gather(*claims)
    finally:
        for extra in stores[1:]:
            await extra.aclose()
    assert sum(results) == 1
    winner = f"AW_{results.index(True)}"
    stored = await store.get_job("AJ_1")
    assert stored is not None and stored.state.worker_id == winner


# -- idempotent requests -----------------------------------------------------------------------------------
async def test_request_reservation_pending_done_and_abandon(store: Store) -> None:
    assert (await store.reserve_request("k1", 30)).state is ReplayState.NEW
    assert (await store.reserve_request("k1", 30)).state is ReplayState.PENDING
    await store.finish_request("k1", b"answer", 30)
    done = await store.reserve_request("k1", 30)
    assert done.state is ReplayState.DONE and done.reply == b"answer"
    assert (await store.reserve_request("k2", 30)).state is ReplayState.NEW
    await store.abandon_request("k2")
    assert (await store.reserve_request("k2", 30)).state is ReplayState.NEW


async def test_request_keys_expire_after_their_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.reserve_request("k", 5)
    await store.finish_request("k", b"x", 10)
    clock.now += 9
    assert (await store.reserve_request("k", 5)).state is ReplayState.DONE
    clock.now += 2
    assert (await store.reserve_request("k", 5)).state is ReplayState.NEW


async def test_redis_request_keys_expire_after_their_ttl(redis_proc: RedisProcess) -> None:
    from agentdispatch.server.store_redis import RedisStore

    store = RedisStore(redis_proc.url, cluster="ttl")
    try:
        await store.finish_request("k", b"x", 0.05)
        ttl_ms = await store.redis.pttl(store.k("req", "k"))
        assert 0 < ttl_ms <= 50
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while (await store.reserve_request("k", 30)).state is not ReplayState.NEW:
            assert loop.time() < end, "reply never expired"
            await asyncio.sleep(0.02)
    finally:
        await store.aclose()


async def test_idempotent_call_runs_once_across_two_nodes_sharing_a_store(store: Store) -> None:
    stores: list[Store] = [store, store]
    if not isinstance(store, MemoryStore):
        from agentdispatch.server.store_redis import RedisStore

        assert isinstance(store, RedisStore)
        stores[1] = RedisStore(store.url, cluster="contract")
    node_a, node_b = IdempotencyCache(stores[0]), IdempotencyCache(stores[1])
    calls: list[str] = []
    release, started = asyncio.Event(), asyncio.Event()

    async def create() -> agent_dispatch.AgentDispatch:
        calls.append("create")
        started.set()
        await release.wait()
        return dispatch("AD_once", "r")

    first = asyncio.ensure_future(node_a.run("CreateDispatch|r|key-1", create))
    await asyncio.wait_for(started.wait(), 10)  # the first call holds the key
    second = asyncio.ensure_future(node_b.run("CreateDispatch|r|key-1", create))
    release.set()
    try:
        a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        if stores[1] is not store:
            await stores[1].aclose()
    assert calls == ["create"]
    assert isinstance(b, agent_dispatch.AgentDispatch) and a == b and b.id == "AD_once"
