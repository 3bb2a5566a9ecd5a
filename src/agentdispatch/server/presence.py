"""Room presence over WebSocket: connecting with a join token is joining, disconnecting is leaving.

Messages are JSON text frames; docs/presence.md lists them. This is how end users "connect to a
room" without media, how token dispatch and participant/publisher jobs are triggered, and how a
text agent exchanges data with users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf import json_format
from livekit import api
from livekit.protocol import models

from ..protocol import AuthError, KeyRing, TwirpError, bearer_token
from ..protocol.ids import new_participant_sid
from ..util.aio import wait_for
from .events import Event, RoomEvent, RoomEventKind
from .rooms import DispatchSpec, RoomManager, RoomSpec

log = logging.getLogger("agentdispatch.server.presence")

#: largest data message relayed; a larger one gets an `error` (code too_large) and the socket stays open
MAX_PRESENCE_FRAME = 256 * 1024
#: frames above this are not even read into memory: `error` too_large, then the socket is closed (1009)
HARD_FRAME_LIMIT = 4 * 1024 * 1024
OUTBOX_LIMIT = 1024


def to_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        room: str,
        participant: models.ParticipantInfo,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.room = room
        self.participant = participant
        self.transport = transport
        # one slot beyond the limit is kept for the closing marker, so close_soon always gets in
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_LIMIT + 1)
        self.closing = False

    def post(self, event: dict[str, Any]) -> None:
        if self.closing:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            log.warning(
                "presence client not reading, dropping it",
                extra={"room": self.room, "identity": self.participant.identity},
            )
            self.closing = True
            if self.transport is not None:
                self.transport.abort()
            return
        self.outbox.put_nowait(event)

    def close_soon(self) -> None:
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(None)

    async def writer(self) -> None:
        while True:
            event = await self.outbox.get()
            if event is None:
                await self.ws.close()
                return
            await self.ws.send_str(json.dumps(event))


def participant_from_claims(claims: api.access_token.Claims) -> models.ParticipantInfo:
    kinds = {"agent": models.ParticipantInfo.Kind.AGENT, "sip": models.ParticipantInfo.Kind.SIP}
    kind = kinds.get(claims.kind or "", models.ParticipantInfo.Kind.STANDARD)
    return models.ParticipantInfo(
        sid=new_participant_sid(),
        identity=claims.identity,
        name=claims.name,
        metadata=claims.metadata,
        attributes=dict(claims.attributes or {}),
        kind=kind,
    )


def room_spec_from_claims(room_name: str, claims: api.access_token.Claims) -> RoomSpec:
    cfg = claims.room_config
    if cfg is None:
        return RoomSpec(name=room_name)
    return RoomSpec(
        name=room_name,
        empty_timeout=cfg.empty_timeout,
        departure_timeout=cfg.departure_timeout,
        max_participants=cfg.max_participants,
        metadata=cfg.metadata,
        agents=tuple(DispatchSpec.from_room_agent(a) for a in cfg.agents),
    )


class PresenceHub:
    """Tracks presence connections per room and relays room events to them (an EventBus listener)."""

    def __init__(self, keys: KeyRing, rooms: RoomManager) -> None:
        self._keys = keys
        self._room_manager = rooms
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._closing = False

    def on_event(self, event: Event) -> None:
        if not isinstance(event, RoomEvent):
            return
        name = event.room.name
        if event.kind is RoomEventKind.ROOM_FINISHED:
            self.room_closed(name, event.detail)
        elif event.participant is None:
            return
        elif event.kind is RoomEventKind.PARTICIPANT_JOINED:
            self.participant_joined(name, event.participant)
        elif event.kind is RoomEventKind.PARTICIPANT_LEFT:
            self.participant_left(name, event.participant)

    async def close_all(self, reason: str, timeout: float) -> None:
        """Shutdown: every participant gets `room_closed` and a close frame, within `timeout`."""
        self._closing = True
        for room in list(self._rooms):
            self.room_closed(room, reason)
        writers = list(self._writers)
        if writers:
            _, late = await asyncio.wait(writers, timeout=timeout)
            for task in late:
                task.cancel()

    def participant_joined(self, room: str, participant: models.ParticipantInfo) -> None:
        self.broadcast(
            room, {"type": "participant_joined", "participant": to_dict(participant)}, participant.identity
        )

    def participant_left(self, room: str, participant: models.ParticipantInfo) -> None:
        self.broadcast(
            room, {"type": "participant_left", "participant": to_dict(participant)}, participant.identity
        )

    def room_closed(self, room: str, reason: str) -> None:
        for conn in self._rooms.pop(room, {}).values():
            conn.post({"type": "room_closed", "reason": reason})
            conn.close_soon()

    def broadcast(self, room: str, event: dict[str, Any], skip: str = "") -> None:
        for identity, conn in self._rooms.get(room, {}).items():
            if identity != skip:
                conn.post(event)

    def send_data(self, room: str, event: dict[str, Any], identities: list[str]) -> int:
        """Relay a data event from the server (RoomService.SendData); how many got it."""
        sent = 0
        for identity, conn in self._rooms.get(room, {}).items():
            if not identities or identity in identities:
                conn.post(event)
                sent += 1
        return sent

    def remove(self, room: str, identity: str, reason: str) -> bool:
        """Disconnect one participant (RoomService.RemoveParticipant); False if it is not connected here."""
        conn = self._rooms.get(room, {}).get(identity)
        if conn is None:
            return False
        conn.post({"type": "removed", "reason": reason})
        conn.close_soon()
        return True

    # endpoint ------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_LIMIT, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise web.HTTPNotFound(text="/presence accepts WebSocket upgrades only")
        if self._closing:
            raise web.HTTPServiceUnavailable(text="server shutting down")
        try:
            claims = self._keys.verify(bearer_token(request.headers, request.query))
        except AuthError as exc:
            log.warning("presence auth failed", extra={"remote": request.remote or "?", "reason": str(exc)})
            raise web.HTTPUnauthorized(text=str(exc)) from None
        video = claims.video
        if video is None or not video.room_join or not video.room:
            raise web.HTTPUnauthorized(text="token lacks the roomJoin grant for a room")
        if not claims.identity:
            raise web.HTTPUnauthorized(text="token has no identity")
        room_name = video.room
        participant = participant_from_claims(claims)
        await ws.prepare(request)
        try:
            room = await self._room_manager.join(
                room_name, participant, room_spec_from_claims(room_name, claims)
            )
        except TwirpError as exc:
            await ws.send_str(json.dumps({"type": "error", "code": exc.code, "msg": exc.msg}))
            await ws.close()
            return ws
        conn = Connection(ws, room_name, participant, request.transport)
        members = self._rooms.setdefault(room_name, {})
        old = members.pop(participant.identity, None)
        if old is not None:
            old.post({"type": "error", "code": "already_exists", "msg": "replaced by a new connection"})
            old.close_soon()
        members[participant.identity] = conn
        others = [
            to_dict(p)
            for p in await self._room_manager.participants(room_name)
            if p.identity != claims.identity
        ]
        conn.post(
            {
                "type": "joined",
                "room": to_dict(room),
                "participant": to_dict(participant),
                "participants": others,
            }
        )
        writer = asyncio.get_running_loop().create_task(
            conn.writer(), name=f"presence-writer:{participant.sid}"
        )
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        try:
            await self._read(conn)
        finally:
            if self._rooms.get(room_name, {}).get(participant.identity) is conn:
                del self._rooms[room_name][participant.identity]
                if not self._rooms[room_name]:
                    del self._rooms[room_name]
                await self._room_manager.leave(room_name, participant.identity)
            conn.close_soon()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await wait_for(writer, 5)
            if not writer.done():
                writer.cancel()
        return ws

    async def _read(self, conn: Connection) -> None:
        async for frame in conn.ws:
            if frame.type == aiohttp.WSMsgType.ERROR:
                await self._too_large(conn)
                return
            if frame.type != aiohttp.WSMsgType.TEXT:
                conn.post({"type": "error", "code": "malformed", "msg": "send JSON text frames"})
                continue
            if len(frame.data) > MAX_PRESENCE_FRAME:
                conn.post(
                    {
                        "type": "error",
                        "code": "too_large",
                        "msg": f"message of {len(frame.data)} bytes dropped (limit {MAX_PRESENCE_FRAME})",
                    }
                )
                continue
            try:
                event = json.loads(frame.data)
                kind = event["type"]
            except (ValueError, KeyError, TypeError):
                conn.post({"type": "error", "code": "malformed", "msg": "expected a JSON object with 'type'"})
                continue
            if kind == "data":
                self._relay(conn, event)
            elif kind == "publish":
                await self._room_manager.publish(conn.room, conn.participant.identity)
            elif kind == "leave":
                return
            else:
                conn.post({"type": "error", "code": "malformed", "msg": f"unknown message type {kind!r}"})

    async def _too_large(self, conn: Connection) -> None:
        """A frame over the hard limit broke the stream: say why in an `error`, then close (1009)."""
        msg = {"type": "error", "code": "too_large", "msg": f"frame over {HARD_FRAME_LIMIT} bytes; closing"}
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await wait_for(conn.ws.send_str(json.dumps(msg)), 2.0)
        log.info(
            "presence frame over the hard limit",
            extra={"room": conn.room, "identity": conn.participant.identity},
        )

    def _relay(self, conn: Connection, event: dict[str, Any]) -> None:
        payload = event.get("payload", "")
        topic = event.get("topic", "")
        targets = event.get("destination_identities") or []
        if not isinstance(payload, str) or not isinstance(topic, str) or not isinstance(targets, list):
            conn.post({"type": "error", "code": "malformed", "msg": "data needs string payload/topic"})
            return
        out = {"type": "data", "from": conn.participant.identity, "payload": payload, "topic": topic}
        for identity, other in self._rooms.get(conn.room, {}).items():
            if identity != conn.participant.identity and (not targets or identity in targets):
                other.post(out)
