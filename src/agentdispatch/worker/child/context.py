"""What a job sees inside its process: `JobProcess` (prewarm) and `JobContext` (the entrypoint argument).

A job ends when its entrypoint returns, unless it connected to the room: then it runs until the room
closes, the connection drops, or someone calls `ctx.shutdown()` (the worker does so on termination,
memory limit, or drain timeout). Shutdown callbacks run before the process reports and exits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from livekit.protocol import agent, models

from ...util import TaskSet
from ..facts import JobFacts
from ..ipc import AcceptArguments
from .room import RoomConnection, RoomError

log = logging.getLogger("agentdispatch.worker.job")

ShutdownCallback = Callable[..., Any]


class JobProcess:
    """The process a job runs in. `userdata` is filled by prewarm_fnc and visible to the job."""

    def __init__(self, pid: int | None = None) -> None:
        self._pid = pid if pid is not None else os.getpid()
        self._userdata: dict[Any, Any] = {}

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def userdata(self) -> dict[Any, Any]:
        return self._userdata

    def __repr__(self) -> str:
        return f"<JobProcess pid={self._pid}>"


class JobContext(JobFacts):
    """The entrypoint's handle on its job, room, process and lifetime."""

    def __init__(
        self,
        *,
        job: agent.Job,
        proc: JobProcess,
        worker_id: str,
        url: str,
        token: str,
        accept: AcceptArguments | None = None,
    ) -> None:
        self._job = job
        self._proc = proc
        self._worker_id = worker_id
        self._url = url
        self._token = token
        self._accept = accept or AcceptArguments()
        self._room_conn: RoomConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._shutdown = asyncio.Event()
        self._shutdown_reason = ""
        self._callbacks: list[ShutdownCallback] = []
        self._tasks = TaskSet(f"job:{job.id}")

    # -- facts (job, room, participant: JobFacts) ------------------------------------------------------
    @property
    def proc(self) -> JobProcess:
        return self._proc

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def url(self) -> str:
        return self._url

    @property
    def token(self) -> str:
        return self._token

    @property
    def agent_identity(self) -> str:
        return self._accept.identity or f"agent-{self._job.id}"

    @property
    def log_fields(self) -> dict[str, str]:
        return {"job_id": self._job.id, "room": self._job.room.name}

    # -- room ----------------------------------------------------------------------------------------
    async def connect(self) -> RoomConnection:
        """Join the room (presence endpoint). Idempotent. The job then lives until the room closes."""
        async with self._connect_lock:
            if self._room_conn is None:
                conn = await RoomConnection.open(self._url, self._token)
                conn.on("disconnected", self._on_disconnected)
                self._room_conn = conn
                log.info("connected to room", extra=self.log_fields)
            return self._room_conn

    @property
    def room_connection(self) -> RoomConnection:
        if self._room_conn is None:
            raise RoomError("not connected: call `await ctx.connect()` first")
        return self._room_conn

    @property
    def is_connected(self) -> bool:
        return self._room_conn is not None and not self._room_conn.disconnected.is_set()

    async def wait_for_participant(self, identity: str | None = None) -> models.ParticipantInfo:
        """Wait for a (non-agent) participant, connecting first if needed."""
        conn = await self.connect()
        return await conn.wait_for_participant(identity)

    def _on_disconnected(self, reason: str) -> None:
        self.shutdown(reason or "room connection closed")

    # -- lifetime ------------------------------------------------------------------------------------
    def shutdown(self, reason: str = "") -> None:
        """End the job: shutdown callbacks run, then the process reports and exits. Idempotent."""
        if not self._shutdown.is_set():
            self._shutdown_reason = reason or "shutdown requested"
            log.info("job shutting down", extra={**self.log_fields, "reason": self._shutdown_reason})
            self._shutdown.set()

    def add_shutdown_callback(self, callback: ShutdownCallback) -> None:
        """`callback()` or `callback(reason)`, sync or async; runs once when the job ends."""
        self._callbacks.append(callback)

    @property
    def shutdown_reason(self) -> str:
        return self._shutdown_reason

    async def wait_for_shutdown(self) -> str:
        await self._shutdown.wait()
        return self._shutdown_reason

    def create_task(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Start a background task owned by the job (cancelled when the job ends)."""
        return self._tasks.spawn(coro, name)

    async def _run_shutdown_callbacks(self) -> None:
        for cb in self._callbacks:
            try:
                wants_reason = _takes_argument(cb)
                result = cb(self._shutdown_reason) if wants_reason else cb()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("shutdown callback failed", extra=self.log_fields)

    async def _close(self) -> None:
        await self._run_shutdown_callbacks()
        if self._room_conn is not None:
            await self._room_conn.aclose()
        await self._tasks.aclose()


def _takes_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


async def run_job(ctx: JobContext, entrypoint: Callable[[JobContext], Any]) -> str:
    """Run the entrypoint to the job's end; return the error text ("" on success)."""
    entry = asyncio.ensure_future(_call(entrypoint, ctx))
    stop = asyncio.ensure_future(ctx._shutdown.wait())
    error = ""
    await asyncio.wait({entry, stop}, return_when=asyncio.FIRST_COMPLETED)
    if entry.done():
        exc = None if entry.cancelled() else entry.exception()
        if exc is not None:
            from ..ipc import format_error

            error = format_error(exc)
            log.error("job entrypoint raised %r", exc, exc_info=exc, extra=ctx.log_fields)
            ctx.shutdown("entrypoint raised")
        elif ctx.is_connected:
            await stop  # connected jobs live until the room closes or shutdown is asked
        else:
            ctx.shutdown("entrypoint finished")
    stop.cancel()
    if not entry.done():
        entry.cancel()
        await asyncio.gather(entry, return_exceptions=True)
    await ctx._close()
    return error


async def _call(entrypoint: Callable[[JobContext], Any], ctx: JobContext) -> None:
    result = entrypoint(ctx)
    if inspect.isawaitable(result):
        await result
