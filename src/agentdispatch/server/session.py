"""One worker connection: an explicit state machine, the worker's registered facts, and its outbox.

Nothing awaits a worker's socket except the session's own writer task: `post()` queues a frame and
returns at once, so a worker that stops reading can never stall a Twirp call or another worker.
Over its byte budget a worker gets no new offers until its outbox drains; a worker whose socket does
not take a frame within the send timeout, or whose outbox reaches four times the budget, is
disconnected with a reason (its offers then go elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from livekit.protocol import agent, models

from ..protocol import Encoding, ProtocolError, encode
from ..protocol.ids import new_worker_id
from .load_state import LoadState
from .ws_frames import InlineWebSocketResponse

log = logging.getLogger("agentdispatch.server.session")

_DEPLOYMENT_BAD = re.compile(r"[_\s\x00-\x1f\x7f]")
MAX_DEPLOYMENT_BYTES = 64
MAX_NAME_BYTES = 256

WorkerKey = tuple[str, str, int, str]
WS_AVAILABLE = agent.WorkerStatus.WS_AVAILABLE
WS_FULL = agent.WorkerStatus.WS_FULL
ANY_DEPLOYMENT = "*"


class SessionState(enum.Enum):
    CONNECTED = "connected"
    REGISTERED = "registered"
    CLOSED = "closed"


_ALLOWED = {
    SessionState.CONNECTED: {SessionState.REGISTERED, SessionState.CLOSED},
    SessionState.REGISTERED: {SessionState.CLOSED},
    SessionState.CLOSED: set(),
}


@dataclass(frozen=True, slots=True)
class Registration:
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    ping_interval: float
    permissions: models.ParticipantPermission

    def worker_keys(self) -> tuple[WorkerKey, WorkerKey]:
        """The exact key and the any-deployment key this worker is found under."""
        return (
            (self.agent_name, self.namespace, self.job_type, self.deployment),
            (self.agent_name, self.namespace, self.job_type, ANY_DEPLOYMENT),
        )

    def index_keys(self) -> tuple[WorkerKey, ...]:
        """The keys a job can look this worker up by (`job_key`): a job names a deployment or none
        (`*`), so a worker without a deployment is found under `*` only, and needs one index entry."""
        if self.deployment in ("", ANY_DEPLOYMENT):
            return ((self.agent_name, self.namespace, self.job_type, ANY_DEPLOYMENT),)
        return self.worker_keys()


#: what a worker may do in its job's room when it does not say (shared by those workers: never mutate
#: a Registration's permissions)
DEFAULT_PERMISSIONS = models.ParticipantPermission(
    can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
)


def job_key(job: agent.Job) -> WorkerKey:
    return (job.agent_name, job.namespace, job.type, job.deployment or ANY_DEPLOYMENT)


def validate_register(req: agent.RegisterWorkerRequest, default_ping: float) -> Registration:
    """Check a RegisterWorkerRequest as LiveKit does; raise ProtocolError naming the bad field."""
    if req.type not in agent.JobType.values():
        raise ProtocolError(f"register: unknown job type {req.type}")
    deployment = req.deployment
    if len(deployment.encode()) > MAX_DEPLOYMENT_BYTES:
        raise ProtocolError(f"register: deployment longer than {MAX_DEPLOYMENT_BYTES} bytes")
    if _DEPLOYMENT_BAD.search(deployment):
        raise ProtocolError("register: deployment must not contain '_', whitespace or control characters")
    if len(req.agent_name.encode()) > MAX_NAME_BYTES:
        raise ProtocolError(f"register: agent_name longer than {MAX_NAME_BYTES} bytes")
    permissions = DEFAULT_PERMISSIONS
    if req.HasField("allowed_permissions") and req.allowed_permissions != DEFAULT_PERMISSIONS:
        permissions = models.ParticipantPermission()
        permissions.CopyFrom(req.allowed_permissions)
    ping = float(req.ping_interval) if req.ping_interval > 0 else default_ping
    # a fleet registers the same few names thousands of times: one copy of each string, not one a worker
    return Registration(
        agent_name=sys.intern(req.agent_name),
        namespace=sys.intern(req.namespace),
        job_type=req.type,
        deployment=sys.intern(deployment),
        version=sys.intern(req.version),
        ping_interval=ping,
        permissions=permissions,
    )


#: frames up to this size cannot fill an empty transport buffer past its high-water mark (64 KiB)
SMALL_FRAME = 16 * 1024


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    #: bytes queued for one worker above which it gets no new offers (x4: it is disconnected)
    max_bytes: int = 8 * 1024 * 1024
    #: seconds one frame may take to be handed to the socket before the worker is disconnected
    send_timeout: float = 10.0


class WorkerSession:
    """A connected worker. The endpoint owns the connection; the registry owns `load`.

    One per connection, so slots (issue 12, P4: server memory per idle worker)."""

    __slots__ = (
        "_limits",
        "_queue",
        "_queued_bytes",
        "_transport",
        "_writer",
        "api_key",
        "close_reason",
        "connected_at_ns",
        "draining",
        "encoding",
        "id",
        "load",
        "on_drained",
        "reg",
        "state",
        "status",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        api_key: str = "",
        transport: asyncio.Transport | None = None,
        limits: OutboxLimits = OutboxLimits(),
        connected_at_ns: int = 0,
    ) -> None:
        self.ws = ws
        self.api_key = sys.intern(api_key)  # the same few keys for the whole fleet
        self.id = new_worker_id()
        self.state = SessionState.CONNECTED
        self.encoding = Encoding.BINARY
        self.reg: Registration | None = None
        self.load = LoadState()  # the registry's record of this worker, kept here for O(1) access
        self.status = WS_AVAILABLE
        self.draining = False
        self.connected_at_ns = connected_at_ns
        self.close_reason = ""
        self._transport = transport
        self._limits = limits
        # frames not yet handed to the socket; a task drains them while there are any (none when idle)
        self._queue: deque[bytes | str] | None = None
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        #: called when the outbox drains back under its budget (the dispatcher offers waiting jobs)
        self.on_drained: Callable[[], None] | None = None

    def __repr__(self) -> str:
        name = self.reg.agent_name if self.reg else "?"
        return f"<WorkerSession {self.id} agent_name={name!r} {self.state.value}>"

    @property
    def registration(self) -> Registration:
        if self.reg is None:
            raise ProtocolError(f"worker {self.id} is not registered")
        return self.reg

    @property
    def offers(self) -> frozenset[str]:
        return frozenset(self.load.offers)

    @property
    def active_jobs(self) -> frozenset[str]:
        return frozenset(self.load.jobs)

    def transition(self, new: SessionState) -> None:
        if new not in _ALLOWED[self.state]:
            raise ProtocolError(f"illegal session transition {self.state.value} -> {new.value}")
        self.state = new

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.REGISTERED and not self.ws.closed and not self.close_reason

    # -- outbox ----------------------------------------------------------------------------------
    def post(self, msg: agent.ServerMessage) -> bool:
        """Queue one message in the worker's encoding; False if the worker is gone or cut off."""
        if self.ws.closed or self.close_reason:
            return False
        data = encode(msg, self.encoding)
        size = len(data)
        hard = 4 * self._limits.max_bytes
        if self._queued_bytes and self._queued_bytes + size > hard:
            self.cut_off(f"outbound queue over {hard} bytes: worker is not reading")
            return False
        if self._queue is None:
            # nothing of ours queued or being sent: a small frame the socket takes at once is written
            # here, without a writer task and a loop turn per frame
            if self._writer is None and self._cannot_block(size) and self._write_now(data):
                return True
            self._queue = deque()
        self._queue.append(data)
        self._queued_bytes += size
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain(), name=f"writer:{self.id}")
        return True

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def backpressured(self) -> bool:
        """Over its outbox budget: no new offers until the writer catches up."""
        return self._queued_bytes > self._limits.max_bytes

    async def _drain(self) -> None:
        """Hand queued frames to the socket, one at a time, in order; ends when the queue is empty.

        An idle worker has no writer task and no queue (an idle fleet of 50,000 costs no task each)."""
        queue = self._queue
        try:
            while queue and not self.ws.closed and not self.close_reason:
                data = queue.popleft()
                self._queued_bytes -= len(data)
                try:
                    if self._cannot_block(len(data)):
                        await self._send(data)
                    else:
                        # asyncio.timeout, not wait_for: wait_for wraps every frame in a new Task
                        async with asyncio.timeout(self._limits.send_timeout):
                            await self._send(data)
                except TimeoutError:
                    self.cut_off(
                        f"socket took no frame for {self._limits.send_timeout:g}s: worker is not reading"
                    )
                except (ConnectionError, RuntimeError) as exc:
                    log.info("send to worker failed", extra={"worker_id": self.id, "error": str(exc)})
                    return
        finally:
            self._writer = None
            if queue is not None and not queue:
                self._queue = None

    async def stop_writer(self) -> None:
        """The connection ended: stop handing frames to it."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _cannot_block(self, size: int) -> bool:
        """Nothing is waiting in the transport's buffer and the frame is small: the socket takes it at
        once and aiohttp's drain returns without waiting, so the send needs no timer."""
        transport = self._transport
        return transport is not None and size <= SMALL_FRAME and transport.get_write_buffer_size() == 0

    def _write_now(self, data: bytes | str) -> bool:
        ws = self.ws
        return isinstance(ws, InlineWebSocketResponse) and ws.write_now(data)

    async def _send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    def cut_off(self, reason: str) -> None:
        """Drop a worker that does not take its frames: abort the TCP connection (no close handshake
        could get through a full buffer); the endpoint then runs the usual disconnect path."""
        if self.close_reason:
            return
        self.close_reason = reason
        log.warning("disconnecting worker", extra={"worker_id": self.id, "reason": reason})
        if self._queue is not None:
            self._queue.clear()
        self._queued_bytes = 0
        if self._transport is not None:
            self._transport.abort()
