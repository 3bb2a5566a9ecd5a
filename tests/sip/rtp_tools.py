"""A UDP sink that records the RTP coming back; the pcap writer is agentdispatch.bench.sip.pcap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from agentdispatch.bench.sip.pcap import tone_frames, write_pcap

__all__ = ["RtpSink", "matching", "open_sink", "tone_frames", "write_pcap"]


@dataclass
class RtpSink(asyncio.DatagramProtocol):
    """Records RTP packets (payload type, payload) sent to its port."""

    packets: list[tuple[int, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > 12 and data[0] >> 6 == 2:
            self.packets.append((data[1] & 0x7F, data[12:]))
            self.changed.set()


async def open_sink() -> tuple[asyncio.DatagramTransport, RtpSink, int]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(RtpSink, local_addr=("127.0.0.1", 0))
    return transport, sink, int(transport.get_extra_info("sockname")[1])


def matching(sent: list[bytes], received: list[bytes]) -> int:
    """How many sent payloads came back byte for byte."""
    back = set(received)
    return sum(1 for p in sent if p in back)
