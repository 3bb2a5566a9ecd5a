"""Helpers of the SIP tests (imported by name: `from sip_harness import ...`, never `from conftest`,
whose module name other test folders share). Fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from livekit.protocol import agent_dispatch, sip
from livekit.protocol import room as lk_room

from agentdispatch.server import DispatchServer
from agentdispatch.sip import SipGateway
from agentdispatch.testing.services import require
from agentdispatch.testing.waiting import wait_until as poll
from agentdispatch.worker.proc_pool import BackoffPolicy
from agentdispatch.worker.runtime import Tuning

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
    """sipp's path; installs Debian sip-tester when missing; fails under CI=true, else skips, without it."""
    return require("sipp", "sip-tester")


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll a condition (the server and worker expose no event for most of these)."""
    return await poll(predicate, timeout, what)


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
