"""Main of a job process: prewarm once, wait for one job, run it, report, exit.

Started by `SupervisedProc` through multiprocessing (forkserver or spawn). The process dies with its
worker whatever the timing: on Linux the kernel SIGKILLs it when the process that forked it exits
(`PR_SET_PDEATHSIG`, armed under our forkserver, which exits with the worker after SIGKILLing every job's
descendants); otherwise (spawn) a watcher thread exits it when the worker pid disappears, after killing
its own children. Pipe EOF (the worker is gone) ends it as well.

SIGTERM and SIGINT sent to the whole process group (systemd KillMode=control-group, container inits,
Ctrl-C) are not for the job: it ignores them and waits for its worker's word. Once the worker has asked it
to shut down, a SIGTERM (the worker's escalation) ends it as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from ...util.logs import STANDARD_RECORD_ATTRS
from ..ipc import (
    ChildConfig,
    ChildMessage,
    InitDone,
    JobEnded,
    JobStarted,
    LogEntry,
    ParentMessage,
    ShutdownRequest,
    StartJob,
    format_error,
)
from ..refs import load_ref

PARENT_CHECK_INTERVAL = 1.0


class Channel:
    """The child's sending side of the pipe; safe to use from any thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: ChildMessage) -> None:
        with self._lock:
            self._conn.send(msg)


class Inbox:
    """The pipe from the worker. While idle the main thread reads it directly; once a job runs, the job's
    event loop reads it (`loop.add_reader`: no thread on the job start path). Pipe EOF means the worker
    is gone."""

    def __init__(self, conn: Connection, parent_pid: int) -> None:
        self._conn = conn
        self._parent_pid = parent_pid

    def get(self) -> ParentMessage:
        """Block the calling thread for the next message (used before the job starts)."""
        try:
            while not self._conn.poll(PARENT_CHECK_INTERVAL):
                if not _alive(self._parent_pid):
                    _orphaned(self._parent_pid)
            msg: ParentMessage = self._conn.recv()
        except (EOFError, OSError):
            _orphaned(self._parent_pid)
        _note(msg)
        return msg

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Callable[[ParentMessage], None]) -> None:
        """From now on, deliver messages to `handler` on `loop` as they arrive."""
        loop.add_reader(self._conn.fileno(), self._readable, handler)

    def _readable(self, handler: Callable[[ParentMessage], None]) -> None:
        try:
            while self._conn.poll():
                msg: ParentMessage = self._conn.recv()
                _note(msg)
                handler(msg)
        except (EOFError, OSError):
            _orphaned(self._parent_pid)


class _Signals:
    """SIGTERM is honoured only after the worker asked for a shutdown; SIGINT never (the worker decides)."""

    worker_asked = False

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, cls._on_term)

    @classmethod
    def _on_term(cls, signum: int, frame: object) -> None:
        if cls.worker_asked:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        # else: a signal to the whole process group; the worker drains and tells us what to do


def _note(msg: ParentMessage) -> None:
    if isinstance(msg, ShutdownRequest):
        _Signals.worker_asked = True


PR_SET_PDEATHSIG = 1
REHEARSALS = 20  # > CPython 3.11's specialisation warm-up (8 runs)
PRELOAD_MODULE = "agentdispatch.worker.child.preload"  # loaded only in (and inherited from) our forkserver


def _die_with_parent(worker_pid: int) -> bool:
    """Under our forkserver on Linux: have the kernel SIGKILL this process when the forkserver exits (it
    exits with the worker, after SIGKILLing every job's descendants: `child.preload`). True if armed.

    The death signal is tied to the forking thread of the parent: the forkserver's main thread. If the
    parent changed before the signal was armed, or the worker is gone, exit now. Elsewhere (spawn, other
    systems) a watcher thread checks the worker's pid instead, and kills this job's descendants itself."""
    if not sys.platform.startswith("linux") or PRELOAD_MODULE not in sys.modules:
        return False
    _release_forkserver()
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = bool(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        armed = False
    if armed and os.getppid() != parent:
        _orphaned(worker_pid)
    if not _alive(worker_pid):
        _orphaned(worker_pid)
    return armed


def _release_forkserver() -> None:
    """Close this process's copy of the forkserver's "alive" pipe (multiprocessing hands it to every child
    it forks): the forkserver must see EOF, and exit, as soon as the worker is gone, not once every job
    process has ended. A job that uses multiprocessing's forkserver itself then starts its own."""
    from multiprocessing import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int) and getattr(server, "_forkserver_pid", None) is None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None
        server._forkserver_address = None


def _watch_parent(parent_pid: int) -> None:
    """Runs for the life of the process: a prewarm that hangs must not outlive a dead worker either."""
    while True:
        time.sleep(PARENT_CHECK_INTERVAL)
        if not _alive(parent_pid):
            _orphaned(parent_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to someone else
        return False
    return True


def _orphaned(parent_pid: int) -> NoReturn:
    """The worker is gone: take our own children down and exit immediately."""
    with contextlib.suppress(OSError):
        os.write(
            2, f"agentdispatch job process {os.getpid()}: worker {parent_pid} is gone, exiting\n".encode()
        )
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    except ImportError:
        pass
    os._exit(1)


class PipeLogHandler(logging.Handler):
    """Forwards log records to the worker, which re-emits them with job_id and pid attached."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra = {
                k: v
                for k, v in record.__dict__.items()
                if k not in STANDARD_RECORD_ATTRS and isinstance(v, str | int | float | bool)
            }
            exc_text = ""
            if record.exc_info:
                exc_text = logging.Formatter().formatException(record.exc_info)
            entry = LogEntry(
                record.name, record.levelno, record.getMessage(), record.created, exc_text, extra
            )
            self._channel.send(entry)
        except (OSError, ValueError, TypeError):
            self.handleError(record)


def _setup(config: ChildConfig, channel: Channel) -> None:
    _Signals.install()
    if not _die_with_parent(config.parent_pid):  # no kernel help: a thread watches the worker's pid
        threading.Thread(target=_watch_parent, args=(config.parent_pid,), name="parent", daemon=True).start()
    for path in config.sys_path:
        if path not in sys.path:
            sys.path.append(path)
    root = logging.getLogger()
    root.handlers[:] = [PipeLogHandler(channel)]
    root.setLevel(config.log_level)


def _prewarm(config: ChildConfig, proc: Any) -> Callable[..., Any]:
    entrypoint = load_ref(config.entrypoint)
    if config.prewarm is not None:
        result = load_ref(config.prewarm)(proc)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    return entrypoint


async def _await(result: Any) -> None:
    await result


async def _run(
    entrypoint: Callable[..., Any], proc: Any, start: StartJob, channel: Channel, inbox: Inbox
) -> None:
    from livekit.protocol import agent

    from .context import JobContext, run_job

    job = agent.Job()
    job.ParseFromString(start.job)
    ctx = JobContext(
        job=job, proc=proc, worker_id=start.worker_id, url=start.url, token=start.token, accept=start.accept
    )

    def on_message(msg: ParentMessage) -> None:
        if isinstance(msg, ShutdownRequest):
            ctx.shutdown(msg.reason)

    inbox.attach(asyncio.get_running_loop(), on_message)
    channel.send(JobStarted())
    error = await run_job(ctx, entrypoint)
    channel.send(JobEnded(error=error, reason=ctx.shutdown_reason))


async def _rehearse(proc: Any) -> None:
    """Walk the job start path once at prewarm (parse a job, build a context, run a task on the loop), so
    the pages it touches are this process's own before a job arrives, not copied on the start path."""
    from livekit.protocol import agent

    from .context import JobContext

    job = agent.Job()
    job.ParseFromString(agent.Job(id="AJ_rehearsal").SerializeToString())
    ctx = JobContext(job=job, proc=proc, worker_id="", url="", token="")
    await asyncio.ensure_future(asyncio.sleep(0))
    await ctx._tasks.aclose()


def rehearse_in_forkserver(times: int = REHEARSALS) -> None:
    """Run the job start path a few times in the forkserver (its own loop, closed after), so that what the
    first runs initialise or specialise (CPython 3.11 rewrites hot bytecode in place) is done once there and
    shared by every job process, instead of written into each one's memory on its start path."""
    from .context import JobProcess

    loop = asyncio.new_event_loop()
    try:
        for _ in range(times):
            loop.run_until_complete(_rehearse(JobProcess(pid=0)))
    finally:
        loop.close()


def main(conn: Connection, config: ChildConfig) -> None:
    channel = Channel(conn)
    _setup(config, channel)
    inbox = Inbox(conn, config.parent_pid)
    from .context import JobProcess

    proc = JobProcess()
    try:
        entrypoint = _prewarm(config, proc)
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported, then we exit
        _report_init(channel, InitDone(error=format_error(exc)), config.parent_pid)
        _exit(1)
    loop = asyncio.new_event_loop()  # created now, not on the job start path
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_rehearse(proc))  # the pages the start path writes are copied now, not then
    gc.freeze()  # what prewarm built is never traversed by a collection on the job start path
    _report_init(channel, InitDone(), config.parent_pid)
    msg = inbox.get()
    if isinstance(msg, StartJob):
        loop.run_until_complete(_run(entrypoint, proc, msg, channel, inbox))
    _exit(0)


def _report_init(channel: Channel, done: InitDone, parent_pid: int) -> None:
    """Tell the worker prewarm ended; a worker killed meanwhile means exit quietly, as when orphaned."""
    try:
        channel.send(done)
    except OSError:
        _orphaned(parent_pid)


def _stop_descendants(grace: float = 1.0) -> None:
    """Processes the job started and left running: SIGTERM, then SIGKILL after `grace`."""
    import psutil

    try:
        left = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if not left:
        return
    logging.getLogger("agentdispatch.worker.job").warning(
        "job left %d process(es) running; stopping them", len(left), extra={"pids": [p.pid for p in left]}
    )
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _exit(code: int) -> None:
    """Exit now: the job is over, lingering user threads must not keep the process alive."""
    _stop_descendants()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
