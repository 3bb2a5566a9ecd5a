"""RoomService parity for clients that exist: livekit-api's participant calls work against our server."""

from __future__ import annotations

from typing import Any

import pytest
from livekit import api

MakeToken = Any


async def _user(harness: Any, make_token: MakeToken, room: str, identity: str) -> Any:
    token = make_token(identity=identity, room_join=True, room=room)
    client = await harness.presence(token)
    await client.wait_event("joined")
    return client


async def test_list_get_update_and_remove_participants(harness: Any, make_token: MakeToken) -> None:
    alice = await _user(harness, make_token, "rs", "alice")
    bob = await _user(harness, make_token, "rs", "bob")
    lk = harness.api.room
    listed = await lk.list_participants(api.ListParticipantsRequest(room="rs"))
    assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
    got = await lk.get_participant(api.RoomParticipantIdentity(room="rs", identity="alice"))
    assert got.identity == "alice"

    updated = await lk.update_participant(
        api.UpdateParticipantRequest(room="rs", identity="alice", metadata="vip", attributes={"tier": "gold"})
    )
    assert (updated.metadata, dict(updated.attributes)) == ("vip", {"tier": "gold"})
    event = await bob.wait_event("participant_updated")
    assert event["participant"]["identity"] == "alice" and event["participant"]["metadata"] == "vip"

    room = await lk.update_room_metadata(api.UpdateRoomMetadataRequest(room="rs", metadata="topic: demo"))
    assert room.metadata == "topic: demo"
    assert (await alice.wait_event("room_updated"))["room"]["metadata"] == "topic: demo"

    await lk.send_data(
        api.SendDataRequest(room="rs", data=b"hello", topic="news", destination_identities=["bob"])
    )
    data = await bob.wait_event("data")
    assert (data["payload"], data["topic"], data["from"]) == ("hello", "news", "")
    assert alice.of_type("data") == []

    await lk.remove_participant(api.RoomParticipantIdentity(room="rs", identity="bob"))
    assert (await bob.wait_event("removed"))["reason"]
    await harness.wait_for(lambda: bob.closed, what="bob disconnected")
    left = await alice.wait_event("participant_left")
    assert left["participant"]["identity"] == "bob"
    listed = await lk.list_participants(api.ListParticipantsRequest(room="rs"))
    assert [p.identity for p in listed.participants] == ["alice"]
    await alice.aclose()


async def test_participant_calls_need_room_admin_for_that_room(harness: Any, make_token: MakeToken) -> None:
    await _user(harness, make_token, "guarded", "carol")
    status, body = await harness.twirp(
        "livekit.RoomService/ListParticipants", {"room": "guarded"}, make_token(room_admin=True, room="other")
    )
    assert status == 403 and body["code"] == "permission_denied"
    with pytest.raises(api.TwirpError) as err:
        await harness.api.room.get_participant(api.RoomParticipantIdentity(room="guarded", identity="nobody"))
    assert err.value.code == "not_found"
    with pytest.raises(api.TwirpError) as err:
        await harness.api.room.list_participants(api.ListParticipantsRequest(room="no-such-room"))
    assert err.value.code == "not_found"
