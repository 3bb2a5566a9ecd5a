"""The chaos benchmark: real server, real workers, SIGKILLs, and an account of every dispatch.

One run:

1. the server (`agentdispatch server --dev`, short timers) in its own process, its INFO log in the run
   directory — or, with `--nodes N`, a cluster of N nodes on a real Redis behind a real haproxy
   (`servers.py`); K worker processes running `chaos_agent.py` (`agentdispatch worker start`,
   production mode), connected to the server or through haproxy;
2. D dispatches, each in its own room, at most `in_flight` unfinished at a time (the fleet's capacity by
   default, so jobs do not simply wait out the dispatch deadline); each job sleeps a random time taken
   from its metadata and records itself (`chaos_record`);
3. meanwhile a driver SIGKILLs worker processes (each replaced at once by a new worker) and job processes,
   at points spread over the run (by dispatches created, from a seeded plan); with `--kill-node`, one
   cluster node is SIGKILLed too and the move of its workers and jobs is measured (`nodekill.py`);
4. every open dispatch is polled with ListDispatch until it ends, bounded by `end_timeout` after the last
   CreateDispatch; then the fleet and the server stop and `chaos_analysis` accounts for everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from livekit import api

from ...testing.serverproc import ServerProcessSettings
from ...util import TaskSet
from ...util.aio import wait_for
from .fleet import AGENT_FILE, Death, Fleet, FleetSettings, WorkerProc
from .model import ChaosSettings, KillLog, Track, plan_kills
from .nodekill import HeldWorker, NodeKillWatch, node_urls_of, worker_info
from .record import job_metadata
from .result import build_result
from .servers import ChaosServers, NodeKill
from .watch import AttemptIndex, kill_attempt_process

API_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError, OSError)


def _gone_after(deaths: list[Death]) -> float | None:
    """Seconds from the SIGKILL until the last process of the tree was seen gone (None: one survived)."""
    if not deaths or any(d.died_at is None for d in deaths):
        return None
    return round(max(d.died_at or 0.0 for d in deaths) - deaths[0].killed_at, 4)


class ChaosRun:
    def __init__(self, settings: ChaosSettings, run_dir: Path, log: Callable[[str], None]) -> None:
        self.s = settings
        self.run_dir = run_dir
        self.attempts_dir = run_dir.resolve() / "attempts"
        self.log = log
        self.seed = settings.seed if settings.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.tracks: list[Track] = []
        self.kills = KillLog()
        self.index = AttemptIndex(self.attempts_dir)
        self.servers = ChaosServers(
            settings.nodes,
            ServerProcessSettings(log_level=settings.log_level, extra_args=settings.server_args()),
            run_dir,
        )
        self.fleet: Fleet | None = None
        self.node_kill: NodeKillWatch | None = None
        self._tasks = TaskSet("chaos")
        self._lks: dict[str, api.LiveKitAPI] = {}
        #: held while a CreateDispatch is in flight: a node is killed between two, never during one
        self._create_lock = asyncio.Lock()
        self._t0 = time.time()
        self.timeline: dict[str, float] = {}
        self._changed = asyncio.Event()
        self.cpu_before: Any = None
        self.cpu_after: Any = None

    # -- the run ---------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cleared = clear_previous_run(self.run_dir)
        if cleared:
            self.log(f"{self.run_dir}: removed {cleared} file(s) of a previous run (records and logs)")
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.servers.start)
        nodes = ", ".join(n.url for n in self.servers.nodes)
        self.log(f"server(s) {nodes}; workers connect to {self.servers.worker_url}; seed {self.seed}")
        fleet = self.fleet = Fleet(self._fleet_settings(), self.log)
        timeout = aiohttp.ClientTimeout(total=15)
        self._lks = {
            n.url: api.LiveKitAPI(n.url, "devkey", "secret", timeout=timeout, failover=False)
            for n in self.servers.nodes
        }
        try:
            await fleet.start_workers(self.s.workers)
            self.log(f"{self.s.workers} workers registered; dispatching {self.s.dispatches}")
            await self._phases()
        finally:
            await self._tasks.aclose()
            await fleet.stop_all()
            await asyncio.to_thread(self.servers.stop)
            for lk in self._lks.values():
                await lk.aclose()
        self.timeline["stopped"] = time.time()
        return self._result()

    def _fleet_settings(self) -> FleetSettings:
        return FleetSettings(
            server_url=self.servers.worker_url,
            run_dir=self.run_dir,
            max_jobs=self.s.max_jobs,
            log_level=self.s.log_level,
            agent_file=AGENT_FILE,
        )

    async def _phases(self) -> None:
        self.timeline["dispatch_start"] = time.time()
        self.cpu_before = psutil.cpu_times()
        self._tasks.spawn(self._poll_loop(), "poll")
        self._tasks.spawn(self._progress_loop(), "progress")
        chaos = self._tasks.spawn(self._chaos(plan_kills(self.s, self.rng)), "kills")
        if self.s.kill_node:
            self._tasks.spawn(self._kill_node_at(int(self.s.dispatches * self.s.node_kill_at)), "node-kill")
        await self._dispatch_all()
        self.timeline["last_create"] = time.time()
        await self._wait_all_ended(self.timeline["last_create"] + self.s.end_timeout, chaos)
        self.timeline["all_ended"] = time.time()
        self.cpu_after = psutil.cpu_times()
        await self._poll_once()

    async def _dispatch_all(self) -> None:
        prefix = f"chaos-{uuid.uuid4().hex[:8]}"
        for i in range(self.s.dispatches):
            window_free = await self._wait_until(
                lambda: sum(1 for t in self.tracks if not t.done) < self.s.window,
                time.time() + self.s.end_timeout,
            )
            if not window_free:
                self.log(f"no dispatch ended for {self.s.end_timeout:g}s: stopping after {i} dispatches")
                return
            track = Track(i, f"{prefix}-{i:05d}", time.time())
            await self._create(track, self.rng.uniform(self.s.min_duration, self.s.max_duration))
            self.tracks.append(track)
            self._changed.set()

    async def _create(self, track: Track, duration: float) -> None:
        request = api.CreateAgentDispatchRequest(
            agent_name="chaos", room=track.room, metadata=job_metadata(str(self.attempts_dir), duration)
        )
        try:
            async with self._create_lock:
                track.dispatch_id = (await self._api().agent_dispatch.create_dispatch(request)).id
        except API_ERRORS as exc:
            track.create_error = f"{type(exc).__name__}: {exc}"
            self.log(f"CreateDispatch {track.room} failed: {track.create_error}")

    async def _wait_all_ended(self, deadline: float, chaos: asyncio.Task[None]) -> None:
        with contextlib.suppress(TimeoutError):
            await wait_for(asyncio.shield(chaos), max(1.0, deadline - time.time()))
        await self._wait_until(self._finished, deadline)
        left = sum(1 for t in self.tracks if not t.done)
        if left:
            self.log(f"{left} dispatch(es) not ended {self.s.end_timeout:g}s after the last CreateDispatch")

    async def _wait_until(self, done: Callable[[], bool], deadline: float | None = None) -> bool:
        """Wake on every change of the tracks (created, ended) until `done()` or the wall-clock deadline."""
        while not done():
            self._changed.clear()
            remaining = None if deadline is None else deadline - time.time()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await wait_for(self._changed.wait(), remaining)
        return True

    def _api(self) -> api.LiveKitAPI:
        """The client of the next live node (round-robin: dispatches enter through every node)."""
        if not self._lks:
            raise RuntimeError("API client used before the run started")
        return self._lks[self.servers.next_url()]

    # -- observation -----------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await self._poll_once()
            await asyncio.sleep(self.s.poll_interval)

    async def _poll_once(self) -> None:
        self.index.refresh()
        self.index.notice_deaths()
        limit = asyncio.Semaphore(16)

        async def poll(track: Track) -> None:
            async with limit:
                try:
                    track.observe(await self._api().agent_dispatch.list_dispatch(track.room))
                except API_ERRORS as exc:
                    self.log(f"ListDispatch {track.room} failed: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(poll(t) for t in self.tracks if not t.done))
        self._changed.set()

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.progress_interval)
            self.log(self.progress_line())

    def progress_line(self) -> str:
        ended = [t.outcome for t in self.tracks if t.done and t.outcome is not None]
        ok = sum(1 for o in ended if all(j.status == "JS_SUCCESS" for j in o.jobs) and o.jobs)
        fleet = self.fleet
        live = len(fleet.live()) if fleet else 0
        return (
            f"{time.time() - self._t0:6.1f}s  created {len(self.tracks)}/{self.s.dispatches}"
            f"  ended {len(ended)} (success {ok}, other {len(ended) - ok})"
            f"  running attempts {len(self.index.running())}  live workers {live}"
            f"  kills: workers {len(self.kills.worker)}/{self.s.planned_worker_kills}"
            f", jobs {len(self.kills.job)}/{self.s.planned_job_kills}"
        )

    # -- chaos -----------------------------------------------------------------------------------------
    async def _chaos(self, plan: list[tuple[int, str]]) -> None:
        for threshold, kind in plan:
            await self._wait_until(self._created_at_least(threshold))
            if kind == "worker":
                await self._kill_worker()
            else:
                await self._kill_job()

    def _created_at_least(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.tracks) >= count

    def _running_pids(self) -> dict[int, str]:
        self.index.refresh()
        return {a.pid: a.job_id for a in self.index.running()}

    async def _pick_busy_worker(self, patience: float) -> tuple[WorkerProc | None, dict[int, str]]:
        """A live worker with a running job process (waiting up to `patience`), else any live one."""
        fleet = self._fleet()
        deadline = time.time() + patience
        while True:
            running = self._running_pids()
            live = fleet.live()
            busy = [w for w in live if fleet.job_pids(w) & running.keys()]
            if busy or time.time() >= deadline or self._finished():
                victim = self.rng.choice(busy or live) if live else None
                return victim, {
                    pid: running[pid] for pid in fleet.job_pids(victim) & running.keys()
                } if victim else {}
            await asyncio.sleep(0.1)

    async def _kill_worker(self, patience: float = 30.0) -> None:
        victim, jobs = await self._pick_busy_worker(patience)
        if victim is None:
            self.kills.skipped.append("worker kill: no live worker")
            return
        await self._kill_and_replace(victim, jobs, "plan")

    async def _kill_and_replace(self, victim: WorkerProc, jobs: dict[int, str], by: str) -> None:
        """SIGKILL one worker (its tree watched until gone), start a replacement, record the kill."""
        fleet = self._fleet()
        assigned = await asyncio.to_thread(fleet.assigned_jobs, victim)
        deaths = await fleet.kill_worker(victim)
        fleet.replace_in_background()
        self.kills.worker.append(
            {
                "worker": victim.index,
                "by": by,
                "pid": victim.pid,
                "killed_at": victim.killed_at,
                "running_jobs": sorted(jobs.values()),
                "assigned_jobs": assigned,
                "processes_down": len(deaths),
                "tree_gone_after_s": _gone_after(deaths),
                "job_processes_gone_after_s": _gone_after([d for d in deaths if d.pid in jobs]),
                "survivors": [d.pid for d in deaths if d.died_at is None],
            }
        )
        self.log(
            f"SIGKILL worker {victim.index} (pid {victim.pid}): {len(jobs)} job process(es) running,"
            f" {len(assigned)} job(s) assigned"
        )

    async def _kill_job(self, patience: float = 30.0) -> None:
        fleet = self._fleet()
        deadline = time.time() + patience
        while time.time() < deadline and not self._finished():
            running = self._running_pids()
            owners = {pid: w for w in fleet.live() for pid in fleet.job_pids(w) & running.keys()}
            if owners:
                pid = self.rng.choice(sorted(owners))
                death = await fleet.kill_job(pid, owners[pid])
                if death is not None:
                    self.kills.job.append({"pid": pid, "job_id": running[pid]} | asdict(death))
                    return
            await asyncio.sleep(0.1)
        self.kills.skipped.append("job kill: no running job process found")

    def _finished(self) -> bool:
        return len(self.tracks) == self.s.dispatches and all(t.done for t in self.tracks)

    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise RuntimeError("fleet used before the run started")
        return self.fleet

    # -- the node kill ---------------------------------------------------------------------------------
    async def _kill_node_at(self, threshold: int) -> None:
        await self._wait_until(self._created_at_least(threshold))
        held = await self._workers_by_node()
        deadline = time.time() + 30.0  # like a worker kill: wait a while for a node holding a job
        while not any(h.jobs for hs in held.values() for h in hs) and time.time() < deadline:
            await asyncio.sleep(0.1)
            held = await self._workers_by_node()
        if not held:
            self.kills.skipped.append("node kill: no worker found in the cluster directory")
            return
        victim = max(held, key=lambda n: (sum(len(h.jobs) for h in held[n]), len(held[n]), self.rng.random()))
        async with self._create_lock:
            kill = await self._kill_node(victim, [h.proc for h in held[victim]])
        watch = self.node_kill = NodeKillWatch.of(
            victim, kill.pid, kill.killed_at, len(self.tracks), held[victim]
        )
        watch.workers_killed = self.s.node_kill_workers
        self.log(
            f"SIGKILL node {victim} (pid {kill.pid}): {len(watch.workers)} worker(s),"
            f" {len(watch.jobs)} job(s) on it"
        )
        await watch.watch(lambda room: self._api().agent_dispatch.list_dispatch(room))
        report = watch.report([])
        self.log(
            f"node {victim} kill: {report['workers_reconnected']}/{len(watch.workers)} workers back,"
            f" {report['jobs_moved']}/{len(watch.jobs)} jobs seen moved"
        )

    async def _kill_node(self, index: int, workers: list[WorkerProc]) -> NodeKill:
        """SIGKILL the node; with node_kill_workers its workers too, at the same moment (the machine died)."""
        node = asyncio.to_thread(self.servers.kill, index)
        if not self.s.node_kill_workers:
            return await node
        running = self._running_pids()
        fleet = self._fleet()
        kills = [
            self._kill_and_replace(
                w, {p: running[p] for p in fleet.job_pids(w) & running.keys()}, "node-kill"
            )
            for w in workers
        ]
        node_task = asyncio.ensure_future(node)
        await asyncio.gather(node_task, *kills)
        return node_task.result()

    async def _workers_by_node(self) -> dict[int, list[HeldWorker]]:
        """Live node index -> the live workers whose socket it holds (the cluster directory in Redis)."""
        fleet, redis = self._fleet(), self.servers.redis
        if redis is None:
            raise RuntimeError("a node kill needs the cluster")
        infos = {w.index: await asyncio.to_thread(worker_info, w) for w in fleet.live()}
        ids = [str(i["id"]) for i in infos.values() if i and i.get("id")]
        where = await node_urls_of(redis.url, ids)
        held: dict[int, list[HeldWorker]] = {}
        for w in fleet.live():
            info = infos.get(w.index) or {}
            node = self.servers.index_of(where.get(str(info.get("id")), ""))
            if node is None or node not in self.servers.live():
                continue
            jobs = {str(j["id"]): str(j["room"]) for j in info.get("jobs", [])}
            held.setdefault(node, []).append(HeldWorker(w, str(info["id"]), jobs))
        return held

    # -- result ----------------------------------------------------------------------------------------
    def _result(self) -> dict[str, Any]:
        self.index.refresh()
        survivors = self.index.survivors()
        for attempt in survivors:  # a job process that outlived the fleet: reported, then ended
            kill_attempt_process(attempt)
        return build_result(self, [a.key for a in survivors])


def default_json_path(now: float | None = None) -> Path:
    """bench/results/chaos-<timestamp>.json (the run directory defaults to the same name without .json)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("bench/results") / f"chaos-{stamp}.json"


#: what a run writes into its directory; all of it goes before the next run in the same directory
RUN_FILES = ("attempts/attempt-*.json", "attempts/.tmp-*", "*.log", "worker-*-hung.txt")


def clear_previous_run(run_dir: Path) -> int:
    """Remove an earlier run's files from `run_dir`; the number removed.

    A rerun with the same --json (or --run-dir) would otherwise read the old attempt records as its
    own: the old run's kills are not in the new run's kill log, so each attempt the old run killed
    had no known end and overlapped its job's next attempt (reported as double runs); and the logs
    would be appended to.
    """
    removed = 0
    for pattern in RUN_FILES:
        for path in run_dir.glob(pattern):
            path.unlink()
            removed += 1
    return removed


def run_chaos(
    settings: ChaosSettings, run_dir: Path, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run one chaos benchmark; SIGTERM (like Ctrl-C) stops it cleanly: fleet and server are stopped."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await ChaosRun(settings, run_dir, log).run()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())
