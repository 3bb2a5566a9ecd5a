"""Connection limits every endpoint gets: header timeout, idle timeout, a cap on open connections.

aiohttp waits forever for a request's headers. The guard wraps the listening socket's protocol
factory: each connection is tracked, a middleware marks when a request is being handled, and a
sweep once a second closes connections that have not completed a request's headers within
`header_timeout` of opening or of their previous response (slowloris, half-open sockets). Over
`max_connections` a new connection is answered `503` at once and closed, so a flood costs the
flooder, not every other client. The soft open-file limit is raised to the hard one at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..util import SYSTEM_CLOCK, Clock

log = logging.getLogger("agentdispatch.server.connguard")

REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 32\r\n\r\nserver at its connection limit\r\n"
)
#: pending connections the kernel queues for accept() (capped by net.core.somaxconn). aiohttp's 128
#: overflows when a fleet (re)connects at once: dropped SYNs are retried only after 1 s, 3 s, ...
LISTEN_BACKLOG = 4096
#: descriptors kept free for files, Redis and outgoing sockets when the cap is derived from the limit
FD_RESERVE = 64


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised", extra={"from": soft, "to": target})
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", extra={"limit": soft, "error": str(exc)})
    return soft


#: request key: a handler whose connection outlives it (a WebSocket served by its own task, see
#: ws_frames.InlineWebSocketResponse.detach) pops the callable stored here and calls it when the
#: connection ends; until then the guard counts the connection busy (no header timeout applies)
HOLD_CONNECTION: web.RequestKey[Callable[[], None]] = web.RequestKey("hold_connection")


@dataclass(slots=True)
class _Conn:
    opened: float
    idle_since: float
    busy: int = 0


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        write = getattr(transport, "write", None)  # uvloop's transports do not subclass asyncio's
        if write is not None:
            write(REFUSAL)
        transport.close()


class ConnectionGuard:
    def __init__(self, header_timeout: float, max_connections: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._header_timeout = header_timeout
        self._max = max_connections
        self._clock = clock
        self._conns: dict[asyncio.BaseProtocol, _Conn] = {}
        #: the connections not handling a request: the only ones a sweep looks at (a worker's WebSocket is
        #: one long request, so 50,000 connected workers cost the sweep nothing)
        self._idle: dict[asyncio.BaseProtocol, _Conn] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.refused = 0
        self.timed_out = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def factory(self, make: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        def build() -> asyncio.BaseProtocol:
            if self._max and len(self._conns) >= self._max:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning(
                        "connection limit reached, refusing",
                        extra={"limit": self._max, "refused": self.refused},
                    )
                return _Refuse()
            proto = make()
            now = self._clock.monotonic()
            self._conns[proto] = self._idle[proto] = _Conn(now, now)
            return proto

        return build

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        proto: Any = request.protocol
        conn = self._conns.get(proto)
        if conn is None:
            return await handler(request)
        conn.busy += 1
        self._idle.pop(proto, None)

        def release() -> None:
            conn.busy -= 1
            conn.idle_since = self._clock.monotonic()
            if conn.busy == 0 and proto in self._conns:
                self._idle[proto] = conn

        request[HOLD_CONNECTION] = release
        try:
            return await handler(request)
        finally:
            if request.pop(HOLD_CONNECTION, None) is release:  # not taken over by the handler
                release()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="connguard")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep()

    def sweep(self) -> None:
        now = self._clock.monotonic()
        for proto, conn in list(self._idle.items()):
            transport: Any = getattr(proto, "transport", None)
            if transport is None or transport.is_closing():  # aiohttp drops it when the connection is lost
                self._forget(proto)
                continue
            if now - conn.idle_since > self._header_timeout:
                self.timed_out += 1
                transport.abort()
                self._forget(proto)

    def _forget(self, proto: asyncio.BaseProtocol) -> None:
        self._conns.pop(proto, None)
        self._idle.pop(proto, None)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
        self._guard = guard

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        if server is None:
            raise RuntimeError("runner is not set up")
        self._server = await loop.create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
