"""SIP transports: aiosipua's UDP and TCP transports with two fixes (Python 3.11 UDP, TCP replies).

aiosipua 0.7.1's UDP protocol asserts `isinstance(transport, asyncio.DatagramTransport)`, which the
selector loop's datagram transport is not on Python 3.11 (it is from 3.12). This subclass binds the
socket itself and hands datagrams to the library's parser/dispatcher. It also catches retransmitted
INVITEs first: aiosipua would take one for a new call (a second dialog with another tag).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiosipua import SipMessage, SipRequest, parse_via, stringify_via
from aiosipua.transport import TcpSipTransport, UdpSipTransport

log = logging.getLogger("agentdispatch.sip.transport")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: GatewayUdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._dispatch(data, (str(addr[0]), int(addr[1])))


class GatewayUdpTransport(UdpSipTransport):
    #: called with each INVITE before the UAS sees it; True = a retransmission, already answered
    is_retransmission: Callable[[SipRequest], bool] | None = None

    def _dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:6] == b"INVITE" and self.is_retransmission is not None:
            try:
                msg = SipMessage.parse(data)
            except ValueError:
                msg = None  # the library parses it again and logs why it is malformed
            if isinstance(msg, SipRequest) and self.is_retransmission(msg):
                return
        super()._dispatch(data, addr)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self.local_addr
        )
        self._udp_transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.local_addr = (str(host), int(port))  # the real port when asked for port 0


class GatewayTcpTransport(TcpSipTransport):
    """Responses go back over the connection the request came on (RFC 3261 §18.2.2).

    aiosipua routes a response by its Via's sent-by, which over TCP names the client's listening port,
    not the connection; so each request's top Via gets `received`/`rport` = the connection's address.
    """

    def _dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = SipMessage.parse(data)
        except (ValueError, IndexError, KeyError, UnicodeDecodeError):
            log.warning("unparsable SIP message over TCP", extra={"peer": f"{addr[0]}:{addr[1]}"})
            return
        if isinstance(msg, SipRequest):
            vias = msg.headers.get("via")
            if vias:
                top = parse_via(vias[0])
                top.params["received"] = addr[0]
                top.params["rport"] = str(addr[1])
                msg.headers.remove("Via")
                msg.headers.append("Via", stringify_via(top))
                for rest in vias[1:]:
                    msg.headers.append("Via", rest)
        if self.on_message is not None:
            self.on_message(msg, addr)
