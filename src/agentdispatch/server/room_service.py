"""The participant half of LiveKit's RoomService: list, get, remove, update participants, room metadata,
send data. Grants as LiveKit: `roomAdmin` for the request's room. Changes reach presence clients
(docs/presence.md: `participant_updated`, `room_updated`, `data`, `removed`).
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

from google.protobuf.message import Message
from livekit.protocol import models, room

from ..protocol import TwirpError
from .presence import to_dict
from .rooms import RoomManager
from .twirp import Authorize, Method, require


class PresenceRelay(Protocol):
    def broadcast(self, room: str, event: dict[str, Any], skip: str = "") -> None: ...

    def send_data(self, room: str, event: dict[str, Any], identities: list[str]) -> int: ...

    def remove(self, room: str, identity: str, reason: str) -> bool: ...


class RoomAdminService:
    def __init__(self, rooms: RoomManager, presence: PresenceRelay) -> None:
        self._rooms = rooms
        self._presence = presence

    def methods(self) -> dict[str, Method]:
        admin: Authorize = lambda req, g: require(g, admin_room=req.room)  # noqa: E731
        svc = "livekit.RoomService/"
        return {
            svc + "ListParticipants": Method(room.ListParticipantsRequest, admin, self.list_participants),
            svc + "GetParticipant": Method(room.RoomParticipantIdentity, admin, self.get_participant),
            svc + "RemoveParticipant": Method(room.RoomParticipantIdentity, admin, self.remove_participant),
            svc + "UpdateParticipant": Method(room.UpdateParticipantRequest, admin, self.update_participant),
            svc + "UpdateRoomMetadata": Method(
                room.UpdateRoomMetadataRequest, admin, self.update_room_metadata
            ),
            svc + "SendData": Method(room.SendDataRequest, admin, self.send_data),
        }

    async def _room_exists(self, name: str) -> None:
        if not await self._rooms.exists(name):
            raise TwirpError("not_found", f"room {name!r} does not exist")

    async def _participant(self, room_name: str, identity: str) -> models.ParticipantInfo:
        await self._room_exists(room_name)
        for p in await self._rooms.participants(room_name):
            if p.identity == identity:
                return p
        raise TwirpError("not_found", f"participant {identity!r} is not in room {room_name!r}")

    async def list_participants(self, req: room.ListParticipantsRequest) -> Message:
        await self._room_exists(req.room)
        return room.ListParticipantsResponse(participants=await self._rooms.participants(req.room))

    async def get_participant(self, req: room.RoomParticipantIdentity) -> Message:
        return await self._participant(req.room, req.identity)

    async def remove_participant(self, req: room.RoomParticipantIdentity) -> Message:
        await self._participant(req.room, req.identity)
        if not self._presence.remove(req.room, req.identity, "removed by the RoomService API"):
            await self._rooms.leave(req.room, req.identity)  # not connected here: just take it out
        return room.RemoveParticipantResponse()

    async def update_participant(self, req: room.UpdateParticipantRequest) -> Message:
        p = await self._participant(req.room, req.identity)
        if req.metadata:
            p.metadata = req.metadata
        if req.name:
            p.name = req.name
        if req.attributes:
            for key, value in req.attributes.items():
                if value:
                    p.attributes[key] = value
                elif key in p.attributes:
                    del p.attributes[key]  # LiveKit: an empty value deletes the attribute
        if req.HasField("permission"):
            p.permission.CopyFrom(req.permission)
        await self._rooms.save_participant(req.room, p)
        self._presence.broadcast(req.room, {"type": "participant_updated", "participant": to_dict(p)})
        return p

    async def update_room_metadata(self, req: room.UpdateRoomMetadataRequest) -> Message:
        updated = await self._rooms.set_metadata(req.room, req.metadata)
        self._presence.broadcast(req.room, {"type": "room_updated", "room": to_dict(updated)})
        return updated

    async def send_data(self, req: room.SendDataRequest) -> Message:
        await self._room_exists(req.room)
        event: dict[str, Any] = {"type": "data", "from": "", "topic": req.topic}
        try:
            event["payload"] = req.data.decode()
        except UnicodeDecodeError:
            event["payload"] = ""
            event["payload_base64"] = base64.b64encode(req.data).decode()
        self._presence.send_data(req.room, event, list(req.destination_identities))
        return room.SendDataResponse()
