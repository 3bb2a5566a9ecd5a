"""SIP fixtures: a real dispatch server with the SIP gateway in-process, real workers, real `sipp`.

`sipp` comes from Debian's `sip-tester`, installed here when missing; without it the tests skip, or
fail when CI=true. Helpers live in sip_harness.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sip_harness import FAST, SipRig, descendants, ensure_sipp, wait_until  # noqa: E402

from agentdispatch.protocol import WorkerError  # noqa: E402
from agentdispatch.server import DispatchServer, ServerConfig  # noqa: E402
from agentdispatch.sip import GatewayConfig, SipGateway  # noqa: E402
from agentdispatch.worker.options import WorkerOptions  # noqa: E402
from agentdispatch.worker.runtime import Tuning, Worker  # noqa: E402


@pytest.fixture(scope="session")
def sipp_bin() -> str:
    return ensure_sipp()


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {}


@pytest.fixture
def gateway_config() -> dict[str, Any]:
    return {}


@pytest.fixture
async def rig(server_config: dict[str, Any], gateway_config: dict[str, Any]) -> AsyncIterator[SipRig]:
    cfg = {
        "port": 0,
        "offer_timeout": 3.0,
        "dispatch_deadline": 20.0,
        "reconnect_grace": 1.0,
        **server_config,
    }
    server = DispatchServer(ServerConfig(**cfg))
    gateway = SipGateway(server, GatewayConfig(**{"port": 0, "ringing_timeout": 3.0, **gateway_config}))
    server.app.router.add_routes(gateway.routes())
    await server.start()
    await gateway.start()
    yield SipRig(server, gateway)
    await gateway.aclose()
    await server.aclose()


@pytest.fixture
async def start_worker(rig: SipRig) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def factory(*, tuning: Tuning = FAST, ready: int = 1, **kw: Any) -> Worker:
        kw.setdefault("ws_url", rig.server.ws_url)
        kw.setdefault("num_idle_processes", 1)
        kw.setdefault("shutdown_process_timeout", 2.0)
        worker = Worker(WorkerOptions(**kw).resolve(production=False), tuning)
        task = asyncio.get_running_loop().create_task(worker.run(), name="sip-test-worker")
        running.append((worker, task))
        await wait_until(lambda: worker.conn.connected or task.done(), 20, "worker registration")
        if task.done():
            task.result()
        if ready:
            await asyncio.wait_for(worker.pool.wait_ready(ready), 30)
        return worker

    yield factory
    for worker, _ in running:
        worker.stop()
    for _, task in running:
        with contextlib.suppress(WorkerError):
            await asyncio.wait_for(asyncio.shield(task), 30)
    try:
        await wait_until(lambda: not descendants(), 10, "job processes to exit")
    except AssertionError:
        left = [p.pid for p in descendants()]
        for p in descendants():
            p.kill()
        raise AssertionError(f"leaked processes: {left}") from None
