"""One worker connection: an explicit state machine plus the worker's registered facts."""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass

from aiohttp import web
from livekit.protocol import agent, models

from ..protocol import Encoding, ProtocolError, encode, new_id, sanitize_load
from .scheduler import LoadState

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


@dataclass(frozen=True)
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
    if req.HasField("allowed_permissions"):
        permissions = models.ParticipantPermission()
        permissions.CopyFrom(req.allowed_permissions)
    else:
        permissions = models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
        )
    ping = float(req.ping_interval) if req.ping_interval > 0 else default_ping
    return Registration(
        agent_name=req.agent_name,
        namespace=req.namespace,
        job_type=req.type,
        deployment=deployment,
        version=req.version,
        ping_interval=ping,
        permissions=permissions,
    )


class WorkerSession:
    """A connected worker. Owned by the endpoint handler; read by the dispatcher."""

    def __init__(self, ws: web.WebSocketResponse, remote: str) -> None:
        self.ws = ws
        self.remote = remote
        self.id = new_id("AW_")
        self.state = SessionState.CONNECTED
        self.encoding = Encoding.BINARY
        self.reg: Registration | None = None
        self.load = LoadState()
        self.status = WS_AVAILABLE
        self.draining = False
        self.reported_jobs = 0
        self.offers: set[str] = set()
        self.active_jobs: set[str] = set()
        self.last_frame_at = 0.0

    def __repr__(self) -> str:
        name = self.reg.agent_name if self.reg else "?"
        return f"<WorkerSession {self.id} agent_name={name!r} {self.state.value}>"

    @property
    def registration(self) -> Registration:
        if self.reg is None:
            raise ProtocolError(f"worker {self.id} is not registered")
        return self.reg

    def transition(self, new: SessionState) -> None:
        if new not in _ALLOWED[self.state]:
            raise ProtocolError(f"illegal session transition {self.state.value} -> {new.value}")
        self.state = new

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.REGISTERED and not self.ws.closed

    @property
    def eligible(self) -> bool:
        """Can be offered new jobs: registered, reporting AVAILABLE, not draining."""
        return self.is_open and self.status == WS_AVAILABLE and not self.draining

    def apply_status(self, update: agent.UpdateWorkerStatus) -> None:
        """Apply an UpdateWorkerStatus with the load sanitised (see docs/server.md)."""
        if update.HasField("status"):
            self.status = update.status
        self.draining = update.draining
        status_only = update.load == 0.0 and (
            self.draining or (update.HasField("status") and update.status == WS_FULL)
        )
        if not status_only:
            self.load.reported = sanitize_load(update.load)
        self.load.since_report = 0
        self.reported_jobs = update.job_count
        self.load.available = self.eligible

    async def send(self, msg: agent.ServerMessage) -> bool:
        """Send one message in the worker's encoding; False if the socket is already gone."""
        if self.ws.closed:
            return False
        data = encode(msg, self.encoding)
        try:
            if isinstance(data, str):
                await self.ws.send_str(data)
            else:
                await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError) as exc:
            log.info("send to worker failed", extra={"worker_id": self.id, "error": str(exc)})
            return False
        return True
