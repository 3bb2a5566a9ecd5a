"""What a caller experiences, driven by real sipp against the gateway, with real workers and job processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livekit.protocol import agent, models, sip

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp
from conftest import AGENTS, SipRig, agent_rule, wait_until

JS_CANCELLED = agent.JobStatus.JS_CANCELLED


def add_trunk_and_rule(rig: SipRig, agent_name: str, metadata: str = "", **trunk: Any) -> None:
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="test", **trunk))
    rig.gateway.directory.add_rule(agent_rule(agent_name, metadata=metadata))


async def test_call_is_answered_by_the_agent_who_sees_the_caller(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    add_trunk_and_rule(rig, "phone", metadata=json.dumps({"out": str(out)}))
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    run = await run_sipp(
        sipp_bin, CallScenario(hold_ms=300, ringing_required=True), rig.target, tmp_path / "s"
    )
    assert run.returncode == 0, run.stdout + run.text("_errors.log")
    (trace,) = run.calls.values()
    assert trace.status == 200 and "ringing" in trace.events
    seen = json.loads(out.read_text())
    assert seen["identity"] == "sip_+15551234"
    assert seen["kind"] == models.ParticipantInfo.Kind.SIP
    attrs = seen["attributes"]
    assert attrs["sip.phoneNumber"] == "+15551234" and attrs["sip.trunkPhoneNumber"] == "+15550100"
    assert attrs["sip.callID"].startswith("SCL_") and attrs["sip.callIDFull"]
    # the caller's BYE ended the job and closed the room
    await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    rec = rig.gateway.history[-1]
    assert rec.end_reason == "caller_bye"
    assert await rig.server.rooms.list_rooms([rec.room]) == []
