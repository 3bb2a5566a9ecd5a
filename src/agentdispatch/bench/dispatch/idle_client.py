"""One client process of the idle-fleet benchmark: many registered workers that take no jobs.

A worker here is a WebSocket and a reader task, nothing more (no SimWorker: at 50,000 workers the
load generator must stay light). Registration bodies, the worker token and the periodic frames are
made once per process. One ticker task per process sends the periodic traffic, spread evenly: a
WorkerPing per worker every `ping_every` seconds, and with status on an UpdateWorkerStatus per
worker every `status_every` seconds (what livekit-agents sends, 2.5 s). Each process connects from
its own loopback source address (127.0.0.<2+index>), so 50,000 sockets to one server port do not
run out of ephemeral ports. Times are `time.perf_counter()` (CLOCK_MONOTONIC, one clock for all
processes of the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import agent

from ...protocol import decode_server_message
from ...protocol.jwt_warnings import ignore_short_hmac_key_warning
from ...protocol.urls import agent_ws_url

TICK = 0.05


@dataclass(frozen=True)
class IdlePlan:
    index: int
    url: str
    api_key: str
    api_secret: str
    agent_name: str
    workers: int
    #: registrations in flight at once in this process
    concurrency: int
    ping_every: float
    status_every: float


def raise_nofile(need: int) -> int:
    """Soft (and, when allowed, hard) RLIMIT_NOFILE up to `need`; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        return need
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class IdleFleet:
    def __init__(self, plan: IdlePlan) -> None:
        self.plan = plan
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        self.frames_received = 0
        self.closed_by_server = 0
        self._session: aiohttp.ClientSession | None = None
        self._ticker: asyncio.Task[None] | None = None
        token = api.AccessToken(plan.api_key, plan.api_secret).with_grants(api.VideoGrants(agent=True))
        self._headers = {"Authorization": f"Bearer {token.to_jwt()}"}
        register = agent.RegisterWorkerRequest(
            type=agent.JobType.JT_ROOM, agent_name=plan.agent_name, version="idle"
        )
        self._register = agent.WorkerMessage(register=register).SerializeToString()
        status = agent.UpdateWorkerStatus(load=0.0, status=agent.WorkerStatus.WS_AVAILABLE, job_count=0)
        self._status = agent.WorkerMessage(update_worker=status).SerializeToString()

    def _ping(self) -> bytes:
        ping = agent.WorkerPing(timestamp=time.time_ns() // 1_000_000)
        return agent.WorkerMessage(ping=ping).SerializeToString()

    async def register(self) -> dict[str, Any]:
        plan = self.plan
        limit = raise_nofile(plan.workers + 512)
        connector = aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{2 + plan.index}", 0))
        self._session = aiohttp.ClientSession(connector=connector)
        slots = asyncio.Semaphore(plan.concurrency)
        started = time.perf_counter()
        done: list[float] = []

        async def one() -> None:
            async with slots:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, RuntimeError):
                    await self._register_one()
                    done.append(time.perf_counter())
                    return
                self.errors.append("registration failed")

        await asyncio.gather(*(one() for _ in range(plan.workers)))
        return {
            "registered": len(done),
            "started": started,
            "last": max(done, default=started),
            "errors": len(self.errors),
            "nofile": limit,
        }

    async def _register_one(self) -> None:
        if self._session is None:
            raise RuntimeError("no session")
        ws = await self._session.ws_connect(agent_ws_url(self.plan.url), headers=self._headers)
        try:
            await ws.send_bytes(self._register)
            frame = await ws.receive(timeout=60)
            msg = decode_server_message(frame.data)
            if not msg.HasField("register"):
                raise RuntimeError(f"expected register, got {msg.WhichOneof('message')}")
        except BaseException:
            await ws.close()
            raise
        self.sockets.append(ws)
        self.readers.append(asyncio.get_running_loop().create_task(self._drain(ws), name="idle-reader"))

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                break
            self.frames_received += 1
        if ws.close_code is not None:
            self.closed_by_server += 1

    async def traffic(self, status: bool) -> dict[str, Any]:
        """(Re)start the periodic frames: pings always, status updates when `status`."""
        await self._stop_ticker()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(status), name="idle-ticker")
        return {"open": sum(1 for ws in self.sockets if not ws.closed), "received": self.frames_received}

    async def _tick(self, status: bool) -> None:
        """Each tick sends its share so that every worker gets one frame of each kind per period."""
        n = len(self.sockets)
        pings = _Spread(n, self.plan.ping_every)
        statuses = _Spread(n, self.plan.status_every)
        while True:
            await asyncio.sleep(TICK)
            ping = self._ping()
            for i in pings.due():
                await self._send(i, ping)
            if status:
                for i in statuses.due():
                    await self._send(i, self._status)

    async def _send(self, i: int, data: bytes) -> None:
        ws = self.sockets[i]
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(data)

    async def _stop_ticker(self) -> None:
        task, self._ticker = self._ticker, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> dict[str, Any]:
        await self._stop_ticker()
        open_now = sum(1 for ws in self.sockets if not ws.closed)
        closed_early = self.closed_by_server
        for i in range(0, len(self.sockets), 500):
            await asyncio.gather(*(ws.close() for ws in self.sockets[i : i + 500]), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        return {"open": open_now, "closed_by_server": closed_early, "received": self.frames_received}


class _Spread:
    """Indexes 0..n-1 handed out evenly over `period` seconds, round and round, as time passes."""

    def __init__(self, n: int, period: float) -> None:
        self._n = n
        self._period = period
        self._cursor = 0
        self._credit = 0.0
        self._last = time.perf_counter()

    def due(self) -> list[int]:
        now = time.perf_counter()
        if self._n == 0 or self._period <= 0:
            return []
        self._credit += self._n * (now - self._last) / self._period
        self._last = now
        count = min(int(self._credit), self._n)
        self._credit -= count
        start = self._cursor
        self._cursor = (start + count) % self._n
        return [(start + k) % self._n for k in range(count)]


async def _serve(plan: IdlePlan, conn: Connection) -> None:
    fleet = IdleFleet(plan)
    loop = asyncio.get_running_loop()
    handlers: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "register": fleet.register,
        "traffic": fleet.traffic,
    }
    try:
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            if command == "close":
                break
            conn.send(("ok", await handlers[command](*args)))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"idle client {plan.index} crashed: {type(exc).__name__}: {exc}"))
        raise
    finally:
        summary = await fleet.aclose()
    conn.send(("ok", summary))


def idle_client_main(plan: IdlePlan, conn: Connection) -> None:
    """Entry point of an idle-fleet client process (multiprocessing target)."""
    ignore_short_hmac_key_warning()
    try:
        asyncio.run(_serve(plan, conn))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    finally:
        conn.close()
