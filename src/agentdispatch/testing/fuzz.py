"""Protocol and API fuzzing against a real server process (issue: adversarial inputs).

Sends random and mutated frames, wrong message orders, oversized frames, unknown job ids, replays,
status floods and connect/disconnect churn to `/agent`, and malformed bodies to the Twirp APIs, while a
well-behaved worker keeps running a job. Reports what was tried, the server's RSS before and after,
and whether anything broke (server crash, a 5xx answer, the bystander's job disturbed).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass, field

import aiohttp
import psutil
from livekit import api
from livekit.protocol import agent

from ..protocol import Encoding, encode, ids
from ..protocol.limits import MAX_FRAME_BYTES
from ..protocol.urls import agent_ws_url
from .simworker import SimWorker, SimWorkerOptions

DISPATCH_PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


@dataclass(frozen=True)
class FuzzOptions:
    url: str
    server_pid: int
    frames: int = 2000
    churn: int = 300
    api_requests: int = 500
    status_flood: int = 5000
    seed: int = 1
    api_key: str = "devkey"
    api_secret: str = "secret"


@dataclass
class FuzzReport:
    frames_sent: int = 0
    connections: int = 0
    api_requests: int = 0
    api_5xx: int = 0
    api_status_counts: dict[str, int] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    server_alive: bool = True
    bystander_job_intact: bool = True
    crashes: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _valid_frames(rng: random.Random) -> list[agent.WorkerMessage]:
    job_id = ids.JOB + "".join(rng.choice("abcdef0123456789") for _ in range(12))
    return [
        agent.WorkerMessage(ping=agent.WorkerPing(timestamp=rng.randrange(1 << 40))),
        agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=rng.uniform(-5, 5), job_count=3)),
        agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id=job_id, available=True)),
        agent.WorkerMessage(
            update_job=agent.UpdateJobStatus(job_id=job_id, status=agent.JobStatus.JS_SUCCESS)
        ),
        agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])),
        agent.WorkerMessage(register=agent.RegisterWorkerRequest(agent_name="again")),
    ]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(buf))
        if op < 0.4:
            buf[pos] = rng.randrange(256)
        elif op < 0.7:
            buf.insert(pos, rng.randrange(256))
        elif len(buf) > 1:
            del buf[pos]
    return bytes(buf)


def _random_frame(rng: random.Random) -> bytes | str:
    choice = rng.random()
    frames = _valid_frames(rng)
    if choice < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if choice < 0.6:
        return _mutate(frames[rng.randrange(len(frames))].SerializeToString(), rng)
    if choice < 0.75:
        text = str(encode(frames[rng.randrange(len(frames))], Encoding.JSON))
        return text[: rng.randint(0, len(text))] if rng.random() < 0.5 else text
    if choice < 0.85:
        return rng.choice(['{"register": 5}', "[]", "null", '{"ping": {"timestamp": "x"}}', ""])
    return frames[rng.randrange(len(frames))].SerializeToString()


def _token(opts: FuzzOptions, grants: api.VideoGrants) -> str:
    return api.AccessToken(opts.api_key, opts.api_secret).with_grants(grants).to_jwt()


async def _fuzz_agent(
    opts: FuzzOptions, http: aiohttp.ClientSession, rng: random.Random, rep: FuzzReport
) -> None:
    ws_url = agent_ws_url(opts.url)
    headers = {"Authorization": f"Bearer {_token(opts, api.VideoGrants(agent=True))}"}
    sent = 0
    while sent < opts.frames:
        async with http.ws_connect(ws_url, headers=headers) as ws:
            rep.connections += 1
            if rng.random() < 0.7:  # most connections register first, then misbehave
                reg = agent.WorkerMessage(
                    register=agent.RegisterWorkerRequest(agent_name=f"fz{rng.randrange(3)}")
                )
                await ws.send_bytes(reg.SerializeToString())
            for _ in range(rng.randint(1, 20)):
                frame = _random_frame(rng)
                try:
                    if isinstance(frame, str):
                        await ws.send_str(frame)
                    else:
                        await ws.send_bytes(frame)
                except (ConnectionError, RuntimeError):
                    break
                sent += 1
                if ws.closed:
                    break
    rep.frames_sent += sent
    # oversized frame: the server may cut the connection before the client has written it all
    async with http.ws_connect(ws_url, headers=headers, max_msg_size=0) as ws:
        rep.connections += 1
        try:
            await ws.send_bytes(b"\x0a" + b"\xff" * (MAX_FRAME_BYTES + 1024 * 1024))
            await ws.receive(timeout=10)
        except (ConnectionError, RuntimeError):
            pass
        rep.frames_sent += 1


async def _flood_status(opts: FuzzOptions, rep: FuzzReport) -> None:
    worker = SimWorker(SimWorkerOptions(url=opts.url, agent_name="flood"))
    await worker.connect()
    rep.connections += 1
    for i in range(opts.status_flood):
        await worker.report((i % 100) / 100.0)
    rep.frames_sent += opts.status_flood
    await worker.aclose()


async def _churn(opts: FuzzOptions, rep: FuzzReport) -> None:
    for i in range(opts.churn):
        worker = SimWorker(SimWorkerOptions(url=opts.url, agent_name=f"churn{i % 5}"))
        await worker.connect(register=i % 2 == 0)
        rep.connections += 1
        await worker.aclose()


async def _fuzz_api(
    opts: FuzzOptions, http: aiohttp.ClientSession, rng: random.Random, rep: FuzzReport
) -> None:
    admin = _token(opts, api.VideoGrants(room_admin=True, room="fz", room_create=True, room_list=True))
    bodies: list[tuple[str, bytes]] = [
        ("application/json", b"{not json"),
        ("application/json", b'{"room": 5, "agent_name": ["x"]}'),
        ("application/json", b'{"room": "fz", "restart_policy": "NOPE"}'),
        ("application/json", b"[]"),
        ("application/protobuf", b"\xff\xff\xff\xff"),
        ("application/json", b'{"room": "' + b"x" * 5000 + b'"}'),
        ("text/plain", b"hello"),
        ("application/json", b"{" * 100_000),
        ("application/json", b" " * (2 * 1024 * 1024)),
    ]
    paths = [
        DISPATCH_PATH,
        "/twirp/livekit.RoomService/CreateRoom",
        "/twirp/livekit.RoomService/Nope",
        "/twirp/x",
    ]
    for i in range(opts.api_requests):
        ctype, body = bodies[i % len(bodies)]
        if rng.random() < 0.3:
            body = _mutate(body[:4096], rng)
        auth = rng.choice([f"Bearer {admin}", "Bearer nope", "", "Basic abc", f"Bearer {admin[:-3]}"])
        headers = {"Content-Type": ctype, **({"Authorization": auth} if auth else {})}
        async with http.post(opts.url + rng.choice(paths), data=body, headers=headers) as resp:
            await resp.read()
            rep.api_requests += 1
            key = str(resp.status)
            rep.api_status_counts[key] = rep.api_status_counts.get(key, 0) + 1
            if resp.status >= 500 and resp.status != 501:  # 501 = Twirp unimplemented, a real answer
                rep.api_5xx += 1


async def run_fuzz(opts: FuzzOptions) -> FuzzReport:
    rng = random.Random(opts.seed)
    rep = FuzzReport()
    proc = psutil.Process(opts.server_pid)
    rep.rss_before_mb = proc.memory_info().rss / 2**20
    bystander = SimWorker(SimWorkerOptions(url=opts.url, agent_name="bystander"))
    await bystander.connect()
    lk = api.LiveKitAPI(opts.url, opts.api_key, opts.api_secret)
    try:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="bystander", room="by")
        )
        await bystander.next_event("assignment", timeout=10)
        async with aiohttp.ClientSession() as http:
            await _fuzz_agent(opts, http, rng, rep)
            await _fuzz_api(opts, http, rng, rep)
        await _flood_status(opts, rep)
        await _churn(opts, rep)
        dispatches = await lk.agent_dispatch.list_dispatch("by")
        job = dispatches[0].state.jobs[0]
        rep.bystander_job_intact = (
            job.state.status == agent.JobStatus.JS_RUNNING
            and job.state.worker_id == bystander.id
            and not bystander.closed.is_set()
            and not bystander.received.terminations
        )
    finally:
        await lk.aclose()
        await bystander.aclose()
    rep.server_alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    rep.crashes = 0 if rep.server_alive else 1
    if rep.server_alive:
        await asyncio.sleep(0.5)
        rep.rss_after_mb = proc.memory_info().rss / 2**20
    return rep
