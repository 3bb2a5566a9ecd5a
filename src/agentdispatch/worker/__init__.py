"""The worker runtime: options, connection, load, offers, the prewarmed process pool, jobs, drain.

Names are loaded lazily so that a job process (which imports `agentdispatch.worker.child.main`) does not
pay for the parent-side machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .child.context import JobContext, JobProcess
    from .child.room import DataMessage, RoomConnection
    from .offers import JobRequest
    from .options import ResolvedOptions, ServerType, WorkerOptions, WorkerPermissions
    from .runtime import Worker
    from .serve import run, serve

_EXPORTS = {
    "JobContext": ".child.context",
    "JobProcess": ".child.context",
    "JobRequest": ".offers",
    "ResolvedOptions": ".options",
    "ServerType": ".options",
    "WorkerOptions": ".options",
    "WorkerPermissions": ".options",
    "DataMessage": ".child.room",
    "RoomConnection": ".child.room",
    "Worker": ".runtime",
    "run": ".serve",
    "serve": ".serve",
}

__all__ = [
    "DataMessage",
    "JobContext",
    "JobProcess",
    "JobRequest",
    "ResolvedOptions",
    "RoomConnection",
    "ServerType",
    "Worker",
    "WorkerOptions",
    "WorkerPermissions",
    "run",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
