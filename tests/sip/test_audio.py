"""Audio both ways: sipp plays G.711 RTP, the example echo agent sends it back, the test measures it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent_dispatch, sip
from livekit.protocol import room as lk_room
from rtp_tools import matching, open_sink, tone_frames, write_pcap
from sip_harness import AGENTS, EXAMPLE, SipRig, agent_rule, wait_until

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp

FRAMES = 100  # 2 s of audio


@pytest.mark.parametrize("pt", [0, 8], ids=["PCMU", "PCMA"])
async def test_caller_audio_reaches_the_agent_and_its_echo_comes_back(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path, pt: int
) -> None:
    await start_worker(agent_name="sip-echo", entrypoint_fnc=f"{EXAMPLE}:entrypoint")
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t"))
    rig.gateway.directory.add_rule(
        sip.SIPDispatchRuleInfo(
            rule=sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="echo-")
            ),
            room_config=lk_room.RoomConfiguration(
                agents=[agent_dispatch.RoomAgentDispatch(agent_name="sip-echo")]
            ),
        )
    )
    sent = tone_frames(FRAMES, pt)
    pcap = tmp_path / "caller.pcap"
    write_pcap(pcap, sent, pt=pt)
    transport, sink, port = await open_sink()
    try:
        scenario = CallScenario(hold_ms=3500, pcap=str(pcap), media_port=str(port), payloads=str(pt))
        run = await run_sipp(sipp_bin, scenario, rig.target, tmp_path / "s")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr
        await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    finally:
        transport.close()
    rec = rig.gateway.history[-1]
    received = [payload for got, payload in sink.packets if got == pt]
    echoed = matching(sent, received)
    codec = "PCMU" if pt == 0 else "PCMA"
    print(
        f"\nRTP ({codec}): sent {FRAMES} frames, gateway relayed {rec.rtp_in} to the room and {rec.rtp_out}"
        f" to the caller; {len(received)} {codec} packets came back, {echoed} of the sent frames byte-exact"
    )
    assert rec.rtp_in >= FRAMES - 5  # every frame reached the room (the jitter buffer may hold the last few)
    # the greeting (0.6 s = 30 frames) plus the echo came back in the offered codec
    assert len(received) >= 30 + FRAMES * 0.9
    assert echoed >= FRAMES * 0.9


async def test_dtmf_from_the_caller_reaches_the_agent_as_events(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    out = tmp_path / "digits.json"
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_dtmf")
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t"))
    rig.gateway.directory.add_rule(agent_rule("phone", metadata=json.dumps({"out": str(out)})))
    pcap = tmp_path / "dtmf.pcap"
    write_pcap(pcap, tone_frames(10), dtmf="5#")
    transport, _sink, port = await open_sink()
    try:
        scenario = CallScenario(hold_ms=2000, pcap=str(pcap), media_port=str(port), payloads="0")
        run = await run_sipp(sipp_bin, scenario, rig.target, tmp_path / "s")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    finally:
        transport.close()
    seen = json.loads(out.read_text())
    assert seen == {"digits": "5#", "sender": "sip_+15551234"}


@pytest.mark.parametrize("gateway_config", [{"ringback": True}])
async def test_ringback_plays_as_early_media_while_the_caller_waits(
    rig: SipRig, sipp_bin: str, tmp_path: Path
) -> None:
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t"))
    rig.gateway.directory.add_rule(agent_rule("nobody"))  # no worker: the caller waits the full 3 s
    transport, sink, port = await open_sink()
    try:
        scenario = CallScenario(expect=503, early_media=True, media_port=str(port), payloads="0")
        run = await run_sipp(sipp_bin, scenario, rig.target, tmp_path / "s")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    finally:
        transport.close()
    (trace,) = run.calls.values()
    assert "progress" in trace.events and trace.status == 503
    tone = [p for pt, p in sink.packets if pt == 0 and p != b"\xff" * 160]  # not silence
    # 2 s of 440+480 Hz in the first cadence, at 50 frames/s (RTP before any 200 OK)
    assert len(tone) >= 90, len(sink.packets)
