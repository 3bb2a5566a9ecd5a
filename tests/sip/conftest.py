"""SIP fixtures: a real dispatch server with the SIP gateway in-process, real workers, real `sipp`.

`sipp` comes from Debian's `sip-tester`, installed here when missing; without it the tests skip, or
fail when CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from livekit.protocol import agent_dispatch, sip
from livekit.protocol import room as lk_room

from agentdispatch.protocol import WorkerError
from agentdispatch.server import DispatchServer, ServerConfig
from agentdispatch.sip import GatewayConfig, SipGateway
from agentdispatch.worker.options import WorkerOptions
from agentdispatch.worker.proc_pool import BackoffPolicy
from agentdispatch.worker.runtime import Tuning, Worker

HERE = Path(__file__).parent
AGENTS = HERE / "sip_agents.py"
EXAMPLE = HERE.parents[1] / "examples" / "sip_echo_agent.py"
FAST = Tuning(
    status_interval=0.3,
    load_interval=0.05,
    memory_interval=0.2,
    term_grace=0.5,
    reconnect_base=0.05,
    reconnect_cap=0.2,
    pool_backoff=BackoffPolicy(base=0.1, cap=1.0),
)


def ensure_sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=300)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "sip-tester"],
                check=False,
                capture_output=True,
                timeout=600,
            )
        path = shutil.which("sipp")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sipp (Debian sip-tester) is required and could not be installed")
        pytest.skip("sipp (Debian sip-tester) not available")
    return path


@pytest.fixture(scope="session")
def sipp_bin() -> str:
    return ensure_sipp()


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def agent_rule(agent_name: str, prefix: str = "call-", metadata: str = "") -> sip.SIPDispatchRuleInfo:
    return sip.SIPDispatchRuleInfo(
        rule=sip.SIPDispatchRule(dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix=prefix)),
        room_config=lk_room.RoomConfiguration(
            agents=[agent_dispatch.RoomAgentDispatch(agent_name=agent_name, metadata=metadata)]
        ),
    )


@dataclass
class SipRig:
    server: DispatchServer
    gateway: SipGateway

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


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


def descendants() -> list[psutil.Process]:
    me = os.getpid()
    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.ppid() == me and "multiprocessing." in cmd:
                continue
            out.append(p)
    return out


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


if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
