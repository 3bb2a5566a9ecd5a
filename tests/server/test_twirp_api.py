"""Twirp APIs through the real livekit-api client and as raw JSON: results, grants and error shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from livekit import api

MakeToken = Callable[..., str]
CREATE = "livekit.AgentDispatchService/CreateDispatch"
LIST = "livekit.AgentDispatchService/ListDispatch"
DELETE = "livekit.AgentDispatchService/DeleteDispatch"


def admin(make_token: MakeToken, room: str) -> str:
    return make_token(room_admin=True, room=room)


# -- livekit-api client ---------------------------------------------------------------------------------
async def test_create_list_delete_with_livekit_api(harness: Any, lkapi: api.LiveKitAPI) -> None:
    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="bot", room="r1", metadata="m1", attributes={"k": "v"})
    )
    assert created.id.startswith("AD_")
    assert (created.agent_name, created.room, created.metadata) == ("bot", "r1", "m1")
    assert dict(created.attributes) == {"k": "v"}
    assert created.state.created_at > 0

    listed = await lkapi.agent_dispatch.list_dispatch("r1")
    assert [d.id for d in listed] == [created.id]
    assert len(listed[0].state.jobs) == 1  # queued: no worker yet, but the job exists
    got = await lkapi.agent_dispatch.get_dispatch(created.id, "r1")
    assert got is not None and got.id == created.id

    deleted = await lkapi.agent_dispatch.delete_dispatch(created.id, "r1")
    assert deleted.id == created.id
    assert deleted.state.deleted_at > 0
    rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
    assert [r.name for r in rooms.rooms] == ["r1"]  # CreateDispatch auto-created the room


async def test_livekit_api_errors_are_twirp_errors(lkapi: api.LiveKitAPI) -> None:
    with pytest.raises(api.TwirpError) as info:
        await lkapi.agent_dispatch.delete_dispatch("AD_missing", "nowhere")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    with pytest.raises(api.TwirpError) as info:
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="x", room=""))
    assert info.value.code == "invalid_argument"


async def test_room_service_with_livekit_api(lkapi: api.LiveKitAPI) -> None:
    room = await lkapi.room.create_room(api.CreateRoomRequest(name="lobby", metadata="md", empty_timeout=60))
    assert room.sid.startswith("RM_")
    assert (room.name, room.metadata, room.empty_timeout) == ("lobby", "md", 60)
    again = await lkapi.room.create_room(api.CreateRoomRequest(name="lobby"))
    assert again.sid == room.sid  # idempotent by name
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["lobby", "absent"]))
    assert [r.name for r in listed.rooms] == ["lobby"]
    await lkapi.room.delete_room(api.DeleteRoomRequest(room="lobby"))
    assert (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms == []
    with pytest.raises(api.TwirpError) as info:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="lobby"))
    assert info.value.code == "not_found"


# -- raw JSON -----------------------------------------------------------------------------------------------
async def test_create_list_delete_with_raw_json(harness: Any, make_token: MakeToken) -> None:
    token = admin(make_token, "raw")
    status, body = await harness.twirp(
        CREATE, {"room": "raw", "agent_name": "bot", "metadata": "m", "attributes": {"a": "b"}}, token
    )
    assert status == 200
    assert body["agent_name"] == "bot"
    assert body["id"].startswith("AD_")
    dispatch_id = body["id"]
    # camelCase field names (protobuf JSON) are accepted as well
    status, body = await harness.twirp(CREATE, {"room": "raw", "agentName": "bot2"}, token)
    assert (status, body["agent_name"]) == (200, "bot2")

    status, body = await harness.twirp(LIST, {"room": "raw"}, token)
    assert status == 200
    assert [d["agent_name"] for d in body["agent_dispatches"]] == ["bot", "bot2"]
    status, body = await harness.twirp(LIST, {"room": "raw", "dispatch_id": dispatch_id}, token)
    assert [d["id"] for d in body["agent_dispatches"]] == [dispatch_id]

    status, body = await harness.twirp(DELETE, {"room": "raw", "dispatch_id": dispatch_id}, token)
    assert status == 200
    assert body["id"] == dispatch_id
    assert int(body["state"]["deleted_at"]) > 0


async def test_token_in_query_parameter(harness: Any, make_token: MakeToken) -> None:
    url = f"{harness.server.url}/twirp/{LIST}?access_token={admin(make_token, 'q')}"
    async with harness.http.post(
        url, data='{"room": "q"}', headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {}  # empty list: no fields in protobuf JSON


async def test_protobuf_content_type(harness: Any, make_token: MakeToken) -> None:
    req = api.CreateAgentDispatchRequest(agent_name="pb", room="pb-room")
    status, raw = await harness.twirp(
        CREATE, req.SerializeToString(), admin(make_token, "pb-room"), "application/protobuf"
    )
    assert status == 200
    assert api.AgentDispatch.FromString(raw).agent_name == "pb"


# -- auth ------------------------------------------------------------------------------------------
async def test_no_token_is_unauthenticated(harness: Any) -> None:
    for method in (CREATE, LIST, DELETE, "livekit.RoomService/ListRooms"):
        status, body = await harness.twirp(method, {"room": "r"}, None)
        assert status == 401
        assert body["code"] == "unauthenticated"
        assert body["msg"]


@pytest.mark.parametrize(
    "token_kwargs",
    [
        {"secret": "wrong", "room_admin": True, "room": "r"},
        {"ttl": -60, "room_admin": True, "room": "r"},
        {"key": "nokey", "secret": "secret", "room_admin": True, "room": "r"},
        {"algorithm": "none", "room_admin": True, "room": "r"},
    ],
    ids=["wrong-secret", "expired", "unknown-key", "alg-none"],
)
async def test_bad_token_is_unauthenticated(
    harness: Any, make_token: MakeToken, token_kwargs: dict[str, Any]
) -> None:
    status, body = await harness.twirp(CREATE, {"room": "r", "agent_name": "x"}, make_token(**token_kwargs))
    assert (status, body["code"]) == (401, "unauthenticated")
    assert await harness.server.rooms.list_rooms([]) == []


async def test_livekit_api_with_wrong_secret(harness: Any) -> None:
    wrong = api.LiveKitAPI(
        harness.server.url, "devkey", "not-the-secret", session=harness.http, failover=False
    )
    with pytest.raises(api.TwirpError) as info:
        await wrong.agent_dispatch.list_dispatch("r")
    assert (info.value.code, info.value.status) == ("unauthenticated", 401)


@pytest.mark.parametrize("method", [CREATE, LIST, DELETE])
async def test_token_for_another_room_is_denied(harness: Any, make_token: MakeToken, method: str) -> None:
    status, body = await harness.twirp(
        method, {"room": "victim", "agent_name": "x", "dispatch_id": "AD_x"}, admin(make_token, "mine")
    )
    assert (status, body["code"]) == (403, "permission_denied")


@pytest.mark.parametrize(
    "grants",
    [
        {"room": "r"},
        {"room_join": True, "room": "r", "identity": "u"},
        {"room_create": True, "room_list": True, "room": "r"},
        {"agent": True},
    ],
    ids=["room-only", "join", "create+list", "agent"],
)
async def test_dispatch_requires_room_admin(
    harness: Any, make_token: MakeToken, grants: dict[str, Any]
) -> None:
    status, body = await harness.twirp(CREATE, {"room": "r", "agent_name": "x"}, make_token(**grants))
    assert (status, body["code"]) == (403, "permission_denied")
    assert "roomAdmin" in body["msg"]


async def test_room_service_grants(harness: Any, make_token: MakeToken) -> None:
    create = "livekit.RoomService/CreateRoom"
    listing = "livekit.RoomService/ListRooms"
    delete = "livekit.RoomService/DeleteRoom"
    lister = make_token(room_list=True)
    creator = make_token(room_create=True)

    status, body = await harness.twirp(create, {"name": "g"}, lister)
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = await harness.twirp(create, {"name": "g"}, make_token(room_admin=True, room="g"))
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = await harness.twirp(create, {"name": "g"}, creator)
    assert (status, body["name"]) == (200, "g")

    status, body = await harness.twirp(listing, {}, creator)
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = await harness.twirp(listing, {}, lister)
    assert status == 200
    assert [r["name"] for r in body["rooms"]] == ["g"]

    status, body = await harness.twirp(delete, {"room": "g"}, lister)
    assert (status, body["code"]) == (403, "permission_denied")
    status, _ = await harness.twirp(delete, {"room": "g"}, creator)
    assert status == 200


# -- malformed requests ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/json"),
        ("null", "application/json"),
        ("123", "application/json"),
        ('{"room": 5}', "application/json"),
        ('{"room": "r", "attributes": {"k": 1}}', "application/json"),
        ('"\\ud800"', "application/json"),
        (b"\xff\xfe\xfd", "application/json"),
        (b"\xff\xff\xff\xff", "application/protobuf"),
        ("[" * 50_000, "application/json"),
    ],
    ids=[
        "truncated",
        "null",
        "number",
        "wrong-type",
        "map-value-type",
        "lone-surrogate",
        "not-utf8",
        "bad-protobuf",
        "deep-nesting",
    ],
)
async def test_malformed_body_is_a_twirp_error(
    harness: Any, make_token: MakeToken, body: str | bytes, content_type: str
) -> None:
    status, answer = await harness.twirp(CREATE, body, admin(make_token, "r"), content_type)
    assert 400 <= status < 500
    assert isinstance(answer, dict)
    assert set(answer) == {"code", "msg"}
    assert answer["code"] in ("malformed", "invalid_argument")


async def test_oversized_body_is_rejected(harness: Any, make_token: MakeToken) -> None:
    body = '{"room": "r", "metadata": "' + "x" * (2 * 1024 * 1024 + 10) + '"}'
    status, answer = await harness.twirp(CREATE, body, admin(make_token, "r"))
    assert 400 <= status < 500
    assert isinstance(answer, dict) and "code" in answer
    assert await harness.api.agent_dispatch.list_dispatch("r") == []  # nothing half-created


async def test_unsupported_content_type(harness: Any, make_token: MakeToken) -> None:
    status, body = await harness.twirp(
        CREATE, "room=r", admin(make_token, "r"), "application/x-www-form-urlencoded"
    )
    assert status == 404
    assert body["code"] == "bad_route"


@pytest.mark.parametrize(
    "method",
    ["livekit.NoService/CreateDispatch", "other.RoomService/ListRooms"],
)
async def test_unknown_service_is_bad_route(harness: Any, make_token: MakeToken, method: str) -> None:
    status, body = await harness.twirp(method, {}, admin(make_token, "r"))
    assert status == 404
    assert body["code"] == "bad_route"
    assert body["msg"]


@pytest.mark.parametrize(
    "method",
    [
        "livekit.AgentDispatchService/Nope",
        "livekit.RoomService/MutePublishedTrack",
        "livekit.Egress/StartRoomCompositeEgress",
    ],
)
async def test_method_of_a_livekit_service_we_do_not_serve_is_unimplemented(
    harness: Any, make_token: MakeToken, method: str
) -> None:
    status, body = await harness.twirp(method, {}, admin(make_token, "r"))
    assert status == 501
    assert body["code"] == "unimplemented"
    assert "not served" in body["msg"]


async def test_wrong_http_method_is_a_twirp_bad_route(harness: Any, make_token: MakeToken) -> None:
    headers = {"Authorization": f"Bearer {make_token(room_list=True)}"}
    async with harness.http.get(
        f"{harness.server.url}/twirp/livekit.RoomService/ListRooms", headers=headers
    ) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["code"] == "bad_route"


# -- idempotency keys must not cross rooms or grants -----------------------------------------------------
async def test_replayed_request_id_is_still_authorised(harness: Any, make_token: MakeToken) -> None:
    victim = await harness.twirp_with_headers(
        CREATE,
        {"room": "victim", "agent_name": "x", "metadata": "secret"},
        admin(make_token, "victim"),
        "k-1",
    )
    assert victim[0] == 200
    # another tenant, allowed only in "mine", reuses the request id with the victim's room
    status, body = await harness.twirp_with_headers(
        CREATE, {"room": "victim", "agent_name": "x"}, admin(make_token, "mine"), "k-1"
    )
    assert (status, body.get("code")) == (403, "permission_denied"), body


async def test_replayed_request_id_never_answers_with_another_rooms_dispatch(
    harness: Any, make_token: MakeToken
) -> None:
    status, _ = await harness.twirp_with_headers(
        CREATE, {"room": "room-a", "agent_name": "x"}, admin(make_token, "room-a"), "k-2"
    )
    assert status == 200
    status, second = await harness.twirp_with_headers(
        CREATE, {"room": "room-b", "agent_name": "x"}, admin(make_token, "room-b"), "k-2"
    )
    # either a new dispatch in room-b or a refusal; never room-a's dispatch handed to room-b's admin
    assert not (status == 200 and second["room"] != "room-b"), second
