"""A lightweight simulated worker: a real protocol client over a real WebSocket, no processes.

Used by the dispatch benchmark, the demo, and the server tests. Its behaviour on offers is set by
`policy` ("accept", "reject", "terminate", "ignore") and an optional answer delay; it records what it
received so callers can assert on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from livekit import api
from livekit.protocol import agent

from ..protocol import Encoding, decode_server_message, encode
from ..protocol.urls import agent_ws_url
from ..util.aio import wait_for

OfferPolicy = str  # "accept" | "reject" | "terminate" | "ignore"


@dataclass
class SimWorkerOptions:
    url: str
    api_key: str = "devkey"
    api_secret: str = "secret"
    agent_name: str = ""
    job_type: int = agent.JobType.JT_ROOM
    deployment: str = ""
    namespace: str | None = None
    policy: OfferPolicy = "accept"
    answer_delay: float = 0.0
    encoding: Encoding = Encoding.BINARY
    #: seconds a job "runs" after assignment before JS_SUCCESS is reported; None = never end
    job_duration: float | None = None
    load: float = 0.0
    #: None: report status only when told (tests control every frame). A number: like a real worker, report
    #: `load` and the running job count whenever a job starts or ends, and at least this often (seconds).
    status_interval: float | None = None
    #: permessage-deflate window bits to offer the server (9..15); 0 = no compression, like livekit-agents
    compress: int = 0


@dataclass
class Received:
    offers: list[agent.AvailabilityRequest] = field(default_factory=list)
    assignments: list[agent.JobAssignment] = field(default_factory=list)
    terminations: list[str] = field(default_factory=list)
    pongs: list[agent.WorkerPong] = field(default_factory=list)
    assigned_at: dict[str, float] = field(default_factory=dict)


class SimWorker:
    def __init__(self, options: SimWorkerOptions, session: aiohttp.ClientSession | None = None) -> None:
        self.opts = options
        self.id = ""
        self.received = Received()
        self.on_assignment: Callable[[agent.JobAssignment], None] | None = None
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Queue[agent.ServerMessage] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._pong_waiter: asyncio.Future[float] | None = None
        #: jobs assigned and not yet ended (reported in status updates)
        self.running: set[str] = set()
        self._status_dirty = asyncio.Event()

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None:
            raise RuntimeError("not connected")
        return self._ws

    def token(self) -> str:
        grants = api.VideoGrants(agent=True)
        return api.AccessToken(self.opts.api_key, self.opts.api_secret).with_grants(grants).to_jwt()

    async def connect(self, register: bool = True) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = agent_ws_url(self.opts.url)
        self._ws = await self._session.ws_connect(
            url, headers={"Authorization": f"Bearer {self.token()}"}, compress=self.opts.compress
        )
        if register:
            await self.register()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="simworker-read")
        if register and self.opts.status_interval is not None:
            self._start(self._report_status(self.opts.status_interval))

    async def register(self) -> None:
        req = agent.RegisterWorkerRequest(
            type=self.opts.job_type,  # type: ignore[arg-type]
            agent_name=self.opts.agent_name,
            version="sim",
            deployment=self.opts.deployment,
        )
        if self.opts.namespace is not None:
            req.namespace = self.opts.namespace
        await self.send(agent.WorkerMessage(register=req))
        frame = await self.ws.receive(timeout=10)
        msg = decode_server_message(frame.data)
        if not msg.HasField("register"):
            raise RuntimeError(f"expected register response, got {msg.WhichOneof('message')}")
        self.id = msg.register.worker_id
        if self.opts.load:
            await self.report(self.opts.load)

    async def send(self, msg: agent.WorkerMessage) -> None:
        data = encode(msg, self.opts.encoding)
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def report(
        self, load: float, status: int = agent.WorkerStatus.WS_AVAILABLE, job_count: int = 0
    ) -> None:
        update = agent.UpdateWorkerStatus(load=load, status=status, job_count=job_count)  # type: ignore[arg-type]
        await self.send(agent.WorkerMessage(update_worker=update))

    async def answer(self, job_id: str, available: bool, terminate: bool = False) -> None:
        resp = agent.AvailabilityResponse(job_id=job_id, available=available, terminate=terminate)
        await self.send(agent.WorkerMessage(availability=resp))

    async def finish(self, job_id: str, status: int = agent.JobStatus.JS_SUCCESS, error: str = "") -> None:
        upd = agent.UpdateJobStatus(job_id=job_id, status=status, error=error)  # type: ignore[arg-type]
        await self.send(agent.WorkerMessage(update_job=upd))
        if status != agent.JobStatus.JS_RUNNING:
            self._job_changed(job_id, running=False)

    def _job_changed(self, job_id: str, running: bool) -> None:
        if running:
            self.running.add(job_id)
        else:
            self.running.discard(job_id)
        self._status_dirty.set()

    async def _report_status(self, interval: float) -> None:
        """Status on every job change and at least every `interval` s (what our worker runtime does)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_for(self._status_dirty.wait(), interval)
            self._status_dirty.clear()
            await self.report(self.opts.load, job_count=len(self.running))

    async def ping(self, timeout: float = 5.0) -> float:
        """Send a WorkerPing and wait for its pong: the round trip in seconds (time.perf_counter).

        The arrival time is taken where the pong frame is decoded, the same place assignment times are
        taken, so round trips and dispatch latencies are measured alike. One ping at a time.
        """
        if self._pong_waiter is not None:
            raise RuntimeError("a ping is already in flight")
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pong_waiter = waiter
        try:
            started = time.perf_counter()
            await self.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=time.time_ns() // 1_000_000)))
            return await wait_for(waiter, timeout) - started
        finally:
            self._pong_waiter = None

    async def next_event(self, kind: str, timeout: float = 5.0) -> agent.ServerMessage:
        """The next received message of a kind (availability/assignment/termination/pong)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            msg = await self.next_message(max(0.0, end - loop.time()))
            if msg.WhichOneof("message") == kind:
                return msg

    async def next_message(self, timeout: float = 5.0) -> agent.ServerMessage:
        """The next received message, whatever its kind (in the order the server sent them)."""
        return await wait_for(self._events.get(), timeout)

    async def _read(self) -> None:
        ws = self.ws
        try:
            async for frame in ws:
                if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    break
                await self._on_message(decode_server_message(frame.data))
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    async def _on_message(self, msg: agent.ServerMessage) -> None:
        which = msg.WhichOneof("message")
        self._events.put_nowait(msg)
        if which == "availability":
            self.received.offers.append(msg.availability)
            if self.opts.answer_delay:
                self._start(self._answer_offer(msg.availability.job.id))
            else:  # answered from the reader: no task and loop turn per offer
                await self._answer_offer(msg.availability.job.id)
        elif which == "assignment":
            job_id = msg.assignment.job.id
            self.received.assignments.append(msg.assignment)
            self.received.assigned_at[job_id] = time.perf_counter()
            if self.on_assignment is not None:
                self.on_assignment(msg.assignment)
            await self.finish(job_id, agent.JobStatus.JS_RUNNING)
            self._job_changed(job_id, running=True)
            if self.opts.job_duration is not None:
                self._start(self._run_job(job_id, self.opts.job_duration))
        elif which == "termination":
            self.received.terminations.append(msg.termination.job_id)
            self._job_changed(msg.termination.job_id, running=False)
        elif which == "pong":
            self.received.pongs.append(msg.pong)
            waiter = self._pong_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(time.perf_counter())

    def _start(self, coro: asyncio.Future[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_offer(self, job_id: str) -> None:
        policy = self.opts.policy
        if policy == "ignore":
            return
        if self.opts.answer_delay:
            await asyncio.sleep(self.opts.answer_delay)
        if policy == "accept":
            await self.answer(job_id, True)
        elif policy == "terminate":
            await self.answer(job_id, False, terminate=True)
        else:
            await self.answer(job_id, False)

    async def _run_job(self, job_id: str, duration: float) -> None:
        await asyncio.sleep(duration)
        if job_id not in self.received.terminations:
            await self.finish(job_id, agent.JobStatus.JS_SUCCESS)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._own_session and self._session is not None:
            await self._session.close()
