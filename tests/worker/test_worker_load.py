"""Load: cgroup parsing with fake files, the CPU sampler, and load_fnc sanitising/failure handling."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest

from agentdispatch.worker.load import (
    CpuSampler,
    CpuSource,
    LoadMonitor,
    LoadProblem,
    classify,
    host_cpu_count,
    parse_cfs_quota,
    parse_cpu_max,
    parse_cpu_stat_usage,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cgroup_v2_files_are_parsed() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("50000 100000") == 0.5
    assert parse_cpu_max("garbage") is None
    assert parse_cpu_stat_usage("usage_usec 2500000\nuser_usec 1\nsystem_usec 2\n") == 2.5
    assert parse_cpu_stat_usage("user_usec 1\n") is None


def test_cgroup_v1_quota_is_parsed() -> None:
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("150000\n", "100000\n") == 1.5
    assert parse_cfs_quota("x", "100000") is None


def test_sampler_reads_cgroup_v2_usage_against_the_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 1000000\n")
    clock = FakeClock()
    sampler = CpuSampler(tmp_path, clock)
    assert sampler.source is CpuSource.CGROUP_V2
    assert sampler.cpu_count() == 1.0
    assert sampler.sample() is None  # first reading only sets the baseline
    clock.now += 2.0
    stat.write_text("usage_usec 2000000\n")  # 1 s of CPU in 2 s on one CPU
    assert sampler.sample() == pytest.approx(0.5)
    clock.now += 1.0
    stat.write_text("usage_usec 500\n")  # counter reset: no reading rather than a negative one
    assert sampler.sample() is None


def test_sampler_unlimited_v2_uses_the_cpus_we_may_run_on(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 0\n")
    assert CpuSampler(tmp_path).cpu_count() == host_cpu_count()


def test_sampler_falls_back_to_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "cpuacct").mkdir()
    (tmp_path / "cpu").mkdir()
    usage = tmp_path / "cpuacct" / "cpuacct.usage"
    usage.write_text("0\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    clock = FakeClock()
    sampler = CpuSampler(tmp_path, clock)
    assert sampler.source is CpuSource.CGROUP_V1
    assert sampler.cpu_count() == 0.5
    sampler.sample()
    clock.now += 1.0
    usage.write_text(str(int(0.25e9)))  # 0.25 s of CPU in 1 s, half a CPU allowed
    assert sampler.sample() == pytest.approx(0.5)
    clock.now += 1.0
    usage.write_text(str(int(5e9)))  # more than possible: clamped
    assert sampler.sample() == 1.0


def test_sampler_without_cgroup_files_uses_the_host(tmp_path: Path) -> None:
    sampler = CpuSampler(tmp_path)
    assert sampler.source is CpuSource.HOST
    value = sampler.sample()
    assert value is not None and 0.0 <= value <= 1.0


@pytest.mark.parametrize(
    ("raw", "value", "problem"),
    [
        (0.3, 0.3, None),
        (1, 1.0, None),
        (math.nan, 1.0, LoadProblem.NAN),
        (math.inf, 1.0, LoadProblem.INFINITE),
        (-math.inf, 1.0, LoadProblem.INFINITE),
        (-1.0, 0.0, LoadProblem.NEGATIVE),
        (2.0, 1.0, LoadProblem.ABOVE_ONE),
        ("0.5", 1.0, LoadProblem.NOT_A_NUMBER),
        (None, 1.0, LoadProblem.NOT_A_NUMBER),
        (True, 1.0, LoadProblem.NOT_A_NUMBER),
    ],
)
def test_load_values_are_sanitised(raw: Any, value: float, problem: LoadProblem | None) -> None:
    reading = classify(raw)
    assert (reading.value, reading.problem) == (value, problem)


async def _sample(monitor: LoadMonitor, times: int) -> list[float]:
    return [await monitor.sample() for _ in range(times)]


async def test_sync_async_and_worker_argument_forms() -> None:
    worker = object()
    seen: list[object] = []

    def with_worker(w: object) -> float:
        seen.append(w)
        return 0.25

    async def async_plain() -> float:
        return 0.5

    assert await LoadMonitor(with_worker, worker, 1.0, takes_worker=True).sample() == 0.25
    assert seen == [worker]
    assert await LoadMonitor(async_plain, worker, 1.0).sample() == 0.5
    assert await LoadMonitor(lambda: async_plain(), worker, 1.0).sample() == 0.5  # sync returning awaitable


async def test_raising_load_fnc_counts_as_full_logs_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"fail": True}

    def flaky() -> float:
        if state["fail"]:
            raise ZeroDivisionError("bad sensor")
        return 0.2

    monitor = LoadMonitor(flaky, None, 1.0)
    with caplog.at_level(logging.WARNING, "agentdispatch.worker.load"):
        assert await _sample(monitor, 4) == [1.0] * 4
    records = [r for r in caplog.records if r.name == "agentdispatch.worker.load"]
    assert len(records) == 1 and "ZeroDivisionError('bad sensor')" in records[0].getMessage()
    assert records[0].exc_info is not None
    state["fail"] = False
    assert await monitor.sample() == 0.2 and monitor.problem is None


async def test_hanging_sync_load_fnc_times_out_without_piling_up_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def hang() -> float:
        calls.append(time.monotonic())
        time.sleep(3)
        return 0.1

    monitor = LoadMonitor(hang, None, 0.05)
    with caplog.at_level(logging.WARNING, "agentdispatch.worker.load"):
        assert await _sample(monitor, 5) == [1.0] * 5
    assert len(calls) == 1  # a hung call is never started a second time
    assert monitor.problem is LoadProblem.TIMEOUT
    assert len([r for r in caplog.records if r.name == "agentdispatch.worker.load"]) == 1


async def test_hanging_async_load_fnc_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def hang() -> float:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return 0.0

    monitor = LoadMonitor(hang, None, 0.05)
    assert await monitor.sample() == 1.0
    assert cancelled.is_set()


async def test_default_load_averages_the_cpu_sampler(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 0\n")
    clock = FakeClock()
    monitor = LoadMonitor(None, None, 1.0, sampler=CpuSampler(tmp_path, clock))
    assert await monitor.sample() == 0.0
    for usage in (1_000_000, 1_000_000):  # busy second, then idle second
        clock.now += 1.0
        stat.write_text(f"usage_usec {usage}\n")
        await monitor.sample()
    assert monitor.value == pytest.approx(0.5)
