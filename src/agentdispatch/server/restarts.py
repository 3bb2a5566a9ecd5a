"""When a job that did not succeed runs again: the restart rule, as one pure function.

A restart is worth it only where it can still help (docs/server.md "Restarts"):
- the dispatch allows it (JRP_ON_FAILURE, not deleted) and the job has restarts left;
- the room still exists and has someone to serve: a non-agent participant is in it now, or — for a
  job that was *interrupted* (its worker was lost, or the worker says `interrupted (...)`: drain
  timeout, memory limit, shutdown) — nobody has joined yet, so the agent was still waiting for them;
- a job that *crashed* (any other JS_FAILED) runs again only while a participant is there to serve:
  a call whose caller already hung up is not re-joined by an agent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: the prefix a worker puts on the error of a job it cut short (drain timeout, memory, shutdown)
INTERRUPTED_PREFIX = "interrupted ("


class Cause(enum.Enum):
    LOST = "worker lost"
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"


def cause_of(error: str) -> Cause:
    return Cause.INTERRUPTED if error.startswith(INTERRUPTED_PREFIX) else Cause.CRASHED


@dataclass(frozen=True)
class RoomAudience:
    exists: bool
    humans_now: int
    ever_had_humans: bool


@dataclass(frozen=True)
class RestartFacts:
    cause: Cause
    policy_allows: bool  # JRP_ON_FAILURE and the dispatch is not deleted
    restarts_done: int
    max_restarts: int
    audience: RoomAudience
    shutting_down: bool = False


def restart_refusal(f: RestartFacts) -> str | None:
    """None when the job should run again; otherwise why not (appended to its final error)."""
    if f.shutting_down:
        return "server shutting down"
    if not f.policy_allows:
        return "restart policy: never"
    if f.restarts_done >= f.max_restarts:
        return f"after {f.restarts_done} restarts"
    if not f.audience.exists:
        return "room closed"
    if f.audience.humans_now > 0:
        return None
    if f.audience.ever_had_humans:
        return "nobody left in the room to serve"
    if f.cause is Cause.CRASHED:
        return "no participant in the room to serve"
    return None


def final_error(error: str, refusal: str) -> str:
    """The error a job ends with when its restart was refused."""
    if refusal in ("restart policy: never", "server shutting down"):
        return error
    if refusal.startswith("after "):
        return f"{error} ({refusal})"
    return f"{error} (not restarted: {refusal})"
