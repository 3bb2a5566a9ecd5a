"""The worker endpoint `/agent`: auth, register-first, then frames into the dispatcher."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from livekit.protocol import agent, models

from ..protocol import AuthError, KeyRing, ProtocolError, bearer_token, decode_worker_message
from .session import SessionState, WorkerSession, validate_register

if TYPE_CHECKING:
    from .app import DispatchServer

log = logging.getLogger("agentdispatch.server.agent")

CLOSE_POLICY = aiohttp.WSCloseCode.POLICY_VIOLATION
CLOSE_TOO_BIG = aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def authorize_worker(request: web.Request, keys: KeyRing) -> None:
    """Raise AuthError unless the request carries a valid token with the `agent` grant."""
    token = bearer_token(request.headers, request.query)
    claims = keys.verify(token)
    if claims.video is None or not claims.video.agent:
        raise AuthError("token lacks the video grant agent=true")


class AgentEndpoint:
    def __init__(self, server: DispatchServer) -> None:
        self._server = server

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self._server.config
        ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes, heartbeat=None, autoping=True)
        if not ws.can_prepare(request).ok:
            raise web.HTTPNotFound(text="/agent accepts WebSocket upgrades only")
        try:
            authorize_worker(request, self._server.keys)
        except AuthError as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from None
        await ws.prepare(request)
        session = WorkerSession(ws, request.remote or "?")
        try:
            await self._serve(session)
        except ProtocolError as exc:
            log.warning("protocol violation, closing", extra={"worker_id": session.id, "error": str(exc)})
            await ws.close(code=CLOSE_POLICY, message=str(exc)[:120].encode())
        finally:
            await self._server.worker_disconnected(session)
            if not ws.closed:
                await ws.close()
        return ws

    async def _receive(
        self, session: WorkerSession, wait: float | None, expected: str
    ) -> agent.WorkerMessage | None:
        ws = session.ws
        try:
            frame = await ws.receive(timeout=wait)
        except TimeoutError:
            raise ProtocolError(f"{expected} not received within {wait:g}s") from None
        if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return None
        if frame.type == aiohttp.WSMsgType.ERROR:
            exc = ws.exception()
            if isinstance(exc, aiohttp.WebSocketError) and exc.code == CLOSE_TOO_BIG:
                raise ProtocolError(f"frame larger than {self._server.config.max_frame_bytes} bytes")
            return None
        if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise ProtocolError(f"unexpected frame type {frame.type.name}")
        msg, encoding = decode_worker_message(frame.data)
        session.encoding = encoding
        session.last_frame_at = self._server.clock.monotonic()
        return msg

    async def _serve(self, session: WorkerSession) -> None:
        cfg = self._server.config
        deadline = self._server.clock.monotonic() + cfg.register_timeout
        while session.state is SessionState.CONNECTED:
            expected = f"register (deadline {cfg.register_timeout:g}s)"
            remaining = deadline - self._server.clock.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"{expected} not received in time")
            msg = await self._receive(session, remaining, expected)
            if msg is None:
                return
            which = msg.WhichOneof("message")
            if which == "ping":
                await self._pong(session, msg.ping)
            elif which == "register":
                await self._register(session, msg.register)
            else:
                raise ProtocolError(f"first message must be register, got {which}")
        liveness = 3 * session.registration.ping_interval
        while True:
            msg = await self._receive(session, liveness, "any frame (liveness: 3 x ping interval)")
            if msg is None:
                return
            await self._handle(session, msg)

    async def _register(self, session: WorkerSession, req: agent.RegisterWorkerRequest) -> None:
        reg = validate_register(req, self._server.config.default_ping_interval)
        session.reg = reg
        session.transition(SessionState.REGISTERED)
        cfg = self._server.config
        info = models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version=self._server.version,
            protocol=16,
            agent_protocol=1,
            region=cfg.region,
            node_id=self._server.node_id,
        )
        await session.send(
            agent.ServerMessage(register=agent.RegisterWorkerResponse(worker_id=session.id, server_info=info))
        )
        log.info(
            "worker registered",
            extra={
                "worker_id": session.id,
                "agent_name": reg.agent_name,
                "job_type": agent.JobType.Name(reg.job_type),
                "deployment": reg.deployment,
                "version": reg.version,
            },
        )
        await self._server.worker_registered(session)

    async def _pong(self, session: WorkerSession, ping: agent.WorkerPing) -> None:
        pong = agent.WorkerPong(
            last_timestamp=ping.timestamp, timestamp=self._server.clock.wall_ns() // 1_000_000
        )
        await session.send(agent.ServerMessage(pong=pong))

    async def _handle(self, session: WorkerSession, msg: agent.WorkerMessage) -> None:
        which = msg.WhichOneof("message")
        dispatcher = self._server.dispatcher
        if which == "availability":
            await dispatcher.on_availability(session, msg.availability)
        elif which == "update_worker":
            was_eligible = session.eligible
            session.apply_status(msg.update_worker)
            self._server.registry.refresh(session)
            if session.eligible and (not was_eligible or dispatcher.pending_count):
                await dispatcher.worker_available(session)
        elif which == "update_job":
            await dispatcher.on_job_update(session, msg.update_job)
        elif which == "ping":
            await self._pong(session, msg.ping)
        elif which == "migrate_job":
            await self._server.migrate_jobs(session, msg.migrate_job)
        elif which == "simulate_job":
            await self._server.simulate_job(session, msg.simulate_job)
        elif which == "register":
            raise ProtocolError("worker is already registered")
        else:
            raise ProtocolError(f"unknown worker message {which}")
