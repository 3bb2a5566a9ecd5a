"""The pool of prewarmed job processes.

Keeps `target` processes idle (prewarmed) so a job starts without paying for interpreter start-up and
prewarm. The worker lowers the target when it is loaded or near max_jobs (idle processes cost memory and
would not be used). Consecutive init failures back off exponentially instead of respawning in a tight loop
(probing with one process, even at target 0, until one starts again); while they last the pool is
`failing` (the worker reports FULL) and jobs waiting for a process fail at once with the init error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..util import TaskSet
from .supervised import InitError, ProcState, SupervisedProc

log = logging.getLogger("agentdispatch.worker.pool")


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        """Delay before the next spawn after `failures` consecutive init failures (0 -> none)."""
        if failures <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (failures - 1)))


@dataclass
class PoolStats:
    spawned: int = 0
    init_failures: int = 0
    consecutive_failures: int = 0
    ready: int = 0  # processes that finished prewarm
    last_error: str = ""
    backoff_delays: list[float] = field(default_factory=list)


class ProcPool:
    def __init__(
        self,
        spawn: Callable[[], SupervisedProc],
        target: int,
        backoff: BackoffPolicy | None = None,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self._spawn = spawn
        self._on_state = on_state
        self._target = target
        self._backoff = backoff or BackoffPolicy()
        self._idle: collections.deque[SupervisedProc] = collections.deque()
        self._starting: set[SupervisedProc] = set()
        self._waiters: collections.deque[asyncio.Future[SupervisedProc]] = collections.deque()
        self._tasks = TaskSet("pool")
        self._wake = asyncio.Event()
        self._idle_changed = asyncio.Event()
        self._closed = False
        self.stats = PoolStats()

    # -- public --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks.spawn(self._maintain(), "maintain")

    @property
    def target(self) -> int:
        return self._target

    def set_target(self, target: int) -> None:
        target = max(0, target)
        if target != self._target:
            log.debug("idle process target %d -> %d", self._target, target)
            self._target = target
            self._wake.set()

    @property
    def failing(self) -> str:
        """Why job processes cannot start right now ("" when they can): set by an init failure, cleared
        when a process finishes prewarm."""
        if self.stats.consecutive_failures and not self._idle:
            return self.stats.last_error
        return ""

    @property
    def warm(self) -> bool:
        """A process has finished prewarm at least once (a fresh worker waits for this to be available)."""
        return self.stats.ready > 0

    def idle_pids(self) -> list[int]:
        return [p.pid for p in self._idle if p.pid is not None]

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def starting_count(self) -> int:
        return len(self._starting)

    async def wait_ready(self, count: int) -> None:
        """Wait until at least `count` processes are idle (used by tests and the benchmark)."""
        while len(self._idle) < count:
            self._idle_changed.clear()
            await self._idle_changed.wait()

    def acquire_nowait(self) -> SupervisedProc | None:
        """An idle prewarmed process, or None (lets a job start without an event-loop hop).

        The replacement is not started here: call `refill()` once the job is running, so that forking and
        prewarming the next process does not compete for the CPU with the job that is starting."""
        while self._idle:
            proc = self._idle.popleft()
            if not proc.exited:
                return proc
        return None

    def refill(self) -> None:
        """Top the idle pool up again (after a job took a process)."""
        self._wake.set()

    async def acquire(self) -> SupervisedProc:
        """A prewarmed process for a job: an idle one now, else the next to finish prewarm."""
        proc = self.acquire_nowait()
        if proc is not None:
            return proc
        fut: asyncio.Future[SupervisedProc] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        try:
            return await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    # -- upkeep --------------------------------------------------------------------------------------
    async def _maintain(self) -> None:
        while not self._closed:
            self._wake.clear()
            self._trim()
            missing = self._target + len(self._waiters) - len(self._idle) - len(self._starting)
            if self.stats.consecutive_failures and not self._idle and not self._starting:
                missing = max(missing, 1)  # keep probing: the worker stays FULL until one starts
            if missing > 0:
                failures = self.stats.consecutive_failures
                if failures:
                    delay = self._backoff.delay(failures)
                    self.stats.backoff_delays.append(delay)
                    log.warning(
                        "job process init failed %d time(s) in a row; next attempt in %gs", failures, delay
                    )
                    await asyncio.sleep(delay)
                    missing = 1  # probe with one process until init works again
                for _ in range(missing):
                    self._start_one()
                if failures:
                    await self._until_settled()
                    continue
            await self._wake.wait()

    async def _until_settled(self) -> None:
        while self._starting and not self._closed:
            self._wake.clear()
            await self._wake.wait()

    def _start_one(self) -> None:
        proc = self._spawn()
        self._starting.add(proc)
        self.stats.spawned += 1
        self._tasks.spawn(self._prewarm(proc), "prewarm")

    async def _prewarm(self, proc: SupervisedProc) -> None:
        try:
            await proc.start()
        except InitError as exc:
            self.stats.init_failures += 1
            self.stats.consecutive_failures += 1
            self.stats.last_error = str(exc)
            log.error("job process init failed: %s", exc, extra={"pid": proc.pid})
            while self._waiters:  # every waiting job is handed back, not held for the next attempt
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            self._on_state()
            return
        finally:
            self._starting.discard(proc)
            self._wake.set()
        was_failing = self.stats.consecutive_failures > 0
        self.stats.consecutive_failures = 0
        self.stats.ready += 1
        if was_failing or self.stats.ready == 1:
            self._on_state()
        if self._closed:
            await proc.aclose()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(proc)
                return
        self._idle.append(proc)
        self._idle_changed.set()
        self._tasks.spawn(self._watch_idle(proc), "watch-idle")

    async def _watch_idle(self, proc: SupervisedProc) -> None:
        result = await proc.wait_exit()
        if proc in self._idle:
            self._idle.remove(proc)
            if not self._closed and proc.state is ProcState.EXITED:
                log.warning("idle job process exited unexpectedly: %s", result.error, extra={"pid": proc.pid})
            self._wake.set()

    def _trim(self) -> None:
        while len(self._idle) > self._target:
            proc = self._idle.pop()  # the newest: the oldest have been warm longest
            log.debug("shrinking idle pool", extra={"pid": proc.pid})
            proc.request_shutdown("idle pool shrinking")

    def statistics(self) -> dict[str, Any]:
        return {
            "target": self._target,
            "idle": len(self._idle),
            "starting": len(self._starting),
            "waiting_jobs": len(self._waiters),
            "spawned": self.stats.spawned,
            "init_failures": self.stats.init_failures,
            "failing": self.failing or None,
        }

    async def aclose(self) -> None:
        self._closed = True
        self._wake.set()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(InitError("worker is shutting down"))
        procs = list(self._idle) + list(self._starting)
        self._idle.clear()
        for proc in procs:
            proc.request_shutdown("worker closing")
        await asyncio.gather(*(p.wait_exit() for p in procs if p.pid is not None), return_exceptions=True)
        await self._tasks.aclose()

    def kill_all(self) -> None:
        for proc in list(self._idle) + list(self._starting):
            proc.kill_now()
