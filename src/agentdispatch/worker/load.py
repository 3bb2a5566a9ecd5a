"""Worker load: the container's CPU by default (cgroup v2, then v1, then the host), or a user load_fnc.

A user load_fnc may be sync or async, take the worker or nothing, raise, hang, or return garbage. The
`LoadMonitor` turns every outcome into one number in [0, 1] with `protocol.sanitize_load`: failures count
as full (1.0), each kind of problem is logged once, and the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..protocol.load import sanitize_load
from ..util.aio import wait_for

log = logging.getLogger("agentdispatch.worker.load")

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_WINDOW = 5  # samples averaged for the default CPU load (5 x 0.5 s = 2.5 s, like LiveKit)


def host_cpu_count() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(psutil.cpu_count() or 1)


# -- cgroup files (pure parsers; unit-tested with fake files) ---------------------------------------
def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` ("<quota|max> <period>") -> CPUs allowed, or None when unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cpu_stat_usage(text: str) -> float | None:
    """cgroup v2 ``cpu.stat`` -> seconds of CPU used (``usage_usec``), or None if absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            try:
                return int(value) / 1e6
            except ValueError:
                return None
    return None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` -> CPUs allowed, or None when unlimited."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class CpuSource(enum.Enum):
    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    HOST = "host"


class CpuSampler:
    """CPU utilisation of this container in [0, 1] between two calls of `sample()`."""

    def __init__(self, root: Path = CGROUP_ROOT, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._clock = clock
        self.source = self._detect()
        self._last: tuple[float, float] | None = None  # (cpu seconds, clock)

    def _detect(self) -> CpuSource:
        if parse_cpu_stat_usage(_read(self._root / "cpu.stat") or "") is not None:
            return CpuSource.CGROUP_V2
        if self._v1_usage_path() is not None:
            return CpuSource.CGROUP_V1
        return CpuSource.HOST

    def _v1_usage_path(self) -> Path | None:
        for sub in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
            path = self._root / sub / "cpuacct.usage"
            if _read(path) is not None:
                return path
        return None

    def cpu_count(self) -> float:
        """CPUs this container may use (the cgroup quota, else the CPUs we may run on)."""
        limit: float | None = None
        if self.source is CpuSource.CGROUP_V2:
            limit = parse_cpu_max(_read(self._root / "cpu.max") or "max")
        elif self.source is CpuSource.CGROUP_V1:
            for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                quota, period = (
                    _read(self._root / sub / "cpu.cfs_quota_us"),
                    _read(self._root / sub / "cpu.cfs_period_us"),
                )
                if quota is not None and period is not None:
                    limit = parse_cfs_quota(quota, period)
                    break
        host = host_cpu_count()
        return min(limit, host) if limit is not None else host

    def _usage_seconds(self) -> float | None:
        if self.source is CpuSource.CGROUP_V2:
            return parse_cpu_stat_usage(_read(self._root / "cpu.stat") or "")
        path = self._v1_usage_path()
        text = _read(path) if path is not None else None
        try:
            return int(text.strip()) / 1e9 if text is not None else None
        except ValueError:
            return None

    def sample(self) -> float | None:
        """Utilisation since the previous call; None on the first call or when the counters are unusable."""
        if self.source is CpuSource.HOST:
            return psutil.cpu_percent(interval=None) / 100.0
        usage, now = self._usage_seconds(), self._clock()
        if usage is None:
            return None
        last, self._last = self._last, (usage, now)
        if last is None or now <= last[1]:
            return None
        delta = usage - last[0]
        if delta < 0:  # counter reset
            return None
        return min(1.0, delta / ((now - last[1]) * self.cpu_count()))


def container_cpu_count(root: Path = CGROUP_ROOT) -> float:
    return CpuSampler(root).cpu_count()


# -- the load monitor ----------------------------------------------------------------------------------
class LoadProblem(enum.Enum):
    NAN = "returned NaN"
    INFINITE = "returned an infinite value"
    NEGATIVE = "returned a negative value"
    ABOVE_ONE = "returned a value above 1"
    NOT_A_NUMBER = "returned something that is not a number"
    RAISED = "raised an exception"
    TIMEOUT = "did not return within load_timeout"


@dataclass(frozen=True)
class LoadReading:
    value: float  # sanitised, in [0, 1]
    problem: LoadProblem | None = None
    error: BaseException | None = None


class LoadMonitor:
    """Produces the one load value that both the status report and offer answers use."""

    def __init__(
        self,
        load_fnc: Callable[..., Any] | None,
        worker: object,
        timeout: float,
        takes_worker: bool = False,
        sampler: CpuSampler | None = None,
    ) -> None:
        self._fnc = load_fnc
        self._worker = worker
        self._timeout = timeout
        self._takes_worker = takes_worker
        self._sampler = sampler if load_fnc is None else None
        if load_fnc is None and self._sampler is None:
            self._sampler = CpuSampler()
        self._window: collections.deque[float] = collections.deque(maxlen=DEFAULT_WINDOW)
        self._stuck: asyncio.Future[Any] | None = None
        self._logged: set[LoadProblem] = set()
        self.value = 0.0
        self.samples = 0
        self.problem: LoadProblem | None = None

    async def sample(self) -> float:
        """Take one reading, update `value`, and return it."""
        reading = self._sample_cpu() if self._fnc is None else await self._call_user()
        self.samples += 1
        self.value = reading.value
        self.problem = reading.problem
        if reading.problem is not None and reading.problem not in self._logged:
            self._logged.add(reading.problem)
            as_what = "full" if reading.value >= 1.0 else f"load {reading.value:g}"
            log.log(
                logging.ERROR if reading.error is not None else logging.WARNING,
                "load_fnc %s; counting the worker as %s while it does (logged once)",
                reading.problem.value if reading.error is None else f"raised {reading.error!r}",
                as_what,
                exc_info=reading.error,
            )
        return self.value

    def _sample_cpu(self) -> LoadReading:
        sample = self._sampler.sample() if self._sampler is not None else None
        if sample is not None:
            self._window.append(sanitize_load(sample))
        return LoadReading(sum(self._window) / len(self._window) if self._window else 0.0)

    async def _call_user(self) -> LoadReading:
        if self._stuck is not None:
            if not self._stuck.done():
                return LoadReading(1.0, LoadProblem.TIMEOUT)  # still hung: do not pile up more calls
            self._stuck = None
        try:
            raw = await wait_for(self._invoke(), self._timeout)
        except TimeoutError:
            return LoadReading(1.0, LoadProblem.TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - user code: logged once by sample(), counted as full
            return LoadReading(1.0, LoadProblem.RAISED, exc)
        return classify(raw)

    async def _invoke(self) -> Any:
        fnc = self._fnc
        if fnc is None:
            return 0.0
        args = (self._worker,) if self._takes_worker else ()
        if inspect.iscoroutinefunction(fnc):
            return await fnc(*args)
        fut = _run_in_daemon_thread(fnc, args)
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._stuck = fut  # the thread cannot be stopped; remember it so we never start a second one
            raise
        if inspect.isawaitable(result):
            result = await result
        return result


def _run_in_daemon_thread(fnc: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
    """Run a sync call in a daemon thread: a hung load_fnc must not block the loop or the exit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        try:
            value, ok = fnc(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed while the call hung
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=target, name="load_fnc", daemon=True).start()
    return fut


def classify(raw: Any) -> LoadReading:
    """Sanitise one load_fnc result; name the problem if there was one."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return LoadReading(1.0, LoadProblem.NOT_A_NUMBER)
    value = float(raw)
    problem = None
    if math.isnan(value):
        problem = LoadProblem.NAN
    elif math.isinf(value):
        problem = LoadProblem.INFINITE
    elif value < 0:
        problem = LoadProblem.NEGATIVE
    elif value > 1:
        problem = LoadProblem.ABOVE_ONE
    return LoadReading(sanitize_load(value), problem)
