"""SIP transports: aiosipua's UDP transport, bound so that it works on Python 3.11 and reports its port.

aiosipua 0.7.1's UDP protocol asserts `isinstance(transport, asyncio.DatagramTransport)`, which the
selector loop's datagram transport is not on Python 3.11 (it is from 3.12). This subclass binds the
socket itself and hands datagrams to the library's parser/dispatcher unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosipua.transport import UdpSipTransport


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: GatewayUdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._dispatch(data, (str(addr[0]), int(addr[1])))


class GatewayUdpTransport(UdpSipTransport):
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self.local_addr
        )
        self._udp_transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.local_addr = (str(host), int(port))  # the real port when asked for port 0
