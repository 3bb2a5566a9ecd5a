"""What a chaos run is made of: its settings, one tracked dispatch, the kill log, and the view of a finished
run that the result is built from (so `result.py` does not import the driver)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from livekit.protocol import agent, agent_dispatch

from ...protocol import ConfigError
from .analysis import DispatchOutcome, JobView
from .fleet import Fleet
from .nodekill import NodeKillWatch
from .servers import ChaosServers
from .watch import AttemptIndex

ENDED = {"JS_SUCCESS", "JS_FAILED", "JS_CANCELLED"}


@dataclass(frozen=True)
class ChaosSettings:
    workers: int = 4
    dispatches: int = 1000
    #: share of all worker processes of the run that get SIGKILLed: kills / (workers + kills)
    kill_fraction: float = 0.2
    #: exact number of worker kills (overrides kill_fraction)
    worker_kills: int | None = None
    #: job processes to SIGKILL; None = 2% of the dispatches
    job_kills: int | None = None
    seed: int | None = None
    max_jobs: int = 4
    min_duration: float = 0.2
    max_duration: float = 2.0
    #: unfinished dispatches at most; None = workers x max_jobs
    in_flight: int | None = None
    reconnect_grace: float = 2.0
    offer_timeout: float = 2.0
    dispatch_deadline: float = 60.0
    #: seconds after the last CreateDispatch within which every dispatch must have ended
    end_timeout: float = 120.0
    poll_interval: float = 0.3
    progress_interval: float = 5.0
    #: server's restart bound (`ServerConfig.max_restarts`; not a server flag): used for cross-checks
    max_restarts: int = 3
    log_level: str = "INFO"
    #: server processes; >= 2 runs a cluster: redis-server, N nodes on Redis, haproxy in front
    nodes: int = 1
    #: SIGKILL one node (never the last) when this share of the dispatches has been created
    kill_node: bool = False
    #: with kill_node: SIGKILL the workers the node held right after it (they cannot migrate: a surviving
    #: node must re-dispatch their jobs after the reconnect grace)
    node_kill_workers: bool = False
    node_kill_at: float = 0.4

    def __post_init__(self) -> None:
        if self.workers < 1 or self.dispatches < 1 or self.max_jobs < 1:
            raise ConfigError("workers, dispatches and max_jobs must be >= 1")
        if self.nodes < 1:
            raise ConfigError(f"nodes must be >= 1, got {self.nodes}")
        if self.kill_node and self.nodes < 2:
            raise ConfigError("kill_node needs nodes >= 2 (the last node is never killed)")
        if self.node_kill_workers and not self.kill_node:
            raise ConfigError("node_kill_workers needs kill_node")
        if not 0 < self.node_kill_at < 1:
            raise ConfigError(f"node_kill_at must be in (0, 1), got {self.node_kill_at}")
        if not 0 <= self.kill_fraction < 1:
            raise ConfigError(f"kill_fraction must be in [0, 1), got {self.kill_fraction}")
        if (self.worker_kills or 0) < 0 or (self.job_kills or 0) < 0:
            raise ConfigError("kill counts must be >= 0")
        if not 0 < self.min_duration <= self.max_duration:
            raise ConfigError("need 0 < min_duration <= max_duration")
        for name in ("reconnect_grace", "offer_timeout", "dispatch_deadline", "end_timeout", "poll_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")

    @property
    def planned_worker_kills(self) -> int:
        if self.worker_kills is not None:
            return self.worker_kills
        return round(self.kill_fraction * self.workers / (1.0 - self.kill_fraction))

    @property
    def planned_job_kills(self) -> int:
        return self.job_kills if self.job_kills is not None else round(0.02 * self.dispatches)

    @property
    def window(self) -> int:
        return self.in_flight or self.workers * self.max_jobs

    def server_args(self) -> tuple[str, ...]:
        return (
            *("--reconnect-grace", f"{self.reconnect_grace:g}", "--offer-timeout", f"{self.offer_timeout:g}"),
            *("--dispatch-deadline", f"{self.dispatch_deadline:g}"),
        )


def plan_kills(settings: ChaosSettings, rng: random.Random) -> list[tuple[int, str]]:
    """(dispatches created before the kill, "worker" | "job"), in order; spread over the run."""
    d = settings.dispatches
    n = settings.planned_worker_kills
    plan = []
    for i in range(n):
        center = (i + 1) / (n + 1)
        plan.append((int(d * (center + rng.uniform(-0.25, 0.25) / (n + 1))), "worker"))
    plan.extend((int(d * rng.uniform(0.05, 0.95)), "job") for _ in range(settings.planned_job_kills))
    return sorted(plan)


@dataclass
class Track:
    """One dispatch, as the driver sees it."""

    index: int
    room: str
    #: wall time just before CreateDispatch was sent
    created_at: float = 0.0
    dispatch_id: str = ""
    create_error: str = ""
    outcome: DispatchOutcome | None = None
    done: bool = False

    def observe(self, dispatches: list[agent_dispatch.AgentDispatch]) -> None:
        found = [d for d in dispatches if d.id == self.dispatch_id] if self.dispatch_id else dispatches
        if not found:
            self.outcome = DispatchOutcome(
                self.index, self.room, self.dispatch_id, missing=True, create_error=self.create_error
            )
            self.done = True
            return
        d = found[0]
        jobs = tuple(
            JobView(j.id, agent.JobStatus.Name(j.state.status), j.state.error, j.state.worker_id)
            for j in d.state.jobs
        )
        ended = bool(jobs) and all(j.status in ENDED for j in jobs)
        self.outcome = DispatchOutcome(self.index, self.room, d.id, jobs, ended, False, self.create_error)
        self.done = ended


@dataclass
class KillLog:
    worker: list[dict[str, Any]] = field(default_factory=list)
    job: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class FinishedRun(Protocol):
    """What `result.build_result` reads of a run (`run.ChaosRun` is one)."""

    s: ChaosSettings
    seed: int
    run_dir: Path
    tracks: list[Track]
    kills: KillLog
    index: AttemptIndex
    fleet: Fleet | None
    servers: ChaosServers
    node_kill: NodeKillWatch | None
    timeline: dict[str, float]
    cpu_before: Any
    cpu_after: Any
