"""Shared fixtures: a real dispatch server on an ephemeral loopback port, real clients, and ways to wait.

Everything a test needs is reached through fixtures (test modules never import this file):

- ``harness`` — a started ``DispatchServer`` with short timers, a ``livekit.api.LiveKitAPI`` client, an
  aiohttp session, a job log fed by the dispatcher's listener, and factories for workers and clients.
  Override its config per test with ``@pytest.mark.parametrize("server_config", [{...}])``.
- ``make_harness(**config)`` — more servers with other settings in the same test.
- ``server`` / ``lkapi`` — the harness's server and API client, for tests that need only those.
- ``make_token(...)`` — a signed JWT with any grants, times, key or algorithm.

Waiting is event driven: every message a probe worker or presence client receives, every job state change
and every server log record wakes ``harness.wait_for(predicate)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt
import pytest
from livekit import api
from livekit.protocol import agent, room

from agentdispatch.server import DispatchServer, ServerConfig
from agentdispatch.server.events import JobEvent
from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions

API_KEY = "devkey"
API_SECRET = "secret"

#: short timers so the lifecycle tests run in well under a second each
FAST_CONFIG: Mapping[str, Any] = {
    "offer_timeout": 0.3,
    "dispatch_deadline": 1.0,
    "register_timeout": 1.0,
    "reconnect_grace": 0.5,
}

WAIT_TIMEOUT = 4.0


# -- tokens ---------------------------------------------------------------------------------------
def sign_token(
    *,
    key: str = API_KEY,
    secret: str = API_SECRET,
    identity: str = "",
    name: str = "",
    kind: str = "",
    ttl: float = 600.0,
    nbf_offset: float = 0.0,
    room_config: room.RoomConfiguration | None = None,
    algorithm: str = "HS256",
    include_exp: bool = True,
    **grants: Any,
) -> str:
    """A JWT shaped like livekit-api's, with full control over times, issuer and algorithm."""
    video = api.VideoGrants(**grants) if grants else None
    tok = api.AccessToken(key, secret).with_identity(identity)
    if video is not None:
        tok = tok.with_grants(video)
    if name:
        tok = tok.with_name(name)
    if kind:
        tok = tok.with_kind(kind)  # type: ignore[arg-type]
    if room_config is not None:
        tok = tok.with_room_config(room_config)
    claims = tok.claims.asdict()
    now = int(time.time())
    claims.update({"sub": identity, "iss": key, "nbf": now + int(nbf_offset)})
    if include_exp:
        claims["exp"] = now + int(ttl)
    if algorithm == "none":
        return jwt.encode(claims, None, algorithm="none")
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.fixture
def make_token() -> Callable[..., str]:
    return sign_token


# -- waiting ----------------------------------------------------------------------------------------
class Bus:
    """Wakes waiters whenever something observable happened; predicates decide what they wait for."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = WAIT_TIMEOUT, what: str = ""
    ) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = end - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
            self._event.clear()
            # the short cap only bounds latency if a state change had no event attached
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(remaining, 0.05))


class _BusLogHandler(logging.Handler):
    def __init__(self, bus: Bus) -> None:
        super().__init__(logging.DEBUG)
        self.bus = bus
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.bus.notify()


# -- clients ----------------------------------------------------------------------------------------
class ProbeWorker(SimWorker):
    """SimWorker that wakes the bus on every message and can fence the server with a ping."""

    _stamps = itertools.count(1_000_000)

    def __init__(self, options: SimWorkerOptions, bus: Bus) -> None:
        super().__init__(options)
        self.bus = bus

    async def _on_message(self, msg: agent.ServerMessage) -> None:
        await super()._on_message(msg)
        self.bus.notify()

    async def _read(self) -> None:
        try:
            await super()._read()
        finally:
            self.bus.notify()

    async def sync(self) -> None:
        """Return once the server has handled every frame this worker sent before (it answers in order)."""
        stamp = next(self._stamps)
        await self.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=stamp)))
        await self.bus.wait_for(
            lambda: any(p.last_timestamp == stamp for p in self.received.pongs), what=f"pong {stamp}"
        )

    def offered_ids(self) -> list[str]:
        return [o.job.id for o in self.received.offers]

    def assigned_ids(self) -> list[str]:
        return [a.job.id for a in self.received.assignments]

    async def wait_offers(self, n: int = 1, timeout: float = WAIT_TIMEOUT) -> list[agent.AvailabilityRequest]:
        await self.bus.wait_for(
            lambda: len(self.received.offers) >= n, timeout, what=f"{n} offers to {self.id}"
        )
        return list(self.received.offers)

    async def wait_assignments(self, n: int = 1) -> list[agent.JobAssignment]:
        await self.bus.wait_for(
            lambda: len(self.received.assignments) >= n, what=f"{n} assignments to {self.id}"
        )
        return list(self.received.assignments)

    async def wait_termination(self, job_id: str, timeout: float = WAIT_TIMEOUT) -> None:
        await self.bus.wait_for(
            lambda: job_id in self.received.terminations, timeout, what=f"termination of {job_id}"
        )


class PresenceClient:
    """A participant connected to ``/presence``: JSON events in, JSON messages out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, bus: Bus) -> None:
        self.ws = ws
        self.bus = bus
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="presence-client-read")

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self.events.append(json.loads(frame.data))
                    self.bus.notify()
        finally:
            self.closed = True
            self.bus.notify()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    async def wait_event(self, kind: str, n: int = 1) -> dict[str, Any]:
        await self.bus.wait_for(lambda: len(self.of_type(kind)) >= n, what=f"{n} {kind!r} presence events")
        return self.of_type(kind)[n - 1]

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def aclose(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class JobLog:
    """Every job state change the dispatcher announced, as copies."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.latest: dict[str, agent.Job] = {}
        self.history: list[tuple[str, int]] = []
        self.events: list[JobEvent] = []

    def on_event(self, event: object) -> None:
        if isinstance(event, JobEvent):
            self.events.append(event)
            self(event.job)

    def __call__(self, job: agent.Job) -> None:
        copy = agent.Job()
        copy.CopyFrom(job)
        self.latest[job.id] = copy
        self.history.append((job.id, job.state.status))
        self.bus.notify()

    def status(self, job_id: str) -> int | None:
        job = self.latest.get(job_id)
        return None if job is None else job.state.status


class Harness:
    def __init__(self, server: DispatchServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.bus = Bus()
        self.jobs = JobLog(self.bus)
        server.events.subscribe(self.jobs.on_event)
        self.api = api.LiveKitAPI(server.url, API_KEY, API_SECRET, session=http, failover=False)
        self.workers: list[ProbeWorker] = []
        self.presences: list[PresenceClient] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = WAIT_TIMEOUT, what: str = ""
    ) -> Any:
        return await self.bus.wait_for(predicate, timeout, what)

    async def wait_job_status(self, job_id: str, status: int) -> agent.Job:
        await self.wait_for(lambda: self.jobs.status(job_id) == status, what=f"{job_id} -> {status}")
        return self.jobs.latest[job_id]

    async def worker(self, *, register: bool = True, **options: Any) -> ProbeWorker:
        w = ProbeWorker(SimWorkerOptions(url=self.server.url, **options), self.bus)
        self.workers.append(w)
        await w.connect(register=register)
        return w

    async def raw_agent(
        self, token: str | None = None, *, query: Mapping[str, str] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        """A bare WebSocket on /agent (raises WSServerHandshakeError on a refused upgrade)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await self.http.ws_connect(self.server.ws_url + "/agent", headers=headers, params=query)
        self.sockets.append(ws)
        return ws

    @staticmethod
    async def read_until_close(
        ws: aiohttp.ClientWebSocketResponse, timeout: float = WAIT_TIMEOUT
    ) -> tuple[int | None, str, list[aiohttp.WSMessage]]:
        """Read frames until the server closes; returns (close code, close message, frames before it)."""
        frames: list[aiohttp.WSMessage] = []
        ending = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type in ending or msg.type == aiohttp.WSMsgType.ERROR:
                reason = (
                    msg.extra if msg.type == aiohttp.WSMsgType.CLOSE and isinstance(msg.extra, str) else ""
                )
                return ws.close_code, reason, frames
            frames.append(msg)

    async def presence(self, token: str) -> PresenceClient:
        ws = await self.http.ws_connect(
            self.server.ws_url + "/presence", headers={"Authorization": f"Bearer {token}"}
        )
        client = PresenceClient(ws, self.bus)
        self.presences.append(client)
        return client

    async def twirp(
        self,
        method: str,
        body: dict[str, Any] | str | bytes,
        token: str | None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """POST a raw Twirp request; returns (status, decoded JSON or raw bytes)."""
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body) if isinstance(body, dict) else body
        async with self.http.post(f"{self.server.url}/twirp/{method}", data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, json.loads(raw)
            return resp.status, raw

    async def twirp_with_headers(
        self, method: str, body: dict[str, Any], token: str, idempotency_key: str
    ) -> tuple[int, Any]:
        """A JSON Twirp call carrying an ``Idempotency-Key`` header."""
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": idempotency_key}
        async with self.http.post(f"{self.server.url}/twirp/{method}", json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def list_jobs(self, room_name: str) -> list[agent.Job]:
        jobs: list[agent.Job] = []
        for d in await self.api.agent_dispatch.list_dispatch(room_name):
            jobs.extend(d.state.jobs)
        return jobs

    async def aclose(self) -> None:
        for client in self.presences:
            await client.aclose()
        for ws in self.sockets:
            await ws.close()
        for w in self.workers:
            await w.aclose()
        await self.server.aclose()


@pytest.fixture
async def make_harness() -> Any:
    harnesses: list[Harness] = []
    http = aiohttp.ClientSession()
    logger = logging.getLogger("agentdispatch")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    handlers: list[_BusLogHandler] = []

    async def factory(**config: Any) -> Harness:
        server = DispatchServer(ServerConfig(**{"port": 0, **FAST_CONFIG, **config}))
        await server.start()
        h = Harness(server, http)
        handler = _BusLogHandler(h.bus)
        logger.addHandler(handler)
        handlers.append(handler)
        harnesses.append(h)
        return h

    yield factory
    for h in reversed(harnesses):
        await h.aclose()
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(old_level)
    await http.close()


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Overrides for the default harness; parametrize this fixture to change them."""
    return {}


@pytest.fixture
async def harness(make_harness: Any, server_config: dict[str, Any]) -> Harness:
    h: Harness = await make_harness(**server_config)
    return h


@pytest.fixture
def server(harness: Harness) -> DispatchServer:
    return harness.server


@pytest.fixture
def lkapi(harness: Harness) -> api.LiveKitAPI:
    return harness.api


def pytest_sessionstart(session: pytest.Session) -> None:
    """Install the Debian peers (redis-server, haproxy, prometheus, chromium, sipp) once, up front, so no
    test's timeout runs while apt-get downloads; tests that still lack one fail under CI=true."""
    from agentdispatch.testing.services import ensure_all_installed

    missing = ensure_all_installed()
    if missing:
        print(f"real peers not available: {', '.join(missing)}", flush=True)
