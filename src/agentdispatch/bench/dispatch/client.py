"""One client process of the dispatch benchmark: simulated workers plus a CreateDispatch generator.

The benchmark's parent process starts one or more of these (multiprocessing, spawn) and drives them
over a pipe with small commands, so load generation can use more than one core while the server
runs in its own process. Every time here is `time.perf_counter()`, which on Linux is
CLOCK_MONOTONIC: one clock for all processes of the machine, so a send time taken in one client
process and an assignment time taken in another are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import agent, agent_dispatch

from ...testing.simworker import SimWorker, SimWorkerOptions
from ..common.client_process import run_client_process

CREATE_PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"
#: seconds between a simulated worker's status reports when nothing changes (our worker runtime's default)
STATUS_INTERVAL = 2.5
CLIENTS = ("livekit-api", "raw")
RTT_AGENT_SUFFIX = "-rtt"

#: (dispatch_id, room, t_before_send, t_response)
Sent = tuple[str, str, float, float]
#: (dispatch_id, room, t_assignment_received, worker_id)
Assigned = tuple[str, str, float, str]


@dataclass(frozen=True)
class ClientPlan:
    """What one client process does; built by the parent, pickled to the child."""

    index: int
    url: str
    api_key: str
    api_secret: str
    agent_name: str
    workers: int
    dispatches: int
    #: dispatches/s for this process; 0 = as fast as `concurrency` allows
    rate: float
    concurrency: int
    client: str
    room_prefix: str
    #: this process also hosts the WebSocket round-trip prober
    prober: bool
    loaded_ping_interval: float = 0.005
    request_timeout: float = 30.0
    connect_batch: int = 50


class DispatchSender:
    """Sends CreateDispatch with livekit-api's LiveKitAPI, or as a raw Twirp protobuf POST."""

    def __init__(self, plan: ClientPlan) -> None:
        self._plan = plan
        connector = aiohttp.TCPConnector(limit=max(1, plan.concurrency) + 4, force_close=False)
        timeout = aiohttp.ClientTimeout(total=plan.request_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._lk = api.LiveKitAPI(
            plan.url, plan.api_key, plan.api_secret, session=self._session, failover=False
        )
        #: raw client: room -> (headers, serialised request), made before the clock starts
        self._prepared: dict[str, tuple[dict[str, str], bytes]] = {}
        self._create_url = plan.url + CREATE_PATH

    def prepare(self, rooms: list[str]) -> None:
        """Raw client only: mint the room-scoped admin tokens and serialise the bodies before the clock."""
        if self._plan.client != "raw":
            return
        for room in rooms:
            grants = api.VideoGrants(room_admin=True, room=room)
            token = api.AccessToken(self._plan.api_key, self._plan.api_secret).with_grants(grants)
            headers = {"Authorization": f"Bearer {token.to_jwt()}", "Content-Type": "application/protobuf"}
            req = agent_dispatch.CreateAgentDispatchRequest(agent_name=self._plan.agent_name, room=room)
            self._prepared[room] = (headers, req.SerializeToString())

    async def create(self, room: str) -> tuple[str, str]:
        """Create the dispatch; (dispatch id, room) as the server answered."""
        if self._plan.client != "raw":
            req = agent_dispatch.CreateAgentDispatchRequest(agent_name=self._plan.agent_name, room=room)
            result: agent_dispatch.AgentDispatch = await self._lk.agent_dispatch.create_dispatch(req)
            return result.id, result.room
        headers, data = self._prepared.pop(room)
        async with self._session.post(self._create_url, data=data, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=body[:200].decode(errors="replace")
                )
        dispatch = agent_dispatch.AgentDispatch.FromString(body)
        return dispatch.id, dispatch.room

    async def aclose(self) -> None:
        await self._session.close()


class HttpProber:
    """Idle HTTP round trips: GET / on one kept-alive connection, the HTTP twin of the WS prober."""

    def __init__(self, url: str) -> None:
        self._url = url + "/"
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False))

    async def open(self) -> None:
        await self.get()  # opens the connection; not a sample

    async def get(self) -> float:
        started = time.perf_counter()
        async with self._session.get(self._url) as resp:
            await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        return time.perf_counter() - started

    async def aclose(self) -> None:
        await self._session.close()


class LoadGenerator:
    """Creates dispatches (one room each) at a rate or as fast as bounded concurrency allows."""

    def __init__(self, sender: DispatchSender, rate: float, concurrency: int) -> None:
        self._sender = sender
        self._rate = rate
        self._concurrency = max(1, concurrency)
        self.sent: list[Sent] = []
        self.errors: list[str] = []

    async def _one(self, room: str) -> None:
        started = time.perf_counter()
        try:
            dispatch_id, _ = await self._sender.create(room)
        except (api.ServerError, aiohttp.ClientError, TimeoutError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        self.sent.append((dispatch_id, room, started, time.perf_counter()))

    async def run(self, rooms: list[str]) -> None:
        if self._rate > 0:
            await self._paced(rooms, self._rate)
        else:
            await self._closed_loop(rooms)

    async def _closed_loop(self, rooms: list[str]) -> None:
        pending = iter(rooms)

        async def lane() -> None:
            for room in pending:
                await self._one(room)

        await asyncio.gather(*(lane() for _ in range(self._concurrency)))

    async def _paced(self, rooms: list[str], rate: float) -> None:
        """Open loop: dispatch i is due at start + i/rate; late ones go at once (catch up)."""
        slots = asyncio.Semaphore(self._concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def guarded(room: str) -> None:
            try:
                await self._one(room)
            finally:
                slots.release()

        start = time.perf_counter()
        for i, room in enumerate(rooms):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(guarded(room), name=f"dispatch:{room}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


class ClientProcess:
    """The simulated workers, the prober and the generator of one process."""

    def __init__(self, plan: ClientPlan) -> None:
        self.plan = plan
        self.workers: list[SimWorker] = []
        self.prober: SimWorker | None = None
        self.assigned: list[Assigned] = []
        self._taken = 0
        self._ws_session: aiohttp.ClientSession | None = None
        self._sender: DispatchSender | None = None
        self._loaded_rtt: list[float] = []
        self._probe_task: asyncio.Task[None] | None = None

    def _worker_options(self, agent_name: str) -> SimWorkerOptions:
        plan = self.plan
        return SimWorkerOptions(
            url=plan.url,
            api_key=plan.api_key,
            api_secret=plan.api_secret,
            agent_name=agent_name,
            # like a real worker: load on every job change and every 2.5 s (the server counts jobs assigned
            # since the last report into the projected load, and distrusts a status older than 15 s)
            status_interval=STATUS_INTERVAL,
        )

    def _recorder(self, worker: SimWorker) -> Callable[[agent.JobAssignment], None]:
        def record(assignment: agent.JobAssignment) -> None:
            job = assignment.job
            at = worker.received.assigned_at.get(job.id, time.perf_counter())
            self.assigned.append((job.dispatch_id, job.room.name, at, worker.id))

        return record

    async def setup(self) -> dict[str, Any]:
        self._ws_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._sender = DispatchSender(self.plan)
        self.workers = [
            SimWorker(self._worker_options(self.plan.agent_name), self._ws_session)
            for _ in range(self.plan.workers)
        ]
        for worker in self.workers:
            worker.on_assignment = self._recorder(worker)
        batch = max(1, self.plan.connect_batch)
        for i in range(0, len(self.workers), batch):
            await asyncio.gather(*(w.connect() for w in self.workers[i : i + batch]))
        if self.plan.prober:
            self.prober = SimWorker(
                self._worker_options(self.plan.agent_name + RTT_AGENT_SUFFIX), self._ws_session
            )
            await self.prober.connect()
        return {"worker_ids": [w.id for w in self.workers]}

    def rooms(self, kind: str, count: int) -> list[str]:
        return [f"{self.plan.room_prefix}-{kind}-{self.plan.index}-{i}" for i in range(count)]

    async def idle_rtt(self, samples: int) -> dict[str, Any]:
        """Idle round trips, WebSocket (WorkerPing -> WorkerPong) and HTTP (GET /), alternating."""
        if self.prober is None:
            return {"rtt": [], "http_rtt": []}
        http = HttpProber(self.plan.url)
        ws: list[float] = []
        http_rtt: list[float] = []
        try:
            await http.open()
            for _ in range(samples):
                ws.append(await self.prober.ping())
                http_rtt.append(await http.get())
        finally:
            await http.aclose()
        return {"rtt": ws, "http_rtt": http_rtt}

    async def warmup(self) -> dict[str, Any]:
        """One dispatch per concurrency slot: opens the HTTP connections, exercises every path."""
        if self._sender is None:
            raise RuntimeError("setup() first")
        rooms = self.rooms("warmup", self.plan.concurrency)
        self._sender.prepare(rooms)
        gen = LoadGenerator(self._sender, rate=0, concurrency=self.plan.concurrency)
        await gen.run(rooms)
        await asyncio.sleep(0.2)
        return {"sent": len(gen.sent), "errors": gen.errors[:5]}

    async def run(self) -> dict[str, Any]:
        """The measured phase: send this process's dispatches; probe round trips meanwhile."""
        if self._sender is None:
            raise RuntimeError("setup() first")
        rooms = self.rooms("bench", self.plan.dispatches)
        self._sender.prepare(rooms)
        if self.prober is not None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loaded(), name="prober")
        gen = LoadGenerator(self._sender, self.plan.rate, self.plan.concurrency)
        await gen.run(rooms)
        return {"sent": gen.sent, "errors": gen.errors}

    async def _probe_loaded(self) -> None:
        prober = self.prober
        if prober is None:
            return
        while True:
            self._loaded_rtt.append(await prober.ping())
            await asyncio.sleep(self.plan.loaded_ping_interval)

    async def stop_probe(self) -> dict[str, Any]:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return {"rtt": list(self._loaded_rtt)}

    def collect(self) -> dict[str, Any]:
        """Assignments received since the previous collect."""
        new = self.assigned[self._taken :]
        self._taken = len(self.assigned)
        return {"assigned": new}

    async def aclose(self) -> None:
        await self.stop_probe()
        everyone = [*self.workers, *([self.prober] if self.prober else [])]
        await asyncio.gather(*(w.aclose() for w in everyone), return_exceptions=True)
        if self._sender is not None:
            await self._sender.aclose()
        if self._ws_session is not None:
            await self._ws_session.close()


async def _serve(plan: ClientPlan, conn: Connection) -> None:
    client = ClientProcess(plan)
    loop = asyncio.get_running_loop()
    handlers: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "setup": client.setup,
        "idle_rtt": client.idle_rtt,
        "warmup": client.warmup,
        "run": client.run,
        "stop_probe": client.stop_probe,
    }
    try:
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            if command == "close":
                break
            if command == "collect":
                conn.send(("ok", client.collect()))
                continue
            if command == "cpu":
                # this process's own CPU clock: nanosecond resolution, where /proc counts 10 ms ticks
                conn.send(("ok", {"cpu_seconds": time.process_time()}))
                continue
            try:
                reply = await handlers[command](*args)
            except (OSError, aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                conn.send(("error", f"client {plan.index} {command}: {type(exc).__name__}: {exc}"))
                continue
            conn.send(("ok", reply))
    except BaseException as exc:
        # a bug: tell the parent what it was instead of leaving it waiting, then fail loudly
        with contextlib.suppress(OSError):
            conn.send(("error", f"client {plan.index} crashed: {type(exc).__name__}: {exc}"))
        raise
    finally:
        await client.aclose()
    conn.send(("ok", {"closed": True}))


def client_main(plan: ClientPlan, conn: Connection) -> None:
    """Entry point of a client process (multiprocessing target)."""
    run_client_process(_serve(plan, conn), conn)
