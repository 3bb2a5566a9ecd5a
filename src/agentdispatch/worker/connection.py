"""The worker's WebSocket to the dispatch server: connect, register, read, reconnect.

Only network-shaped failures (aiohttp/OSError/timeouts/protocol violations) are retried, with exponential
backoff and jitter, up to `max_retry` consecutive failures; then `run()` raises WorkerError. Anything else
is a bug and propagates. A successful registration resets the failure count.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from livekit import api
from livekit.protocol import agent, models

from ..protocol import ProtocolError, WorkerError, decode_server_message
from ..protocol.limits import MAX_FRAME_BYTES
from ..protocol.urls import agent_ws_url, websocket_base

log = logging.getLogger("agentdispatch.worker.connection")

RETRYABLE: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError, ProtocolError)
HEARTBEAT = 30.0


class ConnectionRefused(WorkerError):
    """The server refused the worker's credentials: retrying cannot help."""


class WrongServerUrl(WorkerError):
    """The URL cannot lead to a dispatch server (TLS against a plain server, no /agent endpoint)."""


def _tls_mismatch(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientSSLError) and "WRONG_VERSION_NUMBER" in str(exc)


@dataclass(frozen=True)
class ConnectionSettings:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    job_type: int
    permissions: models.ParticipantPermission
    version: str
    worker_token: str = field(default="", repr=False)
    max_retry: int = 16
    backoff_base: float = 0.5
    backoff_cap: float = 15.0
    register_timeout: float = 10.0

    @property
    def agent_url(self) -> str:
        return agent_ws_url(self.url)

    @property
    def server_url(self) -> str:
        return websocket_base(self.url)


def _reason(exc: BaseException) -> str:
    """The innermost OS reason of a connection failure, e.g. "Connection refused"."""
    inner = getattr(exc, "os_error", None) or exc
    return getattr(inner, "strerror", None) or str(inner) or type(inner).__name__


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class WorkerConnection:
    def __init__(
        self,
        settings: ConnectionSettings,
        on_registered: Callable[[str], Awaitable[None]],
        on_message: Callable[[agent.ServerMessage], None],
        on_disconnected: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self._s = settings
        self._on_registered = on_registered
        self._on_message = on_message
        self._on_disconnected = on_disconnected
        self._rng = rng or random.Random()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._failures = 0
        self.worker_id = ""
        self.registrations = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and bool(self.worker_id)

    def _token(self) -> str:
        grants = api.VideoGrants(agent=True)
        return api.AccessToken(self._s.api_key, self._s.api_secret).with_grants(grants).to_jwt()

    async def run(self) -> None:
        """Stay connected until `close()`; raise WorkerError when retries are exhausted."""
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._closing:
                try:
                    await self._serve(session)
                    failure = "server closed the connection"
                except aiohttp.WSServerHandshakeError as exc:
                    self._refuse(exc)
                    failure = f"handshake failed: {exc.status} {exc.message}"
                except RETRYABLE as exc:
                    if _tls_mismatch(exc):
                        raise self._plain_server() from None
                    failure = f"{type(exc).__name__}: {exc}"
                    if self.registrations == 0 and self._failures == 0:
                        log.error(
                            "cannot reach the server at %s (%s): is `agentdispatch server` running at %s? "
                            "Retrying with backoff",
                            self._s.server_url,
                            _reason(exc),
                            self._s.server_url,
                        )
                finally:
                    self._ws = None
                    if self.worker_id:
                        self.worker_id = ""
                        self._on_disconnected()
                if self._closing:
                    return
                await self._backoff(failure)

    def _plain_server(self) -> WrongServerUrl:
        url = self._s.server_url
        plain = "ws://" + url.removeprefix("wss://")
        return WrongServerUrl(f"the server at {url} speaks plain ws://, not wss://: use --url {plain}")

    def _refuse(self, exc: aiohttp.WSServerHandshakeError) -> None:
        """Handshake answers that retrying cannot change."""
        if exc.status in (401, 403):
            raise ConnectionRefused(
                f"{self._s.agent_url} refused the worker ({exc.status}): check api_key/api_secret"
            ) from None
        if exc.status == 404 and self.registrations == 0:
            raise WrongServerUrl(
                f"{self._s.agent_url} answered 404: not a dispatch server's agent endpoint; "
                f"give the server's base URL, e.g. --url ws://localhost:7880"
            ) from None

    async def _backoff(self, failure: str) -> None:
        if self._failures >= self._s.max_retry:
            raise WorkerError(
                f"could not connect to {self._s.agent_url} after {self._failures + 1} attempts "
                f"(max_retry={self._s.max_retry}); last error: {failure}"
            )
        delay = backoff_delay(self._failures, self._s.backoff_base, self._s.backoff_cap, self._rng)
        self._failures += 1
        log.warning(
            "connection to the server lost or refused (%s); retry %d/%d in %.1fs",
            failure,
            self._failures,
            self._s.max_retry,
            delay,
        )
        await asyncio.sleep(delay)

    async def _serve(self, session: aiohttp.ClientSession) -> None:
        params = {"worker_token": self._s.worker_token} if self._s.worker_token else None
        ws = await session.ws_connect(
            self._s.agent_url,
            headers={"Authorization": f"Bearer {self._token()}"},
            params=params,
            heartbeat=HEARTBEAT,
            max_msg_size=MAX_FRAME_BYTES,
        )
        self._ws = ws
        try:
            await self._register(ws)
            self._failures = 0
            self.registrations += 1
            await self._on_registered(self.worker_id)
            async for frame in ws:
                if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    break
                msg = decode_server_message(frame.data)
                if msg.WhichOneof("message") == "go_away":
                    log.info("server asked the worker to reconnect (go_away)")
                    break
                self._on_message(msg)
        finally:
            if not ws.closed:
                await ws.close()

    async def _register(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        s = self._s
        req = agent.RegisterWorkerRequest(
            type=s.job_type,  # type: ignore[arg-type]
            agent_name=s.agent_name,
            version=s.version,
            allowed_permissions=s.permissions,
        )
        await ws.send_bytes(agent.WorkerMessage(register=req).SerializeToString())
        frame = await ws.receive(timeout=s.register_timeout)
        if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise ProtocolError(f"connection closed during registration ({frame.type.name}, {ws.close_code})")
        msg = decode_server_message(frame.data)
        if msg.WhichOneof("message") != "register":
            raise ProtocolError(f"expected a register response, got {msg.WhichOneof('message')}")
        self.worker_id = msg.register.worker_id
        log.info(
            "worker registered",
            extra={"worker_id": self.worker_id, "url": s.agent_url, "agent_name": s.agent_name},
        )

    async def send(self, msg: agent.WorkerMessage) -> bool:
        """Send one message; False if not connected (the caller decides whether to keep it for later)."""
        ws = self._ws
        if ws is None or ws.closed or not self.worker_id:
            return False
        async with self._send_lock:
            try:
                await ws.send_bytes(msg.SerializeToString())
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                log.info("send failed: %r", exc)
                return False
        return True

    async def close(self) -> None:
        """Stop reconnecting and close the socket after what was sent so far."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            async with self._send_lock:
                await ws.close()
