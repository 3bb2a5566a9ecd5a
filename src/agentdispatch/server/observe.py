"""What an operator sees of the fleet, folded from the lifecycle events: workers, waiting jobs, recent jobs.

`FleetObserver` subscribes to the server's `EventBus` and keeps a small read model that metrics, the admin
API, the dashboard and the operator CLI read: the workers as last summarised, the jobs waiting for a worker
(per agent name, with the oldest wait), the jobs each worker runs, a ring of recently finished or running
jobs, and the dispatch latency (created -> running) of recent jobs. It never touches dispatcher state.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from livekit.protocol import agent

from ..util import Clock
from .events import (
    Event,
    JobEvent,
    JobEventKind,
    RoomEvent,
    WorkerEvent,
    WorkerEventKind,
    WorkerSummary,
)

RECENT_JOBS = 200
LATENCY_SAMPLES = 2000
#: job ids whose stage times are remembered at most (a safety bound; ended jobs are forgotten at once)
TRACKED_JOBS = 100_000

STATUS_NAMES = {
    agent.JobStatus.JS_PENDING: "pending",
    agent.JobStatus.JS_RUNNING: "running",
    agent.JobStatus.JS_SUCCESS: "success",
    agent.JobStatus.JS_FAILED: "failed",
    agent.JobStatus.JS_CANCELLED: "cancelled",
}
REASON_NAMES = {
    agent.JobStateReason.JSR_NO_CAPACITY: "no_capacity",
    agent.JobStateReason.JSR_ROOM_CLOSED: "room_closed",
    agent.JobStateReason.JSR_DISPATCH_DELETED: "dispatch_deleted",
    agent.JobStateReason.JSR_RETRYING: "retrying",
}


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "unknown")  # type: ignore[call-overload,no-any-return]


def reason_label(job: agent.Job) -> str:
    """A bounded label for why a job ended (never the free-text error)."""
    named = REASON_NAMES.get(job.state.reason)
    if named is not None:
        return str(named)
    status = job.state.status
    if status == agent.JobStatus.JS_SUCCESS:
        return "none"
    error = job.state.error.lower()
    if "no worker" in error:
        return "no_capacity"
    if "worker lost" in error:
        return "worker_lost"
    if "restart" in error:
        return "restarts_exhausted"
    if status == agent.JobStatus.JS_CANCELLED:
        return "cancelled"
    return "job_error" if status == agent.JobStatus.JS_FAILED else "none"


def worker_state(w: WorkerSummary) -> str:
    """One word for a worker: draining, unresponsive, full or available."""
    if w.draining:
        return "draining"
    if w.unresponsive:
        return "unresponsive"
    return "full" if w.status == agent.WorkerStatus.WS_FULL else "available"


def worker_dict(w: WorkerSummary) -> dict[str, Any]:
    return {
        "worker_id": w.worker_id,
        "agent_name": w.agent_name,
        "namespace": w.namespace,
        "job_type": agent.JobType.Name(w.job_type) if w.job_type in agent.JobType.values() else "",
        "deployment": w.deployment,
        "version": w.version,
        "state": worker_state(w),
        "load": round(w.load, 4),
        "projected_load": round(w.projected_load, 4),
        "draining": w.draining,
        "active_jobs": w.active_jobs,
        "pending_offers": w.pending_offers,
        "node_id": w.node_id,
        "connected_at_ms": w.connected_at_ns // 1_000_000,
    }


@dataclass
class JobTrack:
    """Stage times (server clock, seconds) of one job not yet ended."""

    job_id: str
    agent_name: str
    room: str
    created: float
    wall_created_ms: int
    waiting_since: float | None = None
    offered: float | None = None
    accepted: float | None = None
    running: float | None = None
    worker_id: str = ""
    #: the last event changed a stage time (a repeated RUNNING or ASSIGNED report does not)
    stage_changed: bool = False


@dataclass
class Waiting:
    count: int = 0
    oldest_wait: float = 0.0


class WorkerSource(Protocol):
    """The server's own list of registered workers (server.fleet), when the observer is given one."""

    def worker(self, worker_id: str) -> WorkerSummary | None:
        return next((w for w in self.workers() if w.worker_id == worker_id), None)

    def workers(self) -> list[WorkerSummary]: ...


@dataclass
class FleetObserver:
    """Read model of the fleet; feed it with `bus.subscribe(observer)`.

    Workers come from `source` (the registry's summaries, always current) when given, else from the
    last worker event of each.
    """

    clock: Clock
    node_id: str = ""
    source: WorkerSource | None = None
    _workers: dict[str, WorkerSummary] = field(default_factory=dict)
    _held: dict[str, set[str]] = field(default_factory=dict)  # worker id -> ids of the jobs it runs
    _recent: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    latencies: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    _tracks: dict[str, JobTrack] = field(default_factory=dict)
    _listeners: list[Callable[[Event, dict[str, Any]], None]] = field(default_factory=list)

    # -- feeding -----------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        listening = bool(self._listeners)  # payloads are built only for listeners and recent jobs
        payload: dict[str, Any] | None
        if isinstance(event, JobEvent):
            payload = self._on_job(event, listening)
        elif isinstance(event, WorkerEvent):
            payload = self._on_worker(event, listening)
        else:
            payload = room_dict(event) if listening else None
        if payload is not None and listening:
            for listener in tuple(self._listeners):
                listener(event, payload)

    def add_listener(self, listener: Callable[[Event, dict[str, Any]], None]) -> Callable[[], None]:
        """Called after the model took an event in, with the event as JSON-ready dict (SSE, CLI)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _on_worker(self, event: WorkerEvent, listening: bool) -> dict[str, Any] | None:
        w = event.worker
        if event.kind is WorkerEventKind.DISCONNECTED:
            self._workers.pop(w.worker_id, None)
            if not self._held.get(w.worker_id):
                self._held.pop(w.worker_id, None)
        elif self.source is None:  # with a source, workers are read from it: no copy per worker here
            self._workers[w.worker_id] = w
        if not listening:
            return None
        return {"type": "worker", "kind": event.kind.value, "detail": event.detail, "worker": worker_dict(w)}

    def _on_job(self, event: JobEvent, listening: bool) -> dict[str, Any] | None:
        job, at, kind = event.job, event.at or self.clock.monotonic(), event.kind
        track = self._tracks.get(job.id)
        if track is None and kind is not JobEventKind.ENDED and len(self._tracks) < TRACKED_JOBS:
            track = JobTrack(job.id, job.agent_name, job.room.name, at, self.clock.wall_ns() // 1_000_000)
            self._tracks[job.id] = track
        if track is not None:
            self._advance(track, kind, at, event.worker_id)
        payload = None
        remember = kind is JobEventKind.RUNNING or kind is JobEventKind.ENDED
        if listening or remember:
            payload = job_dict(job, kind.value, event.worker_id, event.detail)
            payload["latency_ms"] = None if track is None else _ms(track.running, track.created)
            if remember:
                self._remember(payload)
        if kind is JobEventKind.ENDED:
            self._tracks.pop(job.id, None)
        return payload

    def track(self, job_id: str) -> JobTrack | None:
        """Stage times of a job not yet ended (read them, never change them)."""
        return self._tracks.get(job_id)

    def _advance(self, track: JobTrack, kind: JobEventKind, at: float, worker_id: str) -> None:
        track.stage_changed = False
        if kind in (JobEventKind.CREATED, JobEventKind.QUEUED, JobEventKind.RESTARTING):
            if track.waiting_since is None:
                track.waiting_since = at
            if kind is JobEventKind.RESTARTING:  # a new placement: stage times start over
                track.created, track.offered, track.accepted, track.running = at, None, None, None
        elif kind is JobEventKind.OFFERED and track.offered is None:
            track.offered = at
        elif kind in (JobEventKind.ASSIGNED, JobEventKind.MIGRATED):
            track.stage_changed = track.accepted is None
            track.accepted = track.accepted or at
            track.waiting_since = None
            self._hold(track, worker_id)
        elif kind is JobEventKind.RUNNING and track.running is None:
            track.running = at
            track.stage_changed = True
            track.waiting_since = None
            self.latencies.append((self.clock.wall_ns() // 1_000_000, at - track.created))
        elif kind is JobEventKind.ORPHANED:
            self._hold(track, "")
        if kind in (JobEventKind.RESTARTING, JobEventKind.ENDED):
            self._hold(track, "")

    def _hold(self, track: JobTrack, worker_id: str) -> None:
        """Move the job to `worker_id`'s jobs ("" = no worker holds it)."""
        if track.worker_id:
            jobs = self._held.get(track.worker_id)
            if jobs is not None:
                jobs.discard(track.job_id)
                if not jobs and track.worker_id not in self._workers:
                    del self._held[track.worker_id]
        track.worker_id = worker_id
        if worker_id:
            self._held.setdefault(worker_id, set()).add(track.job_id)

    def _remember(self, payload: dict[str, Any]) -> None:
        self._recent.pop(payload["job_id"], None)
        self._recent[payload["job_id"]] = payload
        if len(self._recent) > RECENT_JOBS:
            self._recent.popitem(last=False)

    def recent(self) -> list[dict[str, Any]]:
        """Jobs that recently started running or ended, newest first."""
        return list(reversed(self._recent.values()))

    # -- reading -----------------------------------------------------------------------------------
    def worker(self, worker_id: str) -> WorkerSummary | None:
        """One worker now (O(1), for live patches): from the source when there is one, else as its last
        event showed it, with the jobs it holds now."""
        if self.source is not None:
            return self.source.worker(worker_id)
        w = self._workers.get(worker_id)
        if w is None:
            return None
        return replace(w, active_jobs=len(self._held.get(worker_id, ())))

    def workers(self) -> list[WorkerSummary]:
        """Registered workers: from the source when there is one, else from the events."""
        if self.source is not None:
            found = self.source.workers()
        else:
            found = [
                replace(w, active_jobs=len(self._held.get(w.worker_id, ()))) for w in self._workers.values()
            ]
        return sorted(found, key=lambda w: (w.agent_name, w.worker_id))

    def waiting(self) -> dict[str, Waiting]:
        """Jobs waiting for a worker (queued or being offered), per agent name, with the oldest wait."""
        now = self.clock.monotonic()
        out: dict[str, Waiting] = {}
        for t in self._tracks.values():
            if t.waiting_since is None:
                continue
            w = out.setdefault(t.agent_name, Waiting())
            w.count += 1
            w.oldest_wait = max(w.oldest_wait, now - t.waiting_since)
        return out

    def waiting_jobs(self) -> list[dict[str, Any]]:
        now = self.clock.monotonic()
        rows = [
            {"job_id": t.job_id, "agent_name": t.agent_name, "room": t.room, "wait_s": now - t.waiting_since}
            for t in self._tracks.values()
            if t.waiting_since is not None
        ]
        return sorted(rows, key=lambda r: -float(r["wait_s"]))

    def running(self) -> dict[str, int]:
        """Jobs assigned to a worker and not ended, per agent name."""
        out: dict[str, int] = {}
        for t in self._tracks.values():
            if t.waiting_since is None and t.accepted is not None:
                out[t.agent_name] = out.get(t.agent_name, 0) + 1
        return out

    def latency_percentiles(self, since_ms: int = 0) -> dict[str, float | None]:
        values = sorted(v for at, v in self.latencies if at >= since_ms)
        return {"p50_ms": _pct(values, 0.5), "p99_ms": _pct(values, 0.99), "samples": float(len(values))}

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard and `agentdispatch status` show, as one JSON-ready dict."""
        return {
            "node_id": self.node_id,
            "now_ms": self.clock.wall_ns() // 1_000_000,
            "workers": [worker_dict(w) for w in self.workers()],
            "waiting": {
                name: {"count": w.count, "oldest_wait_s": round(w.oldest_wait, 3)}
                for name, w in sorted(self.waiting().items())
            },
            "waiting_jobs": self.waiting_jobs()[:100],
            "running": self.running(),
            "recent_jobs": self.recent(),
            "latency": self.latency_percentiles(),
            "latency_samples": [[at, round(v * 1000, 3)] for at, v in self.latencies],
        }


def job_dict(job: agent.Job, kind: str, worker_id: str = "", detail: str = "") -> dict[str, Any]:
    return {
        "type": "job",
        "kind": kind,
        "job_id": job.id,
        "dispatch_id": job.dispatch_id,
        "agent_name": job.agent_name,
        "room": job.room.name,
        "status": status_name(job.state.status),
        "reason": reason_label(job) if kind == "ended" else "",
        "error": job.state.error,
        "detail": detail,
        "worker_id": worker_id or job.state.worker_id,
        "at_ms": (job.state.updated_at or 0) // 1_000_000,
    }


def room_dict(event: RoomEvent) -> dict[str, Any]:
    p = event.participant
    return {
        "type": "room",
        "kind": event.kind.value,
        "room": event.room.name,
        "participant": p.identity if p is not None else "",
    }


def _delta(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, later - earlier)


def _ms(later: float | None, earlier: float | None) -> float | None:
    d = _delta(later, earlier)
    return None if d is None else round(d * 1000, 3)


def _pct(values: Iterable[float], q: float) -> float | None:
    data = list(values)
    if not data:
        return None
    rank = max(0, math.ceil(q * len(data)) - 1)
    return round(data[rank] * 1000, 3)
