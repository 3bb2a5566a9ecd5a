"""What creates jobs: automatic dispatch, CreateRoom agents, CreateDispatch; and what the worker receives."""

from __future__ import annotations

from typing import Any

from livekit import api
from livekit.protocol import agent

from agentdispatch.protocol import AGENT_NAME_ATTRIBUTE


async def test_room_without_agents_dispatches_unnamed_worker(harness: Any) -> None:
    unnamed = await harness.worker()
    named = await harness.worker(agent_name="named")
    created = await harness.api.room.create_room(api.CreateRoomRequest(name="auto"))
    [offer] = await unnamed.wait_offers(1)
    assert offer.job.agent_name == ""
    assert offer.job.room.name == "auto"
    assert offer.job.room.sid == created.sid
    assert offer.job.type == agent.JobType.JT_ROOM
    await unnamed.wait_assignments(1)
    await named.sync()
    assert named.received.offers == []
    [dispatch] = await harness.api.agent_dispatch.list_dispatch("auto")
    assert dispatch.agent_name == ""
    assert [j.state.worker_id for j in dispatch.state.jobs] == [unnamed.id]


async def test_automatic_dispatch_waits_for_an_unnamed_worker(harness: Any) -> None:
    await harness.api.room.create_room(api.CreateRoomRequest(name="early"))
    named = await harness.worker(agent_name="named")
    await named.sync()
    assert named.received.offers == []
    unnamed = await harness.worker()
    [assignment] = await unnamed.wait_assignments(1)
    assert assignment.job.room.name == "early"
    assert assignment.job.agent_name == ""


async def test_room_with_agents_dispatches_only_those(harness: Any) -> None:
    unnamed = await harness.worker()
    alpha = await harness.worker(agent_name="alpha")
    beta = await harness.worker(agent_name="beta")
    await harness.api.room.create_room(
        api.CreateRoomRequest(
            name="explicit", agents=[api.RoomAgentDispatch(agent_name="alpha", metadata="for-alpha")]
        )
    )
    [offer] = await alpha.wait_offers(1)
    assert offer.job.metadata == "for-alpha"
    await alpha.wait_assignments(1)
    await unnamed.sync()
    await beta.sync()
    assert unnamed.received.offers == []
    assert beta.received.offers == []
    assert [d.agent_name for d in await harness.api.agent_dispatch.list_dispatch("explicit")] == ["alpha"]


async def test_explicit_dispatch_carries_its_fields_into_the_job(harness: Any) -> None:
    w = await harness.worker(agent_name="carrier", deployment="canary")
    dispatch = await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name="carrier",
            room="fields",
            metadata='{"lang": "fr"}',
            attributes={"tier": "gold", "region": "eu"},
            deployment="canary",
        )
    )
    [offer] = await w.wait_offers(1)
    job = offer.job
    assert job.id.startswith("AJ_")
    assert job.dispatch_id == dispatch.id
    assert job.agent_name == "carrier"
    assert job.metadata == '{"lang": "fr"}'
    assert dict(job.attributes) == {"tier": "gold", "region": "eu"}
    assert job.deployment == "canary"
    assert job.room.name == "fields"
    assert job.type == agent.JobType.JT_ROOM
    assert offer.resuming is False

    [assignment] = await w.wait_assignments(1)
    assert assignment.job.id == job.id
    claims = api.TokenVerifier("devkey", "secret").verify(assignment.token)
    assert claims.video is not None
    assert (claims.video.room_join, claims.video.room, claims.video.agent) == (True, "fields", True)
    assert claims.kind == "agent"
    assert claims.identity  # server-chosen when the worker gives none
    assert claims.attributes is not None and claims.attributes[AGENT_NAME_ATTRIBUTE] == "carrier"
    assert assignment.url == harness.server.config.public_url


async def test_participant_fields_from_availability_go_into_the_token(harness: Any) -> None:
    w = await harness.worker(agent_name="ident", policy="ignore")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="ident", room="idr")
    )
    [offer] = await w.wait_offers(1)
    resp = agent.AvailabilityResponse(
        job_id=offer.job.id,
        available=True,
        participant_identity="my-agent",
        participant_name="My Agent",
        participant_metadata="meta",
        participant_attributes={"x": "y"},
    )
    await w.send(agent.WorkerMessage(availability=resp))
    [assignment] = await w.wait_assignments(1)
    claims = api.TokenVerifier("devkey", "secret").verify(assignment.token)
    assert (claims.identity, claims.name, claims.metadata) == ("my-agent", "My Agent", "meta")
    assert claims.attributes == {"x": "y", AGENT_NAME_ATTRIBUTE: "ident"}
    [job] = await harness.list_jobs("idr")
    assert job.state.participant_identity == "my-agent"


async def test_registered_permissions_go_into_the_token(harness: Any, make_token: Any) -> None:
    from agentdispatch.protocol import Encoding, decode_server_message, encode

    ws = await harness.raw_agent(make_token(agent=True))
    register = agent.RegisterWorkerRequest(
        agent_name="perm", allowed_permissions={"can_publish": False, "hidden": True}
    )
    await ws.send_bytes(encode(agent.WorkerMessage(register=register), Encoding.BINARY))
    await ws.receive(timeout=3)
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="perm", room="pr")
    )
    offer = decode_server_message((await ws.receive(timeout=3)).data).availability
    accept = agent.AvailabilityResponse(job_id=offer.job.id, available=True)
    await ws.send_bytes(encode(agent.WorkerMessage(availability=accept), Encoding.BINARY))
    assignment = decode_server_message((await ws.receive(timeout=3)).data).assignment
    video = api.TokenVerifier("devkey", "secret").verify(assignment.token).video
    assert video is not None
    assert video.can_publish is False
    assert video.hidden is True


async def test_deployment_matching(harness: Any) -> None:
    prod = await harness.worker(agent_name="dep", deployment="prod")
    canary = await harness.worker(agent_name="dep", deployment="canary")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="dep", room="d1", deployment="canary")
    )
    await canary.wait_assignments(1)
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="dep", room="d2", deployment="prod")
    )
    await prod.wait_assignments(1)
    assert [a.job.room.name for a in canary.received.assignments] == ["d1"]
    assert [a.job.room.name for a in prod.received.assignments] == ["d2"]


async def test_dispatch_for_unknown_deployment_waits(harness: Any) -> None:
    prod = await harness.worker(agent_name="dep", deployment="prod")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="dep", room="d3", deployment="staging")
    )
    await prod.sync()
    assert prod.received.offers == []
    staging = await harness.worker(agent_name="dep", deployment="staging")
    [assignment] = await staging.wait_assignments(1)
    assert assignment.job.deployment == "staging"


async def test_dispatch_without_deployment_matches_any_deployment(harness: Any) -> None:
    canary = await harness.worker(agent_name="anydep", deployment="canary")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="anydep", room="d4")
    )
    [assignment] = await canary.wait_assignments(1)
    assert assignment.job.room.name == "d4"


async def test_agent_name_and_job_type_must_match(harness: Any) -> None:
    publisher = await harness.worker(agent_name="typed", job_type=agent.JobType.JT_PUBLISHER)
    other_name = await harness.worker(agent_name="typed-2")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="typed", room="t1")
    )
    await publisher.sync()
    await other_name.sync()
    # a publisher-only worker gets no room job (the room has no publisher yet), the other name nothing at all
    assert publisher.received.offers == []
    assert other_name.received.offers == []


async def test_dispatch_into_existing_room_adds_a_job(harness: Any) -> None:
    w = await harness.worker(agent_name="second")
    await harness.api.room.create_room(
        api.CreateRoomRequest(name="existing", agents=[api.RoomAgentDispatch(agent_name="second")])
    )
    await w.wait_assignments(1)
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="second", room="existing")
    )
    await w.wait_assignments(2)
    dispatches = await harness.api.agent_dispatch.list_dispatch("existing")
    assert len(dispatches) == 2
    assert {j.state.worker_id for d in dispatches for j in d.state.jobs} == {w.id}
