"""`--kill-node`: SIGKILL one cluster node during the run and measure how its work moves.

Before the kill the driver asks Redis (the cluster's worker directory and node leases, read-only) which
node holds each live worker's socket, and each worker (`GET /worker`) which jobs it holds. It kills the
node holding the most of them (never the last live node). Then, for the workers that were on it:

- **worker reconnect**: SIGKILL -> the worker's `GET /worker` shows a new worker id, registered (it
  came back through haproxy to a survivor);
- **job moved**: SIGKILL -> ListDispatch (through a survivor) shows the job on a worker id other than
  the one it had — the reconnected worker's `migrate_job` (same process, "migrated") or a re-dispatch
  (a new attempt started after the kill, "restarted"); a job that ended before either was seen is
  "ended_before_moved". Both are polled every `POLL` seconds: the times are upper bounds.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api
from livekit.protocol import agent

from ...server.cluster_state import NodeLeases, WorkerDirectory
from ...server.store_redis import RedisStore
from ..common.stats import summarize_ms
from .fleet import WorkerProc
from .record import Attempt

POLL = 0.05
WATCH_TIMEOUT = 60.0
ENDED = {"JS_SUCCESS", "JS_FAILED", "JS_CANCELLED"}


def worker_info(worker: WorkerProc) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(worker.http_url + "/worker", timeout=2.0) as resp:
            info = json.load(resp)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


async def node_urls_of(redis_url: str, worker_ids: list[str]) -> dict[str, str]:
    """worker id -> URL of the node holding its socket (workers not listed are left out)."""
    store = RedisStore(redis_url)
    try:
        directory = WorkerDirectory(store.redis, store.prefix)
        leases = NodeLeases(store.redis, store.prefix, "", 1.0)
        found: dict[str, str] = {}
        for worker_id in worker_ids:
            summary = await directory.get(worker_id)
            url = await leases.url_of(summary.node_id) if summary is not None else None
            if url:
                found[worker_id] = url
        return found
    finally:
        await store.aclose()


@dataclass
class HeldWorker:
    """A worker on the node that was killed, as it was just before the kill."""

    proc: WorkerProc
    old_id: str
    jobs: dict[str, str]  # job id -> room
    reconnected_at: float | None = None
    new_id: str = ""


@dataclass
class JobMove:
    job_id: str
    room: str
    old_worker: str
    moved_at: float | None = None
    new_worker: str = ""
    status_when_moved: str = ""
    ended_before_moved: bool = False


@dataclass
class NodeKillWatch:
    node_index: int
    node_pid: int
    killed_at: float
    at_dispatch: int
    workers: list[HeldWorker]
    jobs: list[JobMove] = field(default_factory=list)
    #: the node's workers were SIGKILLed with it (`--node-kill-workers`): none can come back
    workers_killed: bool = False

    @classmethod
    def of(cls, index: int, pid: int, killed_at: float, at: int, workers: list[HeldWorker]) -> NodeKillWatch:
        jobs = [JobMove(j, room, w.old_id) for w in workers for j, room in w.jobs.items()]
        return cls(index, pid, killed_at, at, workers, jobs)

    async def watch(self, list_dispatch: Callable[[str], Awaitable[list[Any]]]) -> None:
        """Poll until every worker re-registered and every job moved or ended (bounded)."""
        deadline = time.time() + WATCH_TIMEOUT
        while time.time() < deadline and not self._settled():
            await asyncio.gather(*(self._check_worker(w) for w in self.workers if w.reconnected_at is None))
            for job in self.jobs:
                if job.moved_at is None and not job.ended_before_moved:
                    await self._check_job(job, list_dispatch)
            await asyncio.sleep(POLL)

    def _settled(self) -> bool:
        workers = all(w.reconnected_at is not None or not w.proc.alive for w in self.workers)
        return workers and all(j.moved_at is not None or j.ended_before_moved for j in self.jobs)

    async def _check_worker(self, held: HeldWorker) -> None:
        info = await asyncio.to_thread(worker_info, held.proc)
        if info and info.get("registered") and info.get("id") not in ("", None, held.old_id):
            held.reconnected_at = time.time()
            held.new_id = str(info["id"])

    async def _check_job(self, job: JobMove, list_dispatch: Callable[[str], Awaitable[list[Any]]]) -> None:
        try:
            dispatches = await list_dispatch(job.room)
        except (api.TwirpError, OSError, TimeoutError) as exc:
            del exc  # a survivor busy taking over: next poll
            return
        for d in dispatches:
            for j in d.state.jobs:
                if j.id != job.job_id:
                    continue
                status = agent.JobStatus.Name(j.state.status)
                if j.state.worker_id not in ("", job.old_worker):
                    job.moved_at, job.new_worker = time.time(), j.state.worker_id
                    job.status_when_moved = status
                elif status in ENDED:
                    job.ended_before_moved = True

    def report(self, attempts: list[Attempt]) -> dict[str, Any]:
        """The node kill's part of the result: who moved, how (from the attempt records), how fast."""
        restarted = {a.job_id for a in attempts if a.start >= self.killed_at}
        moved = [j for j in self.jobs if j.moved_at is not None]
        return {
            "node": self.node_index,
            "pid": self.node_pid,
            "killed_at": round(self.killed_at, 4),
            "at_dispatch": self.at_dispatch,
            "workers_on_node": len(self.workers),
            "workers_killed_with_node": self.workers_killed,
            "jobs_on_node": len(self.jobs),
            "workers_reconnected": sum(1 for w in self.workers if w.reconnected_at is not None),
            "worker_reconnect_ms": summarize_ms(
                w.reconnected_at - self.killed_at for w in self.workers if w.reconnected_at is not None
            ),
            "jobs_moved": len(moved),
            "migrated": sum(1 for j in moved if j.job_id not in restarted),
            "restarted": sum(1 for j in self.jobs if j.job_id in restarted),
            "ended_before_moved": sum(1 for j in self.jobs if j.ended_before_moved and j.moved_at is None),
            "not_seen_moved": [
                j.job_id for j in self.jobs if j.moved_at is None and not j.ended_before_moved
            ],
            "job_moved_ms": summarize_ms(j.moved_at - self.killed_at for j in moved if j.moved_at),
            "details": {
                "workers": [
                    {"pid": w.proc.pid, "old_id": w.old_id, "new_id": w.new_id, "jobs": sorted(w.jobs)}
                    for w in self.workers
                ],
                "jobs": [vars(j) for j in self.jobs],
            },
        }
