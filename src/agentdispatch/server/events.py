"""Lifecycle events: the one stream every job, room and worker change goes through.

The dispatcher (jobs), the room manager (rooms, participants) and the worker registry (workers)
publish here; metrics, webhooks, the dashboard, the server log and the demo subscribe. A listener
is a plain synchronous callable that must return quickly (queue work, never await a socket); a
listener that raises is logged and kept, so one broken subscriber never stalls dispatch.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from livekit.protocol import agent, models

log = logging.getLogger("agentdispatch.server.events")


class JobEventKind(enum.Enum):
    CREATED = "created"  # stored, waiting for placement (also a resumed job, with `resuming`)
    QUEUED = "queued"  # no eligible worker: waits in the queue of its worker key
    OFFERED = "offered"  # AvailabilityRequest sent to `worker_id`
    DECLINED = "declined"  # `worker_id` answered available=false
    OFFER_TIMEOUT = "offer_timeout"  # `worker_id` did not answer within the offer timeout
    ASSIGNED = "assigned"  # JobAssignment sent to `worker_id`
    RUNNING = "running"  # the worker reported JS_RUNNING
    MIGRATED = "migrated"  # a reconnected worker kept the job (migrate_job)
    ORPHANED = "orphaned"  # its worker went away; the reconnect grace runs
    RESTARTING = "restarting"  # failed or lost; offered again (resuming=true)
    ENDED = "ended"  # JS_SUCCESS / JS_FAILED / JS_CANCELLED; see job.state


class RoomEventKind(enum.Enum):
    ROOM_STARTED = "room_started"
    ROOM_FINISHED = "room_finished"
    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"


class WorkerEventKind(enum.Enum):
    REGISTERED = "registered"
    STATUS = "status"  # status, load or draining changed
    UNRESPONSIVE = "unresponsive"  # stopped answering offers; not picked until it answers again
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class JobEvent:
    kind: JobEventKind
    job: agent.Job  # the record as it is now: read it, never change it
    worker_id: str = ""
    detail: str = ""  # reason or error text, when there is one
    at: float = 0.0  # the server clock's monotonic seconds


@dataclass(frozen=True)
class RoomEvent:
    kind: RoomEventKind
    room: models.Room
    participant: models.ParticipantInfo | None = None
    at: float = 0.0
    detail: str = ""  # why a room finished


@dataclass(frozen=True)
class WorkerSummary:
    """What an observer may know of a worker (no socket, no mutable state)."""

    worker_id: str
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    status: int
    load: float  # last reported, sanitised
    projected_load: float
    draining: bool
    active_jobs: int
    pending_offers: int
    unresponsive: bool
    node_id: str
    connected_at_ns: int

    @property
    def held(self) -> int:
        """Jobs the worker holds: running plus on offer."""
        return self.active_jobs + self.pending_offers


@dataclass(frozen=True)
class WorkerEvent:
    kind: WorkerEventKind
    worker: WorkerSummary
    detail: str = ""
    at: float = 0.0


Event = JobEvent | RoomEvent | WorkerEvent
Listener = Callable[[Event], None]


class EventBus:
    """Fan-out of lifecycle events to synchronous listeners, in subscription order.

    A listener may name the event types it wants (`only=`); an event reaches only the listeners
    for its type, from a tuple built when the subscriptions change, not on every emit.
    """

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, tuple[type, ...] | None]] = []
        self._by_type: dict[type, tuple[Listener, ...]] = {}

    def subscribe(self, listener: Listener, only: tuple[type, ...] | None = None) -> Callable[[], None]:
        """Add a listener (for events of the `only` types, default all); returns its unsubscribe."""
        entry = (listener, only)
        self._listeners.append(entry)
        self._by_type.clear()

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._by_type.clear()

        return unsubscribe

    def _for(self, kind: type) -> tuple[Listener, ...]:
        listeners = tuple(fn for fn, only in self._listeners if only is None or issubclass(kind, only))
        self._by_type[kind] = listeners
        return listeners

    def emit(self, event: Event) -> None:
        listeners = self._by_type.get(type(event))
        if listeners is None:
            listeners = self._for(type(event))
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a subscriber boundary: log it, keep dispatching
                log.exception("event listener failed", extra={"event": type(event).__name__})
