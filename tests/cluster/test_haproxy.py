"""Server processes behind a real haproxy (deploy/haproxy/haproxy.cfg as shipped), sharing a real Redis.

- a worker connects through haproxy; dispatches created directly on each node reach it (so at least
  one of them crossed nodes), with the livekit-api client;
- SIGKILL of the node holding a real worker's socket while its job runs: the worker reconnects through
  haproxy to the survivor, `migrate_job` keeps the job (same job process, started once), ListDispatch
  through the survivor shows it running, then JS_SUCCESS;
- a dispatch queued on a node that is SIGKILLed runs on the survivor once a worker comes;
- a rolling restart of every node, one at a time (SIGTERM, start again on the same address), while
  dispatches keep coming through haproxy: every dispatch ends JS_SUCCESS and the running call keeps its
  job process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server.cluster_state import NodeLeases, WorkerDirectory
from agentdispatch.server.store_redis import RedisStore
from agentdispatch.testing.serverproc import (
    ServerProcess,
    ServerProcessSettings,
    agentdispatch_command,
    free_port,
)
from agentdispatch.testing.services import HaproxyProcess, RedisProcess, require
from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions
from agentdispatch.testing.waiting import eventually as poll_async

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HOLD_AGENT = Path(__file__).parent / "agents" / "hold_agent.py"
JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS


async def eventually(check: Callable[[], Any], timeout: float = 45.0, what: str = "") -> Any:
    """Poll an async check; API and connection errors (a node restarting) count as "not yet"."""
    return await poll_async(check, timeout, what, (api.TwirpError, aiohttp.ClientError, OSError))


@dataclass
class Deployment:
    redis: RedisProcess
    nodes: list[ServerProcess]
    proxy: HaproxyProcess
    http: aiohttp.ClientSession
    #: the `agentdispatch server` arguments every node runs with (a restarted node too)
    args: tuple[str, ...]

    def api(self, url: str) -> api.LiveKitAPI:
        return api.LiveKitAPI(url, "devkey", "secret", session=self.http, failover=False)

    async def node_of(self, worker_id: str) -> ServerProcess:
        """The node holding a worker's socket, read from the cluster directory and leases in Redis."""
        store = RedisStore(self.redis.url)
        try:
            directory = WorkerDirectory(store.redis, store.prefix)
            summary = await eventually(lambda: directory.get(worker_id), what=f"{worker_id} listed")
            url = await NodeLeases(store.redis, store.prefix, "", 1.0).url_of(summary.node_id)
        finally:
            await store.aclose()
        return next(n for n in self.nodes if n.url == url)


@pytest.fixture
def haproxy_bin() -> str:
    return require("haproxy", "haproxy")


@pytest.fixture
async def deployment(redis_proc: RedisProcess, haproxy_bin: str) -> AsyncIterator[Deployment]:
    args = ("--redis", redis_proc.url, "--dispatch-deadline", "90", "--reconnect-grace", "60")
    nodes = [ServerProcess(ServerProcessSettings(extra_args=args)) for _ in range(2)]
    proxy: HaproxyProcess | None = None
    http = aiohttp.ClientSession()
    try:
        for node in nodes:
            node.start()
        port = free_port()
        env = {
            "AD_BIND": f"127.0.0.1:{port}",
            "AD_NODE1": f"127.0.0.1:{nodes[0].port}",
            "AD_NODE2": f"127.0.0.1:{nodes[1].port}",
            "AD_NODE3": f"127.0.0.1:{free_port()}",  # a third node that is down: health checks skip it
        }
        proxy = HaproxyProcess(HAPROXY_CFG.read_text(), port, haproxy_bin, env)
        proxy.start()
        yield Deployment(redis_proc, nodes, proxy, http, args)
    finally:
        await http.close()
        if proxy is not None:
            proxy.close()
        for node in nodes:
            node.stop()  # (restarted ones are in `nodes` too: the test replaces its entries)


async def test_haproxy_config_ships_valid(haproxy_bin: str) -> None:
    env = {"AD_BIND": "127.0.0.1:7880", "AD_NODE1": "10.0.0.1:7880", "AD_NODE2": "10.0.0.2:7880"}
    proxy = HaproxyProcess(HAPROXY_CFG.read_text(), 7880, haproxy_bin, {**env, "AD_NODE3": "10.0.0.3:7880"})
    try:
        proxy.check()
    finally:
        proxy.close()


async def test_a_worker_behind_haproxy_gets_dispatches_created_on_either_node(deployment: Deployment) -> None:
    worker = SimWorker(SimWorkerOptions(url=deployment.proxy.url, agent_name="via-lb"), deployment.http)
    try:
        await eventually(lambda: _connect(worker), what="worker registered through haproxy")
        holder = await deployment.node_of(worker.id)
        other = next(n for n in deployment.nodes if n is not holder)
        created = []
        for node in (other, holder):  # the first one crosses nodes
            lk = deployment.api(node.url)
            created.append(
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="via-lb", room=f"room-{node.port}")
                )
            )
        await eventually(lambda: _at_least(worker.received.assignments, 2), what="both assignments")
        assert {a.job.dispatch_id for a in worker.received.assignments} == {d.id for d in created}
        # the API through haproxy shows the same state whichever node answers
        lk = deployment.api(deployment.proxy.url)
        for _ in range(4):
            (listed,) = await lk.agent_dispatch.list_dispatch(f"room-{other.port}")
            assert listed.state.jobs[0].state.worker_id == worker.id
    finally:
        await worker.aclose()


async def _connect(worker: SimWorker) -> bool:
    await worker.connect()
    return True


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


@pytest.fixture
def hold_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


async def test_node_sigkill_with_a_job_running_the_worker_moves_to_the_survivor_and_keeps_the_job(
    deployment: Deployment, hold_dir: Path
) -> None:
    worker = await _hold_worker(deployment, hold_dir)
    try:
        lk = deployment.api(deployment.proxy.url)
        dispatch = await eventually(
            lambda: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="hold", room="call")
            ),
            what="CreateDispatch through haproxy",
        )
        started = await eventually(lambda: _started_files(hold_dir), timeout=60, what="the job to start")
        job_id = started[0].name.removeprefix("started-")
        job_pid = int(started[0].read_text().split()[0])
        (job,) = await eventually(lambda: _jobs(lk, "call"), what="ListDispatch")
        old_worker = job.state.worker_id
        holder = await deployment.node_of(old_worker)
        survivor = next(n for n in deployment.nodes if n is not holder)

        os.kill(holder.pid, signal.SIGKILL)
        holder.stop()

        lk2 = deployment.api(survivor.url)
        moved = await eventually(
            lambda: _job_where(lk2, "call", lambda j: j.state.worker_id not in ("", old_worker)),
            timeout=60,
            what="the worker to reconnect to the survivor and migrate its job",
        )
        assert moved.id == job_id and moved.state.status == JS_RUNNING
        assert psutil.pid_exists(job_pid), "the job process kept running"
        assert started[0].read_text().split() == [str(job_pid)], "the job was not started again"

        (hold_dir / f"finish-{job_id}").touch()
        await eventually(
            lambda: _job_where(lk2, "call", lambda j: j.state.status == JS_SUCCESS), what="success"
        )
        (listed,) = await lk2.agent_dispatch.list_dispatch("call")
        assert listed.id == dispatch.id
    finally:
        await _stop_worker(worker)


async def _hold_worker(deployment: Deployment, hold_dir: Path) -> asyncio.subprocess.Process:
    """A real worker process running hold_agent.py through haproxy, recording its jobs in `hold_dir`."""
    env = {
        **os.environ,
        "AD_HOLD_DIR": str(hold_dir),
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret",
    }
    ws_url = deployment.proxy.url.replace("http://", "ws://")
    cmd = [*agentdispatch_command(), "worker", "start", str(HOLD_AGENT), "--url", ws_url, "--port", "0"]
    return await asyncio.create_subprocess_exec(
        *cmd, env=env, stdin=subprocess.DEVNULL, cwd=str(HOLD_AGENT.parent)
    )


async def _stop_worker(worker: asyncio.subprocess.Process) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(worker.wait(), 30)
    except TimeoutError:
        worker.kill()
        await asyncio.wait_for(worker.wait(), 10)


async def _started_files(d: Path) -> list[Path]:
    return await asyncio.to_thread(lambda: sorted(d.glob("started-*")))


async def _jobs(lk: api.LiveKitAPI, room: str) -> list[agent.Job]:
    return [j for d in await lk.agent_dispatch.list_dispatch(room) for j in d.state.jobs]


async def _job_where(lk: api.LiveKitAPI, room: str, pred: Callable[[agent.Job], bool]) -> agent.Job | None:
    return next((j for j in await _jobs(lk, room) if pred(j)), None)


async def test_a_dispatch_queued_on_a_node_that_is_sigkilled_runs_on_the_survivor(
    deployment: Deployment,
) -> None:
    doomed, survivor = deployment.nodes
    lk = deployment.api(doomed.url)
    queued = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="nobody-yet", room="queued")
    )
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.stop()
    worker = SimWorker(SimWorkerOptions(url=deployment.proxy.url, agent_name="nobody-yet"), deployment.http)
    try:
        await eventually(lambda: _connect(worker), what="worker registered through haproxy (to the survivor)")
        await eventually(
            lambda: _at_least(worker.received.assignments, 1),
            timeout=60,
            what="the queued job, taken over from the dead node's hand-off stream",
        )
        assert worker.received.assignments[0].job.dispatch_id == queued.id
        lk2 = deployment.api(survivor.url)
        (listed,) = await lk2.agent_dispatch.list_dispatch("queued")
        assert [j.state.worker_id for j in listed.state.jobs] == [worker.id]
    finally:
        await worker.aclose()


@pytest.mark.timeout(240)
async def test_a_rolling_restart_of_every_node_under_load_loses_nothing_and_cuts_no_call(
    deployment: Deployment, hold_dir: Path
) -> None:
    worker = await _hold_worker(deployment, hold_dir)
    lk = deployment.api(deployment.proxy.url)
    stop = asyncio.Event()
    rooms: list[str] = []  # rooms whose CreateDispatch was answered OK

    async def load() -> None:  # ~10 dispatches/s through haproxy for the whole restart
        i = 0
        while not stop.is_set():
            room = f"load-{i}"
            try:
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="hold", room=room)
                )
                rooms.append(room)
                i += 1
            except (api.TwirpError, aiohttp.ClientError, OSError):
                pass  # a node going away mid-call: sent again (to the same room) through haproxy
            await asyncio.sleep(0.1)

    call_job = ""

    async def finish_load_jobs() -> None:  # every job but the call ends as soon as it has started
        while True:
            for f in await _started_files(hold_dir):
                job_id = f.name.removeprefix("started-")
                if job_id != call_job:
                    (hold_dir / f"finish-{job_id}").touch()
            await asyncio.sleep(0.05)

    try:
        await eventually(
            lambda: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="hold", room="call")
            ),
            what="CreateDispatch through haproxy",
        )
        (call,) = await eventually(lambda: _jobs(lk, "call"), what="the call's job")
        call_job = call.id
        started = await eventually(
            lambda: _started_file(hold_dir, call_job), timeout=60, what="the call to start"
        )
        call_pid = int(started.read_text().split()[0])
        finisher = asyncio.get_running_loop().create_task(finish_load_jobs())
        loader = asyncio.get_running_loop().create_task(load())
        await eventually(lambda: _at_least(rooms, 5), what="load flowing")
        for i, node in enumerate(list(deployment.nodes)):  # one at a time, as a deploy does
            before = len(rooms)
            node.stop(timeout=20)  # SIGTERM: go_away to its workers, which reconnect to the other node
            restarted = ServerProcess(ServerProcessSettings(port=node.port, extra_args=deployment.args))
            await asyncio.to_thread(restarted.start)
            deployment.nodes[i] = restarted
            await eventually(
                lambda b=before: _at_least(rooms, b + 10), what=f"load after restarting node {i}"
            )
        stop.set()
        await loader
        lk_any = deployment.api(deployment.nodes[0].url)
        for room in rooms:
            await eventually(
                lambda r=room: _all_succeeded(lk_any, r), timeout=60, what=f"every job of {room} JS_SUCCESS"
            )
        # the call: the same job, still running in the same process, started once
        (now,) = await _jobs(lk_any, "call")
        assert now.id == call_job and now.state.status == JS_RUNNING, now
        assert psutil.pid_exists(call_pid) and started.read_text().split() == [str(call_pid)]
        (hold_dir / f"finish-{call_job}").touch()
        await eventually(
            lambda: _job_where(lk_any, "call", lambda j: j.state.status == JS_SUCCESS), what="call ends"
        )
        finisher.cancel()
        print(
            f"rolling restart of 2 nodes: {len(rooms)} dispatches during it, all JS_SUCCESS;"
            f" the call kept pid {call_pid}"
        )
    finally:
        stop.set()
        await _stop_worker(worker)


async def _started_file(d: Path, job_id: str) -> Path | None:
    path = d / f"started-{job_id}"
    return path if await asyncio.to_thread(path.exists) else None


async def _all_succeeded(lk: api.LiveKitAPI, room: str) -> bool:
    jobs = await _jobs(lk, room)
    assert all(j.state.status != agent.JobStatus.JS_FAILED for j in jobs), (room, jobs)
    return bool(jobs) and all(j.state.status == JS_SUCCESS for j in jobs)
