"""Fixtures for cluster tests: a real redis-server on a loopback ephemeral port (apt-installed if missing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentdispatch.testing.services import RedisProcess, require


@pytest.fixture
def redis_proc() -> Iterator[RedisProcess]:
    """A fresh redis-server per test (CI=true: fails when redis-server cannot be installed)."""
    binary = require("redis-server", "redis-server")
    with RedisProcess(binary) as proc:
        yield proc
