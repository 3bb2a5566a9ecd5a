"""Malformed and fuzzed SIP never crashes the gateway, and calls in progress are unaffected."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

from livekit.protocol import sip
from sip_harness import AGENTS, SipRig, agent_rule

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp

INVITE = (
    "INVITE sip:+15550100@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n}\r\n"
    "From: <sip:+1555@127.0.0.1>;tag=f{n}\r\n"
    "To: <sip:+15550100@127.0.0.1>\r\n"
    "Call-ID: fuzz-{n}@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:+1555@127.0.0.1:{port}>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)


def corpus(port: int, rnd: random.Random) -> list[bytes]:
    good_sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    )
    cases = [
        b"",
        b"\r\n\r\n",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",  # a response nobody asked for
        b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n\r\n",  # missing headers
        INVITE.format(port=port, n=1, length=9999, body=good_sdp).encode(),  # Content-Length lies
        INVITE.format(port=port, n=2, length=7, body="garbage").encode(),  # not SDP
        INVITE.format(port=port, n=3, length=3, body="v=0").encode(),  # SDP without media
        INVITE.format(port=port, n=4, length=len(good_sdp), body=good_sdp)
        .encode()
        .replace(b"SIP/2.0\r\n", b"SIP/9.9\r\n"),
        ("X" * 65000).encode(),
        INVITE.format(port=port, n=5, length=0, body="").encode().replace(b"CSeq: 1 INVITE", b"CSeq: banana"),
        INVITE.format(port=port, n=6, length=0, body="").encode().replace(b"Via:", b"Via: \x00\xff"),
        b"BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKq\r\nCall-ID: none\r\n\r\n",
    ]
    base = INVITE.format(port=port, n=7, length=len(good_sdp), body=good_sdp).encode()
    for _ in range(300):  # random byte flips, truncations and junk
        data = bytearray(base)
        for _ in range(rnd.randint(1, 20)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        cases.append(bytes(data[: rnd.randint(1, len(data))]))
        cases.append(bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 400))))
    return cases


async def test_fuzzed_datagrams_do_not_disturb_a_call_in_progress(
    rig: SipRig, start_worker: Any, sipp_bin: str, tmp_path: Path
) -> None:
    await start_worker(agent_name="phone", entrypoint_fnc=f"{AGENTS}:entry_answer")
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t", numbers=["+15550100"]))
    rig.gateway.directory.add_rule(agent_rule("phone"))
    call = asyncio.ensure_future(run_sipp(sipp_bin, CallScenario(hold_ms=2000), rig.target, tmp_path / "a"))
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk.bind(("127.0.0.1", 0))
    junk.setblocking(False)
    port = junk.getsockname()[1]
    try:
        for data in corpus(port, random.Random(11)):
            if data:
                junk.sendto(data, ("127.0.0.1", rig.gateway.port))
            await asyncio.sleep(0)
        # over TCP too: garbage, then an oversized header block
        _reader, writer = await asyncio.open_connection("127.0.0.1", rig.gateway.port)
        writer.write(b"NOT SIP AT ALL\r\n\r\n" + b"INVITE sip:x SIP/2.0\r\nX: " + b"y" * 80000)
        await writer.drain()
        writer.close()
    finally:
        first = await call
        junk.close()
    assert first.returncode == 0, first.stderr
    # and the gateway still takes new calls
    again = await run_sipp(sipp_bin, CallScenario(hold_ms=100), rig.target, tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert [t.status for t in again.calls.values()] == [200]


async def test_an_unknown_number_gets_404(rig: SipRig, sipp_bin: str, tmp_path: Path) -> None:
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t", numbers=["+15550100"]))
    rig.gateway.directory.add_rule(agent_rule("phone"))
    run = await run_sipp(sipp_bin, CallScenario(expect=404), rig.target, tmp_path / "s", service="+19990000")
    assert run.returncode == 0, run.stderr
    assert [t.status for t in run.calls.values()] == [404]
