"""SIP transaction details sipp does not exercise: a retransmitted INVITE, and calls nobody ACKs."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit.protocol import sip
from sip_harness import SipRig, agent_rule, wait_until

from agentdispatch.sip import gateway as gateway_module

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


def invite(port: int) -> bytes:
    return (
        "INVITE sip:+15550100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKretrans1\r\n"
        "From: <sip:+15551234@127.0.0.1>;tag=caller1\r\n"
        "To: <sip:+15550100@127.0.0.1>\r\n"
        "Call-ID: retrans-1@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+15551234@127.0.0.1:{port}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


async def responses(sock: socket.socket, count: int, timeout: float = 10.0) -> list[tuple[int, str]]:
    """(status, To tag) of the next `count` responses."""
    loop = asyncio.get_running_loop()
    out: list[tuple[int, str]] = []
    while len(out) < count:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        text = data.decode(errors="replace")
        status = int(text.split(" ", 2)[1])
        to = next(line for line in text.split("\r\n") if line.lower().startswith("to:"))
        out.append((status, to.split("tag=", 1)[1] if "tag=" in to else ""))
    return out


async def test_a_retransmitted_invite_is_the_same_call_and_unacked_calls_are_forgotten(
    rig: SipRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "LINGER", 0.3)
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t", ringing_timeout=Duration(seconds=1)))
    rig.gateway.directory.add_rule(agent_rule("nobody"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        port = sock.getsockname()[1]
        sock.sendto(invite(port), ("127.0.0.1", rig.gateway.port))
        first = await responses(sock, 2)
        assert [s for s, _ in first] == [100, 180]
        sock.sendto(invite(port), ("127.0.0.1", rig.gateway.port))  # as if our 180 was lost
        (again,) = await responses(sock, 1)
        assert again == first[1]  # the same 180, same dialog tag
        (final,) = await responses(sock, 1)
        assert final == (503, first[1][1])
    finally:
        sock.close()
    # one call, and (never ACKed) it is dropped from the UAS after the linger time
    await wait_until(lambda: rig.gateway.history, 10, "the call to end")
    assert [r.sip_call_id for r in rig.gateway.history] == ["retrans-1@127.0.0.1"]
    await wait_until(lambda: all(not u.active_calls for u in rig.gateway._uas), 10, "the UAS to forget")


async def test_sip_gateway_options_ping_is_answered(rig: SipRig) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    options = (
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKopt1\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:127.0.0.1>\r\n"
        "Call-ID: opt-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    try:
        sock.sendto(options.encode(), ("127.0.0.1", rig.gateway.port))
        (status, _tag), *_ = await responses(sock, 1)
        assert status == 200  # carriers probe trunks with OPTIONS
    finally:
        sock.close()


def _unused(*_: Any) -> None: ...


@pytest.mark.parametrize("gateway_config", [{"advertise": "192.0.2.10", "ringback": True}])
async def test_the_advertised_address_goes_into_sdp_and_contact(rig: SipRig) -> None:
    rig.gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="t", ringing_timeout=Duration(seconds=1)))
    rig.gateway.directory.add_rule(agent_rule("nobody"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        sock.sendto(invite(sock.getsockname()[1]), ("127.0.0.1", rig.gateway.port))
        texts: list[str] = []
        while not texts or not texts[-1].startswith("SIP/2.0 183"):
            texts.append((await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)).decode())
    finally:
        sock.close()
    progress = texts[-1]
    assert "c=IN IP4 192.0.2.10" in progress  # the media address behind NAT
    assert f"Contact: <sip:192.0.2.10:{rig.gateway.port}>" in progress
