"""What a caller experiences, driven by real sipp against the gateway, with real workers and job processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf.duration_pb2 import Duration
from livekit.protocol import agent, models, sip
from sip_harness import AGENTS, SipRig, agent_rule, wait_until

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp
from agentdispatch.server.events import JobEvent, JobEventKind
from agentdispatch.sip.call import CallState

JS_CANCELLED = agent.JobStatus.JS_CANCELLED


def add_trunk_and_rule(rig: SipRig, agent_name: str, metadata: str = "", **trunk: Any) -> None:
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="test", **trunk))
    rig.gateway.directory.add_rule(agent_rule(agent_name, metadata=metadata))


async def test_call_is_answered_by_the_agent_who_sees_the_caller(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    ended = watch_ended(rig)
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
    await wait_until(lambda: ended, 20, "the job to end")
    assert ended[0].state.status == JS_CANCELLED and ended[0].room.name == rec.room  # terminated
    async with aiohttp.ClientSession() as http, http.get(f"{rig.server.url}/metrics") as resp:
        text = await resp.text()
    assert 'agentdispatch_sip_calls_total{status="200"} 1.0' in text
    assert "agentdispatch_sip_post_dial_delay_seconds_count 1.0" in text


def watch_ended(rig: SipRig) -> list[agent.Job]:
    """Jobs as they end (the server's lifecycle events)."""
    ended: list[agent.Job] = []

    def on_event(e: Any) -> None:
        if isinstance(e, JobEvent) and e.kind is JobEventKind.ENDED:
            ended.append(e.job)

    rig.server.dispatcher.events.subscribe(on_event)
    return ended


def last_record(rig: SipRig) -> Any:
    return rig.gateway.history[-1]


async def test_no_worker_gets_503_with_retry_after_at_the_ringing_timeout(
    rig: SipRig, sipp_bin: str, tmp_path: Path
) -> None:
    add_trunk_and_rule(rig, "nobody")
    run = await run_sipp(sipp_bin, CallScenario(expect=503), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 503 and trace.retry_after == "30"
    assert "ringing" in trace.events  # it rang first: 180, then 503
    await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    rec = last_record(rig)
    assert rec.final_status == 503 and "no agent within 3 s" in rec.end_reason
    # nothing keeps waiting: the dispatch was deleted with the room
    assert await rig.server.rooms.list_rooms([rec.room]) == []


@pytest.mark.parametrize("status", [486, 480, 603])
async def test_the_trunk_chooses_the_final_code(
    rig: SipRig, sipp_bin: str, tmp_path: Path, status: int
) -> None:
    add_trunk_and_rule(rig, "nobody", ringing_timeout_status=status, ringing_timeout=Duration(seconds=1))
    run = await run_sipp(sipp_bin, CallScenario(expect=status), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == status
    assert trace.retry_after == ("" if status == 603 else "30")
    assert (trace.delay("final") or 0) >= 1.0


async def test_cancel_while_ringing_gets_487_and_cancels_the_job(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    ended: list[agent.Job] = []
    rig.server.dispatcher.events.subscribe(
        lambda e: ended.append(e.job) if isinstance(e, JobEvent) and e.kind is JobEventKind.ENDED else None
    )
    # the worker is FULL (load above its threshold): the job waits in the queue while the phone rings
    await start_worker(
        agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer", load_fnc=lambda: 1.0, load_threshold=0.7
    )
    add_trunk_and_rule(rig, "phone")
    run = await run_sipp(sipp_bin, CallScenario(cancel_ms=500), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 487
    await wait_until(lambda: ended, 10, "the job to end")
    assert ended[0].state.status == JS_CANCELLED
    rec = last_record(rig)
    assert rec.final_status == 487 and ended[0].dispatch_id in rec.dispatch_ids
    assert await rig.server.rooms.list_rooms([rec.room]) == []


async def test_full_worker_that_frees_up_while_ringing_answers(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    load = {"value": 1.0}
    await start_worker(
        agent_name="phone",
        entrypoint_fnc=f"{AGENTS}:entry_answer",
        load_fnc=lambda: load["value"],
        load_threshold=0.7,
    )
    add_trunk_and_rule(rig, "phone", ringing_timeout=Duration(seconds=20))
    call = asyncio.ensure_future(run_sipp(sipp_bin, CallScenario(hold_ms=200), rig.target, tmp_path / "s"))
    await wait_until(lambda: rig.gateway.active_calls(), 20, "the call to ring")
    assert rig.gateway.active_calls()[0].state is CallState.RINGING
    load["value"] = 0.0  # the worker reports AVAILABLE; the queued job is offered to it
    run = await call
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 200


@pytest.mark.parametrize("agent_entry", ["entry_hangup", "entry_end_job"])
async def test_the_agent_ending_the_call_sends_bye(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path, agent_entry: str
) -> None:
    ended = watch_ended(rig)
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:{agent_entry}")
    add_trunk_and_rule(rig, "phone")
    run = await run_sipp(sipp_bin, CallScenario(hangup="agent"), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 200 and "bye_received" in trace.events
    await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    expected = "agent_hangup" if agent_entry == "entry_hangup" else ("agents_left", "job_ended")
    assert last_record(rig).end_reason in expected
    await wait_until(lambda: ended, 20, "the job to end")
    assert await rig.server.rooms.list_rooms([last_record(rig).room]) == []


async def test_trunk_limit_answers_at_once_with_the_configured_code(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    rig.gateway.directory.add_trunk(
        sip.SIPInboundTrunkInfo(name="limited", metadata=json.dumps({"max_calls": 1, "limit_status": 486}))
    )
    rig.gateway.directory.add_rule(agent_rule("phone"))
    first = asyncio.ensure_future(run_sipp(sipp_bin, CallScenario(hold_ms=3000), rig.target, tmp_path / "a"))
    await wait_until(lambda: rig.gateway.active_calls(), 20, "the first call")
    second = await run_sipp(sipp_bin, CallScenario(expect=486), rig.target, tmp_path / "b")
    assert second.returncode == 0, second.stderr
    (trace,) = second.calls.values()
    assert trace.status == 486 and trace.retry_after == "30"
    assert "ringing" not in trace.events  # refused at once, no ringing
    assert (await first).returncode == 0


@pytest.mark.parametrize(("entry", "hangup"), [("entry_answer", "caller"), ("entry_hangup", "agent")])
async def test_calls_over_tcp(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path, entry: str, hangup: str
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:{entry}")
    add_trunk_and_rule(rig, "phone")
    scenario = CallScenario(hold_ms=200, hangup=hangup)
    run = await run_sipp(sipp_bin, scenario, rig.target, tmp_path / "s", transport="t1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 200


async def test_a_trunk_with_digest_auth_challenges_then_admits_the_right_password(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    add_trunk_and_rule(rig, "phone", auth_username="carrier", auth_password="s3cret")
    run = await run_sipp(
        sipp_bin, CallScenario(hold_ms=200, auth=("carrier", "s3cret")), rig.target, tmp_path / "a"
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    assert [t.status for t in run.calls.values()] == [200]
    # a wrong password gets another 407 and never creates a room
    await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    before = len(rig.gateway.history)
    bad = await run_sipp(
        sipp_bin, CallScenario(hold_ms=200, auth=("carrier", "wrong")), rig.target, tmp_path / "b", timeout=5
    )
    assert bad.returncode != 0
    assert "200" not in {str(t.status) for t in bad.calls.values()}
    assert len(rig.gateway.history) == before and not rig.gateway.active_calls()


async def test_max_call_duration_ends_the_call_with_bye(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    add_trunk_and_rule(rig, "phone", max_call_duration=Duration(seconds=1))
    run = await run_sipp(sipp_bin, CallScenario(hangup="agent"), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert "bye_received" in trace.events and (trace.delay("bye_received") or 0) >= 1.0
    await wait_until(lambda: not rig.gateway.active_calls(), 20, "call to end")
    assert last_record(rig).end_reason == "max call duration"


@pytest.mark.parametrize("gateway_config", [{"rtp_ports": (41000, 41002)}])  # room for one call's RTP
async def test_when_rtp_ports_run_out_the_next_call_gets_503_at_once(
    rig: SipRig, sipp_bin: str, tmp_path: Path
) -> None:
    add_trunk_and_rule(rig, "nobody")
    first = asyncio.ensure_future(run_sipp(sipp_bin, CallScenario(expect=503), rig.target, tmp_path / "a"))
    await wait_until(lambda: rig.gateway.active_calls(), 20, "the first call")
    second = await run_sipp(sipp_bin, CallScenario(expect=503), rig.target, tmp_path / "b")
    assert second.returncode == 0, second.stderr
    (trace,) = second.calls.values()
    assert trace.status == 503 and "ringing" not in trace.events
    assert (await first).returncode == 0
    assert sorted(r.end_reason for r in rig.gateway.history)[0] == "no agent within 3 s"
    assert "no free RTP port" in [r.end_reason for r in rig.gateway.history]


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 1.0}])
async def test_a_shorter_dispatch_deadline_ends_the_ringing_with_the_final_code(
    rig: SipRig, sipp_bin: str, tmp_path: Path
) -> None:
    add_trunk_and_rule(rig, "nobody")  # ringing timeout 3 s, but the server gives up on the job after 1 s
    run = await run_sipp(sipp_bin, CallScenario(expect=503), rig.target, tmp_path / "s")
    assert run.returncode == 0, run.stderr
    (trace,) = run.calls.values()
    assert trace.status == 503 and trace.retry_after == "30"
    await wait_until(lambda: rig.gateway.history, 20, "call to end")
    assert "no worker available" in last_record(rig).end_reason


@pytest.mark.parametrize("gateway_config", [{"ringing_timeout": 60.0}])
async def test_gateway_shutdown_gives_ringing_calls_the_final_code_and_answered_calls_a_bye(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t"))
    rig.gateway.directory.add_rule(agent_rule("phone", prefix="p-"))
    rig.gateway.directory.add_rule(
        sip.SIPDispatchRuleInfo(
            rule=sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="n-")
            ),
            numbers=["+15550199"],
            room_config=agent_rule("nobody").room_config,
        )
    )
    answered = asyncio.ensure_future(
        run_sipp(sipp_bin, CallScenario(hangup="agent"), rig.target, tmp_path / "a")
    )
    ringing = asyncio.ensure_future(
        run_sipp(sipp_bin, CallScenario(expect=503), rig.target, tmp_path / "r", service="+15550199")
    )
    await wait_until(
        lambda: {c.state for c in rig.gateway.active_calls()} == {CallState.ACTIVE, CallState.RINGING},
        30,
        "one call answered, one ringing",
    )
    await rig.gateway.aclose()
    a, r = await answered, await ringing
    assert a.returncode == 0 and "bye_received" in next(iter(a.calls.values())).events, a.stderr
    assert r.returncode == 0 and [t.status for t in r.calls.values()] == [503], r.stderr
