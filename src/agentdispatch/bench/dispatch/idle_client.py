"""One client process of the idle-fleet benchmark: many registered workers that take no jobs.

A worker here is a raw socket and a small asyncio.Protocol (no aiohttp, no SimWorker): at 50,000
workers the load generator must stay light, so registrations/s measure the server. The upgrade
request, the worker token, the register frame and the status frame are made once per process
(client frames are masked with key 0, which leaves the payload as is). One ticker task per process
sends the periodic traffic, spread evenly: with status on, an UpdateWorkerStatus per worker every
`status_every` seconds (what livekit-agents sends, 2.5 s); a WorkerPing every `ping_every` seconds
when that is > 0. Each process connects from its own loopback source address (127.0.0.<2+index>),
so 50,000 sockets to one server port do not run out of ephemeral ports. Times are
`time.perf_counter()` (CLOCK_MONOTONIC, one clock for all processes of the machine).

For the receive floor (floor.py) the same process first releases its workers (their WebSockets are
closed: 10,000 more sockets per side may not fit the open-file limit), then opens as many plain TCP
connections to the floor server, from the same source address, and the same ticker sends each of them
the same status frame bytes at the same period and spread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from livekit import api
from livekit.protocol import agent

from ...protocol import decode_server_message
from ...util.aio import wait_for
from ..common.client_process import run_client_process

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


def client_frame(payload: bytes) -> bytes:
    """A masked binary WebSocket frame, as a client must send it (mask key 0: the payload stays as is)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x82, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x82, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def _first_frame(data: bytes) -> bytes | None:
    """The payload of the first complete server frame in `data` (unmasked), or None if incomplete."""
    if len(data) < 2:
        return None
    size, offset = data[1] & 0x7F, 2
    if size == 126:
        size, offset = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, offset = int.from_bytes(data[2:10], "big"), 10
    if len(data) < offset + size:
        return None
    return data[offset : offset + size]


class PlainConnection(asyncio.Protocol):
    """A plain TCP connection to the floor server: it only writes what the ticker hands it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(frame)


class IdleWorker(PlainConnection):
    """One worker on a raw socket: upgrade, register, then only write what the ticker hands it.

    What the server sends after the register response (nothing, for an idle worker, but pongs) is
    counted and dropped: a worker costs the load generator a transport and this object.
    """

    def __init__(self, upgrade: bytes, register: bytes, done: asyncio.Future[None]) -> None:
        super().__init__()
        self._upgrade = upgrade
        self._register = register
        self._done = done
        self._buffer = b""
        self._stage = 0  # 0: upgrading, 1: registering, 2: registered
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(self._upgrade)

    def data_received(self, data: bytes) -> None:
        if self._stage == 2:
            self.received += 1
            return
        self._buffer += data
        if self._stage == 0:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self._buffer, self._stage = rest, 1
            assert self.transport is not None
            self.transport.write(self._register)
        payload = _first_frame(self._buffer)
        if payload is None:
            return
        self._buffer, self._stage = b"", 2
        if not decode_server_message(payload).HasField("register"):
            self._fail("first frame is not the register response")
        elif not self._done.done():
            self._done.set_result(None)

    def _fail(self, why: str) -> None:
        if not self._done.done():
            self._done.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail("connection lost")


class IdleFleet:
    def __init__(self, plan: IdlePlan) -> None:
        self.plan = plan
        self.workers: list[IdleWorker] = []
        self.plain: list[PlainConnection] = []
        self.errors: list[str] = []
        self._released: dict[str, Any] | None = None
        self._ticker: asyncio.Task[None] | None = None
        token = api.AccessToken(plan.api_key, plan.api_secret).with_grants(api.VideoGrants(agent=True))
        url = urlsplit(plan.url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80
        key = base64.b64encode(b"agentdispatch-ws").decode()
        self._upgrade = (
            f"GET /agent HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token.to_jwt()}\r\n\r\n"
        ).encode()
        register = agent.RegisterWorkerRequest(
            type=agent.JobType.JT_ROOM, agent_name=plan.agent_name, version="idle"
        )
        self._register = client_frame(agent.WorkerMessage(register=register).SerializeToString())
        status = agent.UpdateWorkerStatus(load=0.0, status=agent.WorkerStatus.WS_AVAILABLE, job_count=0)
        self._status = client_frame(agent.WorkerMessage(update_worker=status).SerializeToString())

    def _ping(self) -> bytes:
        ping = agent.WorkerPing(timestamp=time.time_ns() // 1_000_000)
        return client_frame(agent.WorkerMessage(ping=ping).SerializeToString())

    async def register(self) -> dict[str, Any]:
        plan = self.plan
        limit = raise_nofile(plan.workers + 512)
        slots = asyncio.Semaphore(plan.concurrency)
        started = time.perf_counter()
        done: list[float] = []

        async def one() -> None:
            async with slots:
                try:
                    await self._register_one()
                except (OSError, TimeoutError, RuntimeError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
                done.append(time.perf_counter())

        await asyncio.gather(*(one() for _ in range(plan.workers)))
        return {
            "registered": len(done),
            "started": started,
            "last": max(done, default=started),
            "errors": len(self.errors),
            "error_examples": self.errors[:3],
            "nofile": limit,
        }

    async def _register_one(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        source = (f"127.0.0.{2 + self.plan.index}", 0)
        _, worker = await loop.create_connection(
            lambda: IdleWorker(self._upgrade, self._register, done), self._host, self._port, local_addr=source
        )
        try:
            await wait_for(done, 60.0)
        except BaseException:
            if worker.transport is not None:
                worker.transport.close()
            raise
        self.workers.append(worker)

    async def traffic(self, status: bool) -> dict[str, Any]:
        """(Re)start the periodic frames: pings if `ping_every` > 0, status updates when `status`."""
        await self._stop_ticker()
        self._start_ticker(self.workers, self.plan.ping_every, self.plan.status_every if status else 0.0)
        return {"open": sum(1 for w in self.workers if not w.lost)}

    async def release(self) -> dict[str, Any]:
        """Stop the traffic and close every worker's WebSocket; what the fleet looked like before."""
        await self._stop_ticker()
        self._released = self._fleet_summary()
        for worker in self.workers:
            if worker.transport is not None:
                worker.transport.close()
        self.workers = []
        await asyncio.sleep(0.1)
        return self._released

    async def floor(self, host: str, port: int) -> dict[str, Any]:
        """Open `workers` plain connections to the floor server and send them the status traffic."""
        await self._stop_ticker()
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.plan.concurrency)
        source = (f"127.0.0.{2 + self.plan.index}", 0)
        errors: list[str] = []

        async def one() -> None:
            async with slots:
                try:
                    _, conn = await wait_for(
                        loop.create_connection(PlainConnection, host, port, local_addr=source), 60.0
                    )
                except (OSError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                self.plain.append(conn)

        await asyncio.gather(*(one() for _ in range(self.plan.workers)))
        self._start_ticker(self.plain, 0.0, self.plan.status_every)
        return {
            "connected": len(self.plain),
            "errors": len(errors),
            "error_examples": errors[:3],
            "frame_bytes": len(self._status),
        }

    def _start_ticker(
        self, targets: Sequence[PlainConnection], ping_every: float, status_every: float
    ) -> None:
        self._ticker = asyncio.get_running_loop().create_task(
            self._tick(targets, ping_every, status_every), name="idle-ticker"
        )

    async def _tick(self, targets: Sequence[PlainConnection], ping_every: float, status_every: float) -> None:
        """Each tick sends its share so that every target gets one frame of each kind per period (0: none)."""
        n = len(targets)
        pings = _Spread(n, ping_every)
        statuses = _Spread(n, status_every)
        while True:
            await asyncio.sleep(TICK)
            due = pings.due()
            if due:
                ping = self._ping()
                for i in due:
                    targets[i].send(ping)
            for i in statuses.due():
                targets[i].send(self._status)

    async def _stop_ticker(self) -> None:
        task, self._ticker = self._ticker, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fleet_summary(self) -> dict[str, Any]:
        open_now = sum(1 for w in self.workers if not w.lost)
        received = sum(w.received for w in self.workers)
        return {"open": open_now, "closed_by_server": len(self.workers) - open_now, "received": received}

    async def aclose(self) -> dict[str, Any]:
        """Close everything; the fleet's summary as it was at release, or as it is now if never released."""
        await self._stop_ticker()
        summary = self._released or self._fleet_summary()
        for conn in [*self.plain, *self.workers]:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0.1)
        return summary


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
        if self._n == 0 or self._period <= 0:  # a period of 0: never
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
        "release": fleet.release,
        "floor": fleet.floor,
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
    run_client_process(_serve(plan, conn), conn)
