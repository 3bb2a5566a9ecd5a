"""One job process seen from the worker: start + prewarm with a timeout, launch a job, watch memory over the
process tree, and stop it with an escalation (shutdown request -> SIGTERM -> SIGKILL), logging each step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import json
import logging
import multiprocessing
import multiprocessing.spawn
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil

from ..protocol import WorkerError
from ..util import TaskSet
from ..util.aio import wait_for
from .child import main as child_main
from .ipc import (
    PRELOAD_ENV,
    ChildConfig,
    ChildMessage,
    InitDone,
    JobEnded,
    JobStarted,
    LogEntry,
    ShutdownRequest,
    StartJob,
)

log = logging.getLogger("agentdispatch.worker.proc")
# One long-lived thread starts every job process: multiprocessing's bookkeeping is not safe for concurrent
# starts, and a spawned child's parent-death signal is tied to the thread that forked it (it must outlive
# the child; a pool thread that retires would kill it).
_STARTER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job-starter")
MB = 1024 * 1024


class InitError(WorkerError):
    """A job process could not be started or its prewarm failed / timed out."""


class ProcState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass(frozen=True)
class ProcSettings:
    child: ChildConfig
    mp_context: str = "forkserver"
    initialize_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    term_grace: float = 2.0  # between SIGTERM and SIGKILL
    memory_warn_mb: float = 0.0
    memory_limit_mb: float = 0.0
    memory_interval: float = 1.0


@dataclass(frozen=True)
class ProcExit:
    """How a job process ended. `error` is the job's own verdict ("" = it succeeded); the worker's reasons
    to cut it short come separately (`memory`, `killed`, and the stop reason the job ended with)."""

    exitcode: int | None
    error: str  # empty: the job succeeded
    reason: str
    ended_reason: str | None = None  # the reason the job process reported with its end (None: no report)
    memory: str = ""  # "memory limit 200 MB: 312 MB" when the limit stopped it
    killed: str = ""  # how the worker had to kill it: "killed after shutdown timeout" / "killed at once"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def tree_memory_mb(proc: psutil.Process) -> tuple[float, list[psutil.Process]]:
    """Memory of a process and all its descendants (USS where readable, else RSS), and the descendants."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0, []
    total = 0
    for p in members:
        try:
            total += p.memory_full_info().uss
        except psutil.AccessDenied:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / MB, members[1:]


class SupervisedProc:
    def __init__(self, settings: ProcSettings) -> None:
        self._settings = settings
        self.state = ProcState.STARTING
        self.job_id = ""
        self._process: Any = None
        self._conn: Connection | None = None
        self._ps: psutil.Process | None = None
        self._tree: dict[int, psutil.Process] = {}
        self._tasks = TaskSet("proc")
        self._init: asyncio.Future[InitDone] | None = None
        self._started = asyncio.Event()
        self._exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._ended: JobEnded | None = None
        self._failure = ""
        self._stop_reason = ""
        self._escalation: asyncio.Task[None] | None = None
        self._warned = False
        self._killed = ""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"pid": self.pid}
        if self.job_id:
            extra["job_id"] = self.job_id
        return extra

    @property
    def exited(self) -> bool:
        return self._exited.done()

    # -- start ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the process and wait for its prewarm; InitError (and the process is gone) on failure."""
        try:
            await self._spawn_process()
            await self._wait_init()
        except asyncio.CancelledError:
            if self._process is not None and self._process.pid is not None and not self.exited:
                self._kill_tree()
                await asyncio.to_thread(self._process.join, 5)
            raise
        self.state = ProcState.IDLE
        log.debug("job process ready", extra=self.log_extra)

    async def _spawn_process(self) -> None:
        loop = asyncio.get_running_loop()
        ctx: Any = multiprocessing.get_context(self._settings.mp_context)
        if self._settings.mp_context == "forkserver":
            os.environ[PRELOAD_ENV] = _preload_payload(self._settings.child)
            ctx.set_forkserver_preload(_preload_modules(self._settings.child))
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._conn = parent_conn
        self._process = ctx.Process(
            target=child_main.main,
            args=(child_conn, self._settings.child),
            name="agentdispatch-job",
            daemon=False,
        )
        started = loop.run_in_executor(_STARTER, self._process.start)
        try:
            await asyncio.shield(started)
        except asyncio.CancelledError:
            await asyncio.wait([started])  # the process exists once this returns; start() kills it
            raise
        except (OSError, EOFError, ValueError) as exc:  # e.g. the forkserver died or fds ran out
            parent_conn.close()
            self._conn = None
            raise InitError(f"could not start a job process: {exc!r}") from exc
        finally:
            child_conn.close()
        self._ps = psutil.Process(self._process.pid)
        self._init = loop.create_future()
        self._init.add_done_callback(_consume)
        loop.add_reader(parent_conn.fileno(), self._on_readable)
        loop.add_reader(self._process.sentinel, self._on_exit)

    async def _wait_init(self) -> None:
        if self._init is None:
            raise InitError("job process was not spawned")
        try:
            done = await wait_for(asyncio.shield(self._init), self._settings.initialize_timeout)
        except TimeoutError:
            log.warning(
                "job process did not initialize within %gs, killing it",
                self._settings.initialize_timeout,
                extra=self.log_extra,
            )
            await self.kill()
            raise InitError(f"prewarm did not finish within {self._settings.initialize_timeout:g}s") from None
        except InitError:
            await self.kill()
            raise
        if done.error:
            await self.kill()
            raise InitError(f"prewarm failed: {done.error}")

    # -- pipe and exit -------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._handle(conn.recv())
        except (EOFError, OSError):
            self._close_pipe()

    def _close_pipe(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None

    def _handle(self, msg: ChildMessage) -> None:
        if isinstance(msg, LogEntry):
            _reemit(msg, self.log_extra)
        elif isinstance(msg, InitDone):
            if self._init is not None and not self._init.done():
                self._init.set_result(msg)
        elif isinstance(msg, JobStarted):
            self._started.set()
        elif isinstance(msg, JobEnded):
            self._ended = msg

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._process.sentinel)
        self._on_readable()  # last messages (JobEnded, logs) arrive before EOF
        self._close_pipe()
        self._reap(0)

    def _reap(self, attempt: int) -> None:
        """The sentinel can close just before the process is reapable: poll briefly for the exit code."""
        self._process.join(0)
        code = self._process.exitcode
        if code is None and attempt < 100:
            asyncio.get_running_loop().call_later(0.01, self._reap, attempt + 1)
            return
        self._kill_leftovers()
        self.state = ProcState.EXITED
        if self._init is not None and not self._init.done():
            self._init.set_exception(InitError(f"job process {describe_exit(code)} during prewarm"))
        self._started.set()
        if not self._exited.done():
            self._exited.set_result(code)

    # -- job -----------------------------------------------------------------------------------------
    def launch(self, start: StartJob, job_id: str) -> None:
        if self.state is not ProcState.IDLE or self._conn is None:
            raise WorkerError(f"cannot launch a job on a {self.state.value} process")
        self.job_id = job_id
        self.state = ProcState.RUNNING
        try:
            self._conn.send(start)
        except (OSError, ValueError) as exc:
            self._kill_tree()
            raise WorkerError(f"could not send the job to process {self.pid}: {exc!r}") from exc
        self._tasks.spawn(self._watch_memory(), "memory")

    async def wait_started(self) -> bool:
        """True once the child confirmed the job started; False if it exited first."""
        await self._started.wait()
        return not self.exited

    async def wait_exit(self) -> ProcExit:
        code = await asyncio.shield(self._exited)
        await self._tasks.aclose()
        return self._result(code)

    def _result(self, code: int | None) -> ProcExit:
        ended = self._ended
        reason = self._stop_reason or (ended.reason if ended else "")
        error = ended.error if ended else f"job process {describe_exit(code)} without reporting an end"
        return ProcExit(
            code,
            error,
            reason,
            ended_reason=ended.reason if ended else None,
            memory=self._failure,
            killed=self._killed,
        )

    # -- memory --------------------------------------------------------------------------------------
    async def _watch_memory(self) -> None:
        """Sample every memory_interval, the first one after an interval (not on the job start path: a
        sample walks /proc for the process tree)."""
        while not self.exited and self._ps is not None:
            await asyncio.sleep(self._settings.memory_interval)
            if self.exited:
                break
            used, descendants = tree_memory_mb(self._ps)
            for p in descendants:
                self._tree.setdefault(p.pid, p)
            self._check_memory(used)

    def _check_memory(self, used: float) -> None:
        """Warn once over job_memory_warn_mb (also when the same sample is over the limit), then stop the
        job over job_memory_limit_mb."""
        s = self._settings
        extra = {**self.log_extra, "memory_mb": round(used)}
        if s.memory_warn_mb > 0 and used > s.memory_warn_mb and not self._warned:
            self._warned = True
            log.warning(
                "job uses %.0f MB, over job_memory_warn_mb=%g (warned once)",
                used,
                s.memory_warn_mb,
                extra=extra,
            )
        if s.memory_limit_mb > 0 and used > s.memory_limit_mb and not self._failure:
            self._failure = f"memory limit {s.memory_limit_mb:g} MB: {used:.0f} MB"
            log.error("job over job_memory_limit_mb (%s), stopping it", self._failure, extra=extra)
            self.request_shutdown(f"interrupted ({self._failure})")

    # -- stopping ------------------------------------------------------------------------------------
    def request_shutdown(self, reason: str) -> None:
        """Start the escalation (idempotent): ask, then SIGTERM, then SIGKILL the tree."""
        if self.exited or self._escalation is not None:
            return
        self._stop_reason = reason
        self.state = ProcState.STOPPING
        self._escalation = self._tasks.spawn(self._escalate(reason), "escalate")

    async def _escalate(self, reason: str) -> None:
        s = self._settings
        log.info("asking job process to shut down (%s)", reason, extra=self.log_extra)
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(ShutdownRequest(reason))
        if await self._wait_exited(s.shutdown_timeout):
            return
        log.warning(
            "job process still running %gs after the shutdown request, sending SIGTERM",
            s.shutdown_timeout,
            extra=self.log_extra,
        )
        self._snapshot_tree()
        self._killed = "killed after shutdown timeout"
        self._signal(signal.SIGTERM)
        if await self._wait_exited(s.term_grace):
            return
        log.error(
            "job process still running %gs after SIGTERM, sending SIGKILL to its process tree",
            s.term_grace,
            extra=self.log_extra,
        )
        self._kill_tree()

    async def _wait_exited(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await wait_for(asyncio.shield(self._exited), timeout)
        return self.exited

    def _snapshot_tree(self) -> None:
        if self._ps is None:
            return
        with contextlib.suppress(psutil.Error):
            for p in self._ps.children(recursive=True):
                self._tree.setdefault(p.pid, p)

    def _signal(self, sig: signal.Signals) -> None:
        if self._ps is not None:
            with contextlib.suppress(psutil.Error):
                self._ps.send_signal(sig)

    def _kill_tree(self) -> None:
        """SIGKILL the process and every descendant we know of (synchronous; safe in a signal handler)."""
        if self._ps is None and self.pid is not None:
            with contextlib.suppress(psutil.Error):
                self._ps = psutil.Process(self.pid)
        self._snapshot_tree()
        self._signal(signal.SIGKILL)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        for pid, p in list(self._tree.items()):
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    log.warning("killing leftover process %d of the job", pid, extra=self.log_extra)
                    p.kill()
            self._tree.pop(pid, None)

    def kill_now(self) -> None:
        self._killed = self._killed or "killed at once"
        self._kill_tree()

    async def kill(self) -> None:
        """SIGKILL the tree and wait for the exit."""
        if self._process is None or self.exited:
            return
        self._kill_tree()
        await asyncio.shield(self._exited)

    async def aclose(self) -> None:
        if self._process is not None and not self.exited:
            self.request_shutdown("worker closing")
            await asyncio.shield(self._exited)
        await self._tasks.aclose()


def _preload_modules(child: ChildConfig) -> list[str]:
    """Imported once by the forkserver (when it starts), so every job process inherits them already loaded.

    `child.preload` comes first (it loads the worker's `__main__` and the agent files given by path, see
    `_preload_payload`); `forkserver_freeze` last (it freezes what the others loaded)."""
    modules = ["agentdispatch.worker.child.preload", "agentdispatch.worker.child.context"]
    for ref in (child.entrypoint, child.prewarm):
        if ref is not None and ref.module:
            modules.append(ref.module)
    modules.append("agentdispatch.worker.child.forkserver_freeze")
    return modules


def _preload_payload(child: ChildConfig) -> str:
    """What `child.preload` loads in the forkserver: the main module as multiprocessing would prepare it
    in each job process, and the agent files named by path."""
    data = multiprocessing.spawn.get_preparation_data("agentdispatch-job")
    main = {k: data[k] for k in ("init_main_from_path", "init_main_from_name") if k in data}
    paths = [ref.path for ref in (child.entrypoint, child.prewarm) if ref is not None and ref.path]
    return json.dumps({"main": main, "paths": paths, "sys_path": list(child.sys_path)})


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (the waiter may have timed out already)."""
    if not fut.cancelled():
        fut.exception()


def _reemit(entry: LogEntry, extra: dict[str, Any]) -> None:
    """A job process's log record, logged here with job_id and pid. A traceback travels as text and is
    appended to the message, so every formatter prints it (the worker's terminal shows the job's crash)."""
    logger = logging.getLogger(entry.name)
    if not logger.isEnabledFor(entry.levelno):
        return
    message = f"{entry.message}\n{entry.exc_text}" if entry.exc_text else entry.message
    record = logging.makeLogRecord(
        {
            "name": entry.name,
            "levelno": entry.levelno,
            "levelname": logging.getLevelName(entry.levelno),
            "msg": message,
            "created": entry.created,
            **entry.extra,
            **extra,
        }
    )
    logger.handle(record)
