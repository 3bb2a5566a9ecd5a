"""The worker endpoint `/agent`: auth, register-first, then frames into the job-lifecycle owner.

The endpoint knows only what it needs (`AgentEndpointDeps`): keys, settings, clock, the dispatcher
it hands frames to, and a hook for simulate_job. It never sees the rest of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from livekit.protocol import agent, models

from ..protocol import (
    AuthError,
    KeyRing,
    ProtocolError,
    bearer_token,
    decode_worker_message,
    new_id,
)
from ..protocol.codec import Encoding
from ..protocol.ids import new_dispatch_id, new_job_id, new_room_sid
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from ..util.aio import wait_for
from .config import ServerConfig
from .connguard import HOLD_CONNECTION
from .dispatcher import Dispatcher
from .session import OutboxLimits, SessionState, WorkerSession, validate_register
from .store import StoreUnavailable
from .ws_frames import InlineFrameQueue, InlineHandler, InlineWebSocketResponse

log = logging.getLogger("agentdispatch.server.agent")

CLOSE_POLICY = aiohttp.WSCloseCode.POLICY_VIOLATION
CLOSE_TOO_BIG = aiohttp.WSCloseCode.MESSAGE_TOO_BIG
#: frames a registered worker's connection handles where they are parsed (ws_frames.py): synchronous
#: handlers only; everything else goes through the connection's task, in order
INLINE_KINDS = frozenset({"update_worker", "ping"})


@dataclass(frozen=True, slots=True)
class Decoded:
    """A frame decoded on arrival and queued for the connection's task (it is not decoded twice)."""

    msg: agent.WorkerMessage
    encoding: Encoding


def authorize_worker(request: web.Request, keys: KeyRing) -> str:
    """Raise AuthError unless the request carries a valid token with the `agent` grant; return its key."""
    token = bearer_token(request.headers, request.query)
    claims = keys.verify(token)
    if claims.video is None or not claims.video.agent:
        raise AuthError("token lacks the video grant agent=true")
    return keys.issuer(token)


class Liveness:
    """A registered worker must send a frame at least every `window` seconds.

    One timer per connection, armed for the earliest moment the window can end and re-armed from the
    last frame's time when it fires early; frames only record their arrival time. At the end of a silent
    window it cancels the connection's wait for a frame (never its handling of one), which `_receive`
    turns into the ProtocolError a per-frame timeout gave.
    """

    __slots__ = ("_timer", "expired", "last_frame_at", "loop", "task", "waiting", "window")

    def __init__(self, window: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Liveness needs a running task")
        self.task = task
        self.loop = asyncio.get_running_loop()
        self.window = window
        self.last_frame_at = self.loop.time()
        self.waiting = False
        self.expired = False
        self._timer: asyncio.TimerHandle | None = self.loop.call_at(self.last_frame_at + window, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        due = self.last_frame_at + self.window
        if now < due:  # a frame came in meanwhile: the window now ends a window after it
            self._timer = self.loop.call_at(due, self._check)
            return
        if not self.waiting:  # a frame is being handled (slowly): that is not silence; look again soon
            self._timer = self.loop.call_at(now + min(self.window, 1.0), self._check)
            return
        self._timer = None
        self.expired = True
        self.task.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(frozen=True)
class AgentEndpointDeps:
    config: ServerConfig
    keys: KeyRing
    dispatcher: Dispatcher
    node_id: str
    version: str
    clock: Clock = SYSTEM_CLOCK


class AgentEndpoint:
    def __init__(self, deps: AgentEndpointDeps) -> None:
        self._deps = deps
        self._sessions: set[WorkerSession] = set()
        #: one task per connection, serving it after the upgrade request's handler returned
        self._connections = TaskSet("agent-connection")
        self._closing = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self._deps.config
        ws = InlineWebSocketResponse(max_msg_size=cfg.max_frame_bytes, heartbeat=None, autoping=True)
        if not ws.can_prepare(request).ok:
            raise web.HTTPNotFound(text="/agent accepts WebSocket upgrades only")
        if self._closing:
            raise web.HTTPServiceUnavailable(text="server shutting down")
        try:
            api_key = authorize_worker(request, self._deps.keys)
        except AuthError as exc:
            log.warning("worker auth failed", extra={"remote": request.remote or "?", "reason": str(exc)})
            raise web.HTTPUnauthorized(text=str(exc)) from None
        await ws.prepare(request)
        limits = OutboxLimits(cfg.worker_outbox_bytes, cfg.worker_send_timeout)
        session = WorkerSession(ws, api_key, request.transport, limits, self._deps.clock.wall_ns())
        session.on_drained = lambda: self._deps.dispatcher.worker_available(session)
        self._sessions.add(session)
        # the connection is served by a task of its own; the request and its handler end now
        release: Callable[[], None] | None = request.pop(HOLD_CONNECTION, None)
        self._connections.spawn(self._connection(session, ws, release), None)
        ws.detach(request)
        return ws

    async def _connection(
        self, session: WorkerSession, ws: InlineWebSocketResponse, release: Callable[[], None] | None
    ) -> None:
        try:
            await self._serve(session, ws.frames)
        except ProtocolError as exc:
            log.warning("protocol violation, closing", extra={"worker_id": session.id, "error": str(exc)})
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=CLOSE_POLICY, message=str(exc)[:120].encode())
        finally:
            self._sessions.discard(session)
            self._disconnected(session)
            try:
                await session.stop_writer()
                if not ws.closed:
                    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                        await wait_for(ws.close(), 2.0)
            finally:
                ws.close_transport()  # aiohttp closed it when the handler returned; now it is ours
                if release is not None:
                    release()

    async def aclose(self) -> None:
        """Stop serving what is still connected (after `close_all`): cancel and wait."""
        await self._connections.aclose()

    def _disconnected(self, session: WorkerSession) -> None:
        if session.state is SessionState.CLOSED:
            return
        registered = session.state is SessionState.REGISTERED
        session.transition(SessionState.CLOSED)
        if registered:
            self._deps.dispatcher.worker_gone(session)

    async def close_all(self, reason: str, timeout: float) -> None:
        """Shutdown: tell every worker to go away (reconnect elsewhere) and close, within `timeout`."""
        self._closing = True
        go_away = agent.ServerMessage(go_away=agent.AgentHttp.GoAway(reason=reason))
        sessions = list(self._sessions)
        for session in sessions:
            session.post(go_away)

        async def close(session: WorkerSession) -> None:
            await asyncio.sleep(0)  # let the writer hand over go_away first
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                await wait_for(
                    session.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=reason.encode()[:120]),
                    timeout,
                )
            if not session.ws.closed:
                session.cut_off("did not close in time at shutdown")

        if sessions:
            await asyncio.gather(*(close(s) for s in sessions))

    async def _receive(
        self, session: WorkerSession, wait: float | None, expected: str, watchdog: Liveness | None = None
    ) -> agent.WorkerMessage | None:
        """The next frame. With a `watchdog` (registered workers) no timer is armed per frame: the
        watchdog notices silence and cancels this wait; without one, `wait` bounds it directly."""
        ws = session.ws
        try:
            if watchdog is None:
                frame = await ws.receive(timeout=wait)
            else:
                watchdog.waiting = True
                try:
                    frame = await ws.receive()
                finally:
                    watchdog.waiting = False
                    watchdog.last_frame_at = watchdog.loop.time()
        except TimeoutError:
            raise ProtocolError(f"{expected} not received within {wait:g}s") from None
        except asyncio.CancelledError:
            if watchdog is None or not watchdog.expired:
                raise
            watchdog.task.uncancel()
            raise ProtocolError(f"{expected} not received within {wait:g}s") from None
        if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return None
        if frame.type == aiohttp.WSMsgType.ERROR:
            exc = ws.exception()
            if isinstance(exc, aiohttp.WebSocketError):
                if exc.code == CLOSE_TOO_BIG:
                    raise ProtocolError(f"frame larger than {self._deps.config.max_frame_bytes} bytes")
            elif exc is not None and not isinstance(exc, ConnectionError):
                # not the peer's doing: a failure while handling a frame inline (ws_frames.py) ends here
                log.error("worker connection failed", extra={"worker_id": session.id}, exc_info=exc)
            return None
        if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise ProtocolError(f"unexpected frame type {frame.type.name}")
        if isinstance(frame.data, Decoded):
            msg, encoding = frame.data.msg, frame.data.encoding
        else:
            msg, encoding = decode_worker_message(frame.data)
        session.encoding = encoding
        return msg

    async def _serve(self, session: WorkerSession, frames: InlineFrameQueue) -> None:
        cfg = self._deps.config
        deadline = self._deps.clock.monotonic() + cfg.register_timeout
        while session.state is SessionState.CONNECTED:
            expected = f"register (deadline {cfg.register_timeout:g}s)"
            remaining = deadline - self._deps.clock.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"{expected} not received in time")
            msg = await self._receive(session, remaining, expected)
            if msg is None:
                return
            which = msg.WhichOneof("message")
            if which == "ping":
                self._pong(session, msg.ping)
            elif which == "register":
                await self._register(session, msg.register)
            else:
                raise ProtocolError(f"first message must be register, got {which}")
        liveness = 3 * session.registration.ping_interval
        watchdog = Liveness(liveness)
        frames.inline = self._inline_handler(session, frames, watchdog)
        try:
            while True:
                msg = await self._receive(
                    session, liveness, "any frame (liveness: 3 x ping interval)", watchdog
                )
                if msg is None:
                    return
                try:
                    await self._handle(session, msg)
                except StoreUnavailable as exc:
                    _frame_dropped(session, msg.WhichOneof("message"), exc)
        finally:
            frames.inline = None
            watchdog.stop()

    def _inline_handler(
        self, session: WorkerSession, frames: InlineFrameQueue, watchdog: Liveness
    ) -> InlineHandler:
        """The synchronous first look at each data frame of a registered worker (ws_frames.py)."""
        dispatcher = self._deps.dispatcher
        ws = session.ws
        #: the last status report applied in full, as received: an idle worker repeats it every 2.5 s
        last_status: bytes | str | None = None

        def inline(message: aiohttp.WSMessage) -> aiohttp.WSMessage | None:
            nonlocal last_status
            data = message.data
            # in order only while nothing earlier is queued or being handled by the task
            in_turn = watchdog.waiting and frames.empty and not ws.closed
            if in_turn and data == last_status and dispatcher.status_heartbeat(session):
                watchdog.last_frame_at = watchdog.loop.time()
                return None
            try:
                msg, encoding = decode_worker_message(data)
            except ProtocolError:
                last_status = None
                return message  # the task decodes it again and closes the connection with the reason
            which = msg.WhichOneof("message")
            if which not in INLINE_KINDS or not in_turn:
                last_status = None  # what the task applies next is not known here: no repeat until then
                return message._replace(data=Decoded(msg, encoding))
            session.encoding = encoding
            watchdog.last_frame_at = watchdog.loop.time()
            if which == "ping":
                self._pong(session, msg.ping)
                return None
            try:
                dispatcher.worker_status(session, msg.update_worker)
                last_status = data
            except StoreUnavailable as exc:
                _frame_dropped(session, which, exc)
            return None

        return inline

    async def _register(self, session: WorkerSession, req: agent.RegisterWorkerRequest) -> None:
        reg = validate_register(req, self._deps.config.default_ping_interval)
        session.reg = reg
        session.transition(SessionState.REGISTERED)
        cfg = self._deps.config
        info = models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version=self._deps.version,
            protocol=16,
            agent_protocol=1,
            region=cfg.region,
            node_id=self._deps.node_id,
        )
        session.post(
            agent.ServerMessage(register=agent.RegisterWorkerResponse(worker_id=session.id, server_info=info))
        )
        if log.isEnabledFor(logging.INFO):
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
        self._deps.dispatcher.worker_registered(session)

    def _pong(self, session: WorkerSession, ping: agent.WorkerPing) -> None:
        pong = agent.WorkerPong(
            last_timestamp=ping.timestamp, timestamp=self._deps.clock.wall_ns() // 1_000_000
        )
        session.post(agent.ServerMessage(pong=pong))

    async def _handle(self, session: WorkerSession, msg: agent.WorkerMessage) -> None:
        which = msg.WhichOneof("message")
        dispatcher = self._deps.dispatcher
        if which == "availability":
            await dispatcher.on_availability(session, msg.availability)
        elif which == "update_worker":
            dispatcher.worker_status(session, msg.update_worker)
        elif which == "update_job":
            await dispatcher.on_job_update(session, msg.update_job)
        elif which == "ping":
            self._pong(session, msg.ping)
        elif which == "migrate_job":
            await dispatcher.migrate(session, msg.migrate_job)
        elif which == "simulate_job":
            await dispatcher.simulate(simulated_job(session, msg.simulate_job), session)
        elif which == "register":
            raise ProtocolError("worker is already registered")
        else:
            raise ProtocolError(f"unknown worker message {which}")


def _frame_dropped(session: WorkerSession, frame: str | None, exc: StoreUnavailable) -> None:
    """The store is down: the worker stays connected, this frame is not applied."""
    log.warning(
        "store unavailable; worker frame not applied",
        extra={"worker_id": session.id, "frame": frame, "error": exc.msg},
    )


def simulated_job(session: WorkerSession, req: agent.SimulateJobRequest) -> agent.Job:
    """The job a simulate_job asks for: JT_PUBLISHER with a participant, else JT_ROOM."""
    reg = session.registration
    room = models.Room()
    room.CopyFrom(req.room)
    if not room.name:
        room.name = new_id("sim-")
    if not room.sid:
        room.sid = new_room_sid()
    job = agent.Job(
        id=new_job_id(),
        dispatch_id=new_dispatch_id(),
        type=agent.JobType.JT_PUBLISHER if req.HasField("participant") else agent.JobType.JT_ROOM,
        room=room,
        agent_name=reg.agent_name,
        namespace=reg.namespace,
        deployment=reg.deployment,
    )
    if req.HasField("participant"):
        job.participant.CopyFrom(req.participant)
    return job
