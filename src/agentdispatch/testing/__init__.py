"""Public test helpers for code that talks to an agentdispatch (or LiveKit) server — like `trio.testing`.

- `SimWorker` / `SimWorkerOptions` (`testing.simworker`): a real agent-protocol client over a real
  WebSocket, without processes; its answer to offers is a policy, and it records what it received.
- `ServerProcess` / `ServerProcessSettings` (`testing.serverproc`): `agentdispatch server --dev` in a
  child process on a free loopback port, as a context manager; `wait_healthy`, `free_port`, `reap_tree`.
- `run_fuzz` / `FuzzOptions` (`testing.fuzz`): malformed frames and requests against a running server.
- `RedisProcess`, `HaproxyProcess`, `require` (`testing.services`): real peer services on loopback,
  installed from Debian when missing (under CI=true a missing one fails the test, else it skips).
- `wait_until`, `eventually` (`testing.waiting`): poll a condition (sync, or an async check) with a timeout
  that names what it waited for.

Used by this project's tests, its benchmarks and its demo. Names load on first use, so importing one
submodule does not pull in the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fuzz import FuzzOptions, run_fuzz
    from .serverproc import (
        HarnessError,
        ServerProcess,
        ServerProcessSettings,
        agentdispatch_command,
        free_port,
        reap_tree,
        wait_healthy,
    )
    from .simworker import SimWorker, SimWorkerOptions
    from .waiting import eventually, wait_until

_EXPORTS = {
    "FuzzOptions": "fuzz",
    "run_fuzz": "fuzz",
    "HarnessError": "serverproc",
    "ServerProcess": "serverproc",
    "ServerProcessSettings": "serverproc",
    "agentdispatch_command": "serverproc",
    "free_port": "serverproc",
    "reap_tree": "serverproc",
    "wait_healthy": "serverproc",
    "SimWorker": "simworker",
    "SimWorkerOptions": "simworker",
    "wait_until": "waiting",
    "eventually": "waiting",
}

__all__ = [
    "FuzzOptions",
    "HarnessError",
    "ServerProcess",
    "ServerProcessSettings",
    "SimWorker",
    "SimWorkerOptions",
    "agentdispatch_command",
    "eventually",
    "free_port",
    "reap_tree",
    "run_fuzz",
    "wait_healthy",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
