"""Fifty concurrent calls, each answered by its own agent job process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import sip
from sip_harness import AGENTS, SipRig, agent_rule, wait_until

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp

CALLS = 50


@pytest.mark.parametrize("gateway_config", [{"ringing_timeout": 60.0}])
async def test_fifty_concurrent_calls_are_all_answered(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer", num_idle_processes=4)
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t"))
    rig.gateway.directory.add_rule(agent_rule("phone"))
    peak = {"calls": 0}

    def watch() -> None:
        peak["calls"] = max(peak["calls"], len(rig.gateway.active_calls()))

    unsubscribe = rig.server.dispatcher.events.subscribe(lambda e: watch())
    try:
        scenario = CallScenario(hold_ms=8000)
        run = await run_sipp(
            sipp_bin, scenario, rig.target, tmp_path / "s", calls=CALLS, rate=50, limit=CALLS, timeout=120
        )
    finally:
        unsubscribe()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    statuses = [t.status for t in run.calls.values()]
    assert statuses == [200] * CALLS
    assert peak["calls"] == CALLS  # all fifty were up at the same time
    await wait_until(lambda: not rig.gateway.active_calls(), 60, "calls to end")
    assert sorted({r.end_reason for r in rig.gateway.history}) == ["caller_bye"]
