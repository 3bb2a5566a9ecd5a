"""Messages between the worker and a job process: small frozen dataclasses sent over a multiprocessing Pipe.

Parent -> child: `StartJob`, `ShutdownRequest`.
Child -> parent: `InitDone`, `JobStarted`, `JobEnded`, `LogEntry`.
Kept free of heavy imports: the child imports this before anything else.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field

from .refs import FunctionRef

MAX_ERROR_CHARS = 2000
PRELOAD_ENV = "AGENTDISPATCH_FORKSERVER_PRELOAD"  # JSON: what the forkserver preloads (child/preload.py)
TRACEBACK_TAIL_LINES = 12


@dataclass(frozen=True)
class ChildConfig:
    """What a job process needs at birth (passed as the Process argument)."""

    entrypoint: FunctionRef
    prewarm: FunctionRef | None
    log_level: str
    sys_path: tuple[str, ...]
    parent_pid: int


@dataclass(frozen=True)
class AcceptArguments:
    """How the agent joins the room, as given to JobRequest.accept()."""

    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StartJob:
    job: bytes  # serialized livekit.protocol.agent.Job
    url: str
    token: str
    worker_id: str
    accept: AcceptArguments


@dataclass(frozen=True)
class ShutdownRequest:
    reason: str


@dataclass(frozen=True)
class InitDone:
    error: str = ""  # empty: prewarm succeeded


@dataclass(frozen=True)
class JobStarted:
    pass


@dataclass(frozen=True)
class JobEnded:
    error: str = ""  # empty: success
    reason: str = ""


@dataclass(frozen=True)
class LogEntry:
    name: str
    levelno: int
    message: str
    created: float
    exc_text: str = ""
    extra: Mapping[str, str | int | float | bool] = field(default_factory=dict)


ParentMessage = StartJob | ShutdownRequest
ChildMessage = InitDone | JobStarted | JobEnded | LogEntry


def format_error(exc: BaseException) -> str:
    """`Type: message`, then the tail of the traceback: what a user needs to see in ListDispatch."""
    head = f"{type(exc).__name__}: {exc}"
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    tail = "\n".join(lines[-TRACEBACK_TAIL_LINES:])
    text = f"{head}\n{tail}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
