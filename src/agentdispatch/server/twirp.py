"""Twirp services: RoomService and AgentDispatchService, JSON or protobuf, LiveKit grants.

Bodies are read whole (any chunking, any number of TCP segments) up to MAX_BODY_BYTES within the
body timeout; a body over the limit is refused, never truncated. Methods of LiveKit services we do
not serve answer `unimplemented`; unknown services answer `bad_route`. Other packages add methods
with `add_method` (the SIP service does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api
from livekit.protocol import agent_dispatch, room

from ..protocol import AuthError, KeyRing, TwirpError, bearer_token
from ..util import SYSTEM_CLOCK, Clock
from .idempotency import IdempotencyCache, request_key
from .rooms import DispatchSpec, RoomManager, RoomSpec
from .store import Store

log = logging.getLogger("agentdispatch.server.twirp")

MAX_BODY_BYTES = 2 * 1024 * 1024
#: LiveKit services whose other methods answer `unimplemented` (not `bad_route`)
KNOWN_SERVICES = (
    "livekit.RoomService",
    "livekit.AgentDispatchService",
    "livekit.SIP",
    "livekit.Egress",
    "livekit.Ingress",
)
JSON = "application/json"
PROTOBUF = "application/protobuf"

Grants = api.VideoGrants
Handler = Callable[[Any], Awaitable[Message]]
Authorize = Callable[[Any, Grants], None]


@dataclass(frozen=True)
class Method:
    request_type: type[Message]
    authorize: Authorize
    handler: Handler
    #: a repeated request id replays the first answer instead of acting twice
    idempotent: bool = False


def twirp_error(err: TwirpError) -> web.Response:
    return web.json_response({"code": err.code, "msg": err.msg}, status=err.status)


def require(
    grants: Grants, *, create: bool = False, list_: bool = False, admin_room: str | None = None
) -> None:
    if create and not grants.room_create:
        raise TwirpError("permission_denied", "requires the roomCreate grant")
    if list_ and not grants.room_list:
        raise TwirpError("permission_denied", "requires the roomList grant")
    if admin_room is not None:
        if not grants.room_admin:
            raise TwirpError("permission_denied", "requires the roomAdmin grant")
        if grants.room != admin_room:
            raise TwirpError("permission_denied", f"token grants room {grants.room!r}, not {admin_room!r}")


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body (chunked or not), or TwirpError if it is over `limit` or too slow."""
    length = request.content_length
    if length is not None and length > limit:
        raise TwirpError("malformed", f"body larger than {limit} bytes")
    content = request.content
    if length is not None and content.is_eof():  # the usual small body: all here already, no timer needed
        body = content.read_nowait(-1)
        if len(body) != length:
            raise TwirpError("malformed", f"body ended after {len(body)} of {length} bytes")
        return body
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise TwirpError("malformed", f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise TwirpError("deadline_exceeded", f"request body not received within {timeout:g}s") from None
    if request.content_length is not None and total != request.content_length:
        raise TwirpError("malformed", f"body ended after {total} of {request.content_length} bytes")
    return b"".join(chunks)


class TwirpServices:
    def __init__(
        self,
        keys: KeyRing,
        rooms: RoomManager,
        store: Store,
        body_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._keys = keys
        self._rooms = rooms
        self._body_timeout = body_timeout
        self._replays = IdempotencyCache(store, clock=clock)
        rooms_create: Authorize = lambda req, g: require(g, create=True)  # noqa: E731
        rooms_list: Authorize = lambda req, g: require(g, list_=True)  # noqa: E731
        room_admin: Authorize = lambda req, g: require(g, admin_room=req.room)  # noqa: E731
        self._methods: dict[str, Method] = {
            "livekit.RoomService/CreateRoom": Method(room.CreateRoomRequest, rooms_create, self.create_room),
            "livekit.RoomService/ListRooms": Method(room.ListRoomsRequest, rooms_list, self.list_rooms),
            "livekit.RoomService/DeleteRoom": Method(room.DeleteRoomRequest, rooms_create, self.delete_room),
            "livekit.AgentDispatchService/CreateDispatch": Method(
                agent_dispatch.CreateAgentDispatchRequest, room_admin, self.create_dispatch, idempotent=True
            ),
            "livekit.AgentDispatchService/DeleteDispatch": Method(
                agent_dispatch.DeleteAgentDispatchRequest, room_admin, self.delete_dispatch
            ),
            "livekit.AgentDispatchService/ListDispatch": Method(
                agent_dispatch.ListAgentDispatchRequest, room_admin, self.list_dispatch
            ),
        }

    def add_method(self, path: str, method: Method) -> None:
        """Serve one more Twirp method, e.g. "livekit.SIP/CreateSIPInboundTrunk"."""
        if path in self._methods:
            raise ValueError(f"Twirp method {path} is already served")
        self._methods[path] = method

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/twirp/{service}/{method}", self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except TwirpError as err:
            return twirp_error(err)

    async def _handle(self, request: web.Request) -> web.Response:
        path = f"{request.match_info['service']}/{request.match_info['method']}"
        method = self._methods.get(path)
        if method is None:
            if request.match_info["service"] in KNOWN_SERVICES:
                log.info("unimplemented Twirp method called", extra={"path": path})
                raise TwirpError("unimplemented", f"{path} is not served by agentdispatch")
            log.info("unknown Twirp route", extra={"path": path})
            raise TwirpError("bad_route", f"no such method {path}")
        if request.method != "POST":
            raise TwirpError("bad_route", f"{path} accepts POST only, got {request.method}")
        try:
            claims = self._keys.verify(bearer_token(request.headers, request.query))
        except AuthError as exc:
            log.warning(
                "api auth failed", extra={"path": path, "remote": request.remote or "?", "reason": str(exc)}
            )
            raise TwirpError("unauthenticated", str(exc)) from None
        grants = claims.video or Grants()
        content_type = request.content_type
        if content_type not in (JSON, PROTOBUF):
            raise TwirpError("bad_route", f"unsupported content type {content_type!r}")
        body = await read_body(request, MAX_BODY_BYTES, self._body_timeout)
        req = method.request_type()
        try:
            if content_type == JSON:
                json_format.Parse(body.decode() if body else "{}", req, ignore_unknown_fields=True)
            else:
                req.ParseFromString(body)
        except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            raise TwirpError("malformed", f"cannot decode {req.DESCRIPTOR.name}: {exc}") from None
        method.authorize(req, grants)  # before any replay: a cached answer is no way around grants
        key = None
        if method.idempotent:
            # scoped to the room: only callers already allowed in that room can ever share an answer
            key = request_key(f"{path}|{getattr(req, 'room', '')}", request.headers)
        resp = await self._replays.run(key, lambda: method.handler(req))
        if content_type == JSON:
            text = json_format.MessageToJson(resp, indent=None, preserving_proto_field_name=True)
            return web.Response(text=text, content_type=JSON)
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)

    # -- RoomService -----------------------------------------------------------------------------
    async def create_room(self, req: room.CreateRoomRequest) -> Message:
        spec = RoomSpec(
            name=req.name,
            empty_timeout=req.empty_timeout,
            departure_timeout=req.departure_timeout,
            max_participants=req.max_participants,
            metadata=req.metadata,
            agents=tuple(DispatchSpec.from_room_agent(a) for a in req.agents),
        )
        created, _ = await self._rooms.create_room(spec)
        return created

    async def list_rooms(self, req: room.ListRoomsRequest) -> Message:
        return room.ListRoomsResponse(rooms=await self._rooms.list_rooms(list(req.names)))

    async def delete_room(self, req: room.DeleteRoomRequest) -> Message:
        await self._rooms.delete_room(req.room)
        return room.DeleteRoomResponse()

    # -- AgentDispatchService --------------------------------------------------------------------
    async def create_dispatch(self, req: agent_dispatch.CreateAgentDispatchRequest) -> Message:
        spec = DispatchSpec(
            agent_name=req.agent_name,
            metadata=req.metadata,
            deployment=req.deployment,
            attributes=dict(req.attributes),
            restart_policy=req.restart_policy,
        )
        return await self._rooms.create_dispatch(req.room, spec)

    async def delete_dispatch(self, req: agent_dispatch.DeleteAgentDispatchRequest) -> Message:
        return await self._rooms.delete_dispatch(req.room, req.dispatch_id)

    async def list_dispatch(self, req: agent_dispatch.ListAgentDispatchRequest) -> Message:
        dispatches = await self._rooms.list_dispatches(req.room, req.dispatch_id)
        return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=dispatches)
