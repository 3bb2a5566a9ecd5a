"""A pytest plugin that runs the server test suite on another store: the proof that nothing relies on
the in-memory store's sharing, and that one node on Redis (or in cluster mode) behaves the same.

    python -m pytest tests/server -p agentdispatch.testing.store_modes --store-mode=copies
    python -m pytest tests/server -p agentdispatch.testing.store_modes --store-mode=redis
    python -m pytest tests/server -p agentdispatch.testing.store_modes --store-mode=cluster

- ``copies``: every server gets ``MemoryStore(copies=True)`` (records copied in and out, like Redis);
- ``redis``: every server gets a ``RedisStore`` on one real redis-server (own key prefix per server),
  with the single-node dispatcher;
- ``cluster``: as ``redis``, and every server runs in cluster mode (``redis_url`` set:
  ClusteredDispatcher, hand-offs through its own stream, leases, directory).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from ..util import SYSTEM_CLOCK, Clock
from .services import RedisProcess, ensure_installed

_state: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-mode",
        choices=("memory", "copies", "redis", "cluster"),
        default="memory",
        help="store the dispatch servers of the tests run on (agentdispatch.testing.store_modes)",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--store-mode")
    if mode == "memory":
        return
    from ..server import app
    from ..server.store import MemoryStore, Store

    if mode == "copies":

        def open_copying(redis_url: str = "", cluster: str = "", clock: Clock = SYSTEM_CLOCK) -> Store:
            return MemoryStore(copies=True, clock=clock)

        app.open_store = open_copying  # type: ignore[attr-defined]
        return
    binary = ensure_installed("redis-server", "redis-server")
    if binary is None:
        raise pytest.UsageError("--store-mode needs redis-server (apt-get install -y redis-server)")
    proc = RedisProcess(binary)
    proc.start()
    _state["redis"] = proc
    counter = itertools.count()
    from ..server.store_redis import RedisStore

    def open_redis(redis_url: str = "", cluster: str = "", clock: Clock = SYSTEM_CLOCK) -> Store:
        return RedisStore(proc.url, cluster=f"test{next(counter)}")

    app.open_store = open_redis  # type: ignore[attr-defined]
    if mode == "cluster":
        original = app.DispatchServer.__init__

        def clustered_init(self: Any, cfg: Any, store: Any = None, clock: Clock = SYSTEM_CLOCK) -> None:
            original(self, dataclasses.replace(cfg, redis_url=proc.url), store, clock)

        app.DispatchServer.__init__ = clustered_init  # type: ignore[method-assign, assignment]


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = _state.pop("redis", None)
    if proc is not None:
        proc.close()
