"""/presence: joining with a token, token dispatch, participant/publisher jobs, data relay, room closing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

MakeToken = Callable[..., str]


def join_token(make_token: MakeToken, room: str, identity: str, **extra: Any) -> str:
    return make_token(room_join=True, room=room, identity=identity, **extra)


async def test_join_creates_the_room(harness: Any, make_token: MakeToken) -> None:
    alice = await harness.presence(join_token(make_token, "hall", "alice", name="Alice"))
    joined = await alice.wait_event("joined")
    assert joined["room"]["name"] == "hall"
    assert joined["participant"]["identity"] == "alice"
    assert joined["participant"]["name"] == "Alice"
    assert joined["participants"] == []
    rooms = await harness.api.room.list_rooms(api.ListRoomsRequest())
    assert [r.name for r in rooms.rooms] == ["hall"]
    assert rooms.rooms[0].num_participants == 1


@pytest.mark.parametrize(
    "token_kwargs",
    [
        None,
        {"identity": "u", "room_join": True, "room": "r", "secret": "wrong"},
        {"identity": "u", "room": "r"},  # no roomJoin
        {"identity": "u", "room_join": True, "room": "r", "ttl": -60},
        {"room_admin": True, "room": "r"},
    ],
    ids=["no-token", "wrong-secret", "no-room-join", "expired", "admin-not-join"],
)
async def test_presence_auth(
    harness: Any, make_token: MakeToken, token_kwargs: dict[str, Any] | None
) -> None:
    headers = {"Authorization": f"Bearer {make_token(**token_kwargs)}"} if token_kwargs is not None else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await harness.http.ws_connect(harness.server.ws_url + "/presence", headers=headers)
    assert info.value.status == 401
    assert (await harness.api.room.list_rooms(api.ListRoomsRequest())).rooms == []


async def test_presence_query_token_and_plain_get(harness: Any, make_token: MakeToken) -> None:
    token = join_token(make_token, "q-room", "q")
    ws = await harness.http.ws_connect(harness.server.ws_url + "/presence", params={"access_token": token})
    assert (await ws.receive_json(timeout=3))["type"] == "joined"
    await ws.close()
    async with harness.http.get(harness.server.url + "/presence") as resp:
        assert resp.status == 404


async def test_token_room_config_dispatches_its_agents(harness: Any, make_token: MakeToken) -> None:
    tok_agent = await harness.worker(agent_name="concierge")
    unnamed = await harness.worker()
    config = api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="concierge", metadata="vip")])
    await harness.presence(join_token(make_token, "lobby", "guest", room_config=config))
    [offer] = await tok_agent.wait_offers(1)
    assert offer.job.room.name == "lobby"
    assert offer.job.metadata == "vip"
    await unnamed.sync()
    assert unnamed.received.offers == []  # explicit agents turn automatic dispatch off


async def test_participant_worker_gets_a_job_per_participant(harness: Any, make_token: MakeToken) -> None:
    w = await harness.worker(job_type=agent.JobType.JT_PARTICIPANT)
    alice = await harness.presence(join_token(make_token, "stage", "alice"))
    await w.wait_offers(1)
    await harness.presence(join_token(make_token, "stage", "bob"))
    await w.wait_offers(2)
    await w.wait_assignments(2)
    jobs = {o.job.participant.identity: o.job for o in w.received.offers}
    assert set(jobs) == {"alice", "bob"}
    assert all(j.type == agent.JobType.JT_PARTICIPANT and j.room.name == "stage" for j in jobs.values())
    # an agent joining with its job token triggers no job
    token = w.received.assignments[0].token
    agent_presence = await harness.presence(token)
    joined = await alice.wait_event("participant_joined", 2)
    assert joined["participant"]["kind"] == "AGENT"
    await agent_presence.wait_event("joined")
    await w.sync()
    assert len(w.received.offers) == 2


async def test_publish_starts_a_publisher_job(harness: Any, make_token: MakeToken) -> None:
    w = await harness.worker(job_type=agent.JobType.JT_PUBLISHER)
    alice = await harness.presence(join_token(make_token, "studio", "alice"))
    await alice.wait_event("joined")
    await w.sync()
    assert w.received.offers == []  # joining is not publishing
    await alice.send({"type": "publish"})
    [offer] = await w.wait_offers(1)
    assert offer.job.type == agent.JobType.JT_PUBLISHER
    assert offer.job.participant.identity == "alice"
    await alice.send({"type": "publish"})  # only the first publish counts
    await w.sync()
    assert len(w.received.offers) == 1


async def test_data_is_relayed_between_participants(harness: Any, make_token: MakeToken) -> None:
    alice = await harness.presence(join_token(make_token, "chat", "alice"))
    await alice.wait_event("joined")
    bob = await harness.presence(join_token(make_token, "chat", "bob"))
    await bob.wait_event("joined")
    carol = await harness.presence(join_token(make_token, "chat", "carol"))
    await carol.wait_event("joined")

    await alice.send({"type": "data", "payload": "hello all", "topic": "greet"})
    msg = await bob.wait_event("data")
    assert msg == {"type": "data", "from": "alice", "payload": "hello all", "topic": "greet"}
    assert (await carol.wait_event("data"))["payload"] == "hello all"

    await bob.send({"type": "data", "payload": "just you", "destination_identities": ["alice"]})
    msg = await alice.wait_event("data")
    assert (msg["from"], msg["payload"]) == ("bob", "just you")
    await carol.send({"type": "data", "payload": "fence"})  # arrives at bob after anything bob sent earlier
    await bob.wait_event("data", 2)
    assert [e["payload"] for e in carol.of_type("data")] == ["hello all"]
    assert [e["payload"] for e in alice.of_type("data")] == ["just you", "fence"]


async def test_malformed_presence_messages_get_errors_and_keep_the_connection(
    harness: Any, make_token: MakeToken
) -> None:
    alice = await harness.presence(join_token(make_token, "err", "alice"))
    await alice.wait_event("joined")
    await alice.ws.send_str("not json")
    await alice.send({"type": "teleport"})
    await alice.send({"type": "data", "payload": 5})
    await alice.ws.send_bytes(b"\x00")
    await alice.wait_event("error", 4)
    assert {e["code"] for e in alice.of_type("error")} == {"malformed"}
    assert not alice.closed


async def test_participant_joined_and_left_events(harness: Any, make_token: MakeToken) -> None:
    alice = await harness.presence(join_token(make_token, "foyer", "alice"))
    await alice.wait_event("joined")
    bob = await harness.presence(join_token(make_token, "foyer", "bob", name="Bob"))
    joined = await bob.wait_event("joined")
    assert [p["identity"] for p in joined["participants"]] == ["alice"]
    event = await alice.wait_event("participant_joined")
    assert (event["participant"]["identity"], event["participant"]["name"]) == ("bob", "Bob")
    await bob.send({"type": "leave"})
    event = await alice.wait_event("participant_left")
    assert event["participant"]["identity"] == "bob"
    await harness.wait_for(lambda: bob.closed, what="bob's socket closed")
    assert bob.of_type("participant_left") == []


async def test_same_identity_replaces_the_old_connection(harness: Any, make_token: MakeToken) -> None:
    first = await harness.presence(join_token(make_token, "dup", "alice"))
    await first.wait_event("joined")
    second = await harness.presence(join_token(make_token, "dup", "alice"))
    await second.wait_event("joined")
    error = await first.wait_event("error")
    assert error["code"] == "already_exists"
    await harness.wait_for(lambda: first.closed, what="old connection closed")
    assert not second.closed


async def test_departure_timeout_closes_room_and_terminates_jobs(harness: Any, make_token: MakeToken) -> None:
    w = await harness.worker()
    config = api.RoomConfiguration(departure_timeout=1)
    alice = await harness.presence(join_token(make_token, "brief", "alice", room_config=config))
    [assignment] = await w.wait_assignments(1)
    job_id = assignment.job.id
    agent_presence = await harness.presence(assignment.token)  # agents do not keep the room open
    await agent_presence.wait_event("joined")
    await alice.aclose()
    await w.wait_termination(job_id)
    ended = await harness.wait_job_status(job_id, agent.JobStatus.JS_CANCELLED)
    assert ended.state.reason == agent.JobStateReason.JSR_ROOM_CLOSED
    assert (await harness.api.room.list_rooms(api.ListRoomsRequest())).rooms == []
    closed = await agent_presence.wait_event("room_closed")
    assert closed["reason"]
    await harness.wait_for(lambda: agent_presence.closed, what="agent presence closed")


async def test_a_new_participant_before_departure_timeout_keeps_the_room(
    harness: Any, make_token: MakeToken
) -> None:
    w = await harness.worker()
    # bob must join within the timeout: 5 s, so a loaded machine does not close the room first
    config = api.RoomConfiguration(departure_timeout=5)
    alice = await harness.presence(join_token(make_token, "kept", "alice", room_config=config))
    [assignment] = await w.wait_assignments(1)
    observer = await harness.presence(assignment.token)  # the agent: sees events, does not keep the room
    await observer.wait_event("joined")
    await alice.aclose()
    await observer.wait_event("participant_left")  # the room is empty of humans: its timer runs
    bob = await harness.presence(join_token(make_token, "kept", "bob"))
    await observer.wait_event("participant_joined")

    # a second room whose timer starts later: once it has closed, the first timer would have fired too
    carol = await harness.presence(join_token(make_token, "probe", "carol", room_config=config))
    await w.wait_assignments(2)
    probe_job = w.received.assignments[1].job.id
    await carol.aclose()
    await w.wait_termination(probe_job, timeout=20)

    rooms = await harness.api.room.list_rooms(api.ListRoomsRequest())
    assert [r.name for r in rooms.rooms] == ["kept"]
    assert w.received.terminations == [probe_job]
    assert observer.of_type("room_closed") == []
    assert not bob.closed


async def test_delete_room_closes_presence_connections(harness: Any, make_token: MakeToken) -> None:
    alice = await harness.presence(join_token(make_token, "gone", "alice"))
    await alice.wait_event("joined")
    await harness.api.room.delete_room(api.DeleteRoomRequest(room="gone"))
    event = await alice.wait_event("room_closed")
    assert event["reason"]
    await harness.wait_for(lambda: alice.closed, what="presence socket closed")


async def test_full_room_refuses_the_join(harness: Any, make_token: MakeToken) -> None:
    config = api.RoomConfiguration(max_participants=1)
    alice = await harness.presence(join_token(make_token, "tiny", "alice", room_config=config))
    await alice.wait_event("joined")
    bob = await harness.presence(join_token(make_token, "tiny", "bob"))
    error = await bob.wait_event("error")
    assert error["code"] == "resource_exhausted"
    await harness.wait_for(lambda: bob.closed, what="refused socket closed")
    assert bob.of_type("joined") == []
    assert alice.of_type("participant_joined") == []


async def test_a_participant_who_reconnects_keeps_its_running_job(
    harness: Any, make_token: MakeToken
) -> None:
    """Same identity, second connection: the JT_PARTICIPANT job already running for it is kept."""
    w = await harness.worker(job_type=agent.JobType.JT_PARTICIPANT)
    first = await harness.presence(join_token(make_token, "again", "alice"))
    [offer] = await w.wait_offers(1)
    assert offer.job.participant.identity == "alice"
    await w.wait_assignments(1)
    second = await harness.presence(join_token(make_token, "again", "alice"))  # same identity reconnects
    await second.wait_event("joined")
    bob = await harness.presence(join_token(make_token, "again", "bob"))
    await w.wait_offers(2)  # bob's job: the fence showing alice's rejoin was handled before it
    assert [o.job.participant.identity for o in w.received.offers] == ["alice", "bob"]
    await bob.aclose()
    await first.aclose()


async def test_the_join_log_counts_humans_not_agents(
    harness: Any, make_token: MakeToken, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="agentdispatch.server.rooms")
    bot = await harness.presence(join_token(make_token, "counted", "bot", kind="agent"))
    await bot.wait_event("joined")
    user = await harness.presence(join_token(make_token, "counted", "ann"))
    await user.wait_event("joined")
    joins = [r for r in caplog.records if r.getMessage() == "participant joined"]
    assert [(r.identity, r.humans) for r in joins] == [("bot", 0), ("ann", 1)]  # type: ignore[attr-defined]
    await user.aclose()
    await bot.aclose()


async def test_an_oversized_message_gets_too_large_and_the_socket_stays(
    harness: Any, make_token: MakeToken
) -> None:
    """1 MiB of data: not relayed, the sender is told `too_large`, and its next message still goes."""
    alice = await harness.presence(join_token(make_token, "big", "alice"))
    bob = await harness.presence(join_token(make_token, "big", "bob"))
    await alice.wait_event("joined")
    await bob.wait_event("joined")
    await alice.send({"type": "data", "payload": "x" * (1024 * 1024)})
    error = await alice.wait_event("error")
    assert error["code"] == "too_large" and "dropped" in error["msg"]
    await alice.send({"type": "data", "payload": "small"})
    data = await bob.wait_event("data")
    assert data["payload"] == "small"  # the 1 MiB message never reached bob; the small one did
    assert len(bob.of_type("data")) == 1
