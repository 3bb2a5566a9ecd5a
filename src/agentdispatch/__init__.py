"""agentdispatch: a LiveKit-compatible agent dispatch server and worker runtime.

    from agentdispatch import WorkerOptions, JobContext, cli

The worker names are loaded on first use, so importing the package stays cheap (job processes and the
server do not pay for what they do not use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import cli
    from .worker.child.context import JobContext, JobProcess
    from .worker.offers import JobRequest
    from .worker.options import ServerType, WorkerOptions, WorkerPermissions

_EXPORTS = {
    "JobContext": "agentdispatch.worker.child.context",
    "JobProcess": "agentdispatch.worker.child.context",
    "JobRequest": "agentdispatch.worker.offers",
    "ServerType": "agentdispatch.worker.options",
    "WorkerOptions": "agentdispatch.worker.options",
    "WorkerPermissions": "agentdispatch.worker.options",
}

__all__ = [
    "JobContext",
    "JobProcess",
    "JobRequest",
    "ServerType",
    "WorkerOptions",
    "WorkerPermissions",
    "__version__",
    "cli",
]


def __getattr__(name: str) -> Any:
    if name == "cli":
        return importlib.import_module("agentdispatch.cli")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
