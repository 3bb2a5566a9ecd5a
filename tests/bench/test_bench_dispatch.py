"""The dispatch benchmark, run small: every JSON field present and every number sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent

from agentdispatch.bench.common.profiling import summarize_collapsed
from agentdispatch.bench.common.stats import percentile, summarize_ms
from agentdispatch.bench.dispatch.idle import IdleBenchSettings, idle_table, run_idle_bench
from agentdispatch.bench.dispatch.idle_client import _first_frame, _Spread, client_frame
from agentdispatch.bench.dispatch.run import DispatchBenchSettings, run_dispatch_bench, split
from agentdispatch.protocol import ConfigError

WORKERS = 5
DISPATCHES = 50
RTT_SAMPLES = 50

SECTIONS = {
    "benchmark", "timestamp", "python", "platform", "cpu_count", "parameters", "method", "dispatches",
    "latency_ms", "create_dispatch_call_ms", "throughput", "rtt_ms", "ratio", "failures", "workers", "cpu",
    "targets", "profile",
}  # fmt: skip
MS_FIELDS = ("n", "min", "mean", "p50", "p95", "p99", "max")


def assert_ms_summary(stats: dict[str, Any], n: int) -> None:
    assert set(stats) == set(MS_FIELDS)
    assert stats["n"] == n
    assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]


def assert_sane(result: dict[str, Any], processes: int, client: str) -> None:
    assert set(result) >= SECTIONS
    assert result["benchmark"] == "dispatch"
    assert result["python"] == sys.version.split()[0]
    assert result["cpu_count"] >= 1
    params = result["parameters"]
    assert (params["workers"], params["dispatches"], params["client"]) == (WORKERS, DISPATCHES, client)
    assert result["method"]["client_processes"] == processes
    assert result["dispatches"] == {"requested": DISPATCHES, "created": DISPATCHES, "assigned": DISPATCHES}
    assert_ms_summary(result["latency_ms"], DISPATCHES)
    assert_ms_summary(result["create_dispatch_call_ms"], DISPATCHES)
    assert_ms_summary(result["rtt_ms"]["idle"], RTT_SAMPLES)
    assert_ms_summary(result["rtt_ms"]["http_idle"], RTT_SAMPLES)
    assert result["rtt_ms"]["loaded"]["n"] >= 1
    # the assignment arrives after the worker answered an offer: at least one WebSocket round trip later
    assert result["latency_ms"]["min"] > result["rtt_ms"]["idle"]["min"] / 2
    assert result["throughput"]["dispatches_per_s"] > 0
    assert result["throughput"]["phase_seconds"] > 0
    names = ("p50_vs_idle_rtt", "p99_vs_idle_rtt", "p50_vs_loaded_rtt", "p99_vs_loaded_rtt")
    for name in (*names, "p99_vs_http_plus_ws_rtt"):
        assert result["ratio"][name] > 0
    failures = result["failures"]
    assert (failures["total"], failures["create_errors"], failures["unassigned"]) == (0, 0, 0)
    assert failures["duplicate_assignments"] == 0
    workers = result["workers"]
    assert workers["count"] == WORKERS
    assert 0 <= workers["jobs_min"] <= workers["jobs_mean"] <= workers["jobs_max"] <= DISPATCHES
    assert workers["jobs_mean"] == DISPATCHES / WORKERS
    cpu = result["cpu"]
    assert cpu["server_cores_used"] > 0 and cpu["clients_cores_used"] > 0
    assert cpu["server_cpu_ms_per_dispatch"] > 0 and cpu["clients_cpu_ms_per_dispatch"] > 0
    assert cpu["server_cpu_seconds"] == pytest.approx(
        cpu["server_cpu_ms_per_dispatch"] * DISPATCHES / 1000, rel=0.01
    )
    assert 0 <= cpu["machine_busy_cores_before"] <= cpu["count"]
    for target in ("throughput_ge_2000_per_s", "latency_p99_le_3x_http_plus_ws_rtt"):
        assert isinstance(result["targets"][target], bool)
    assert isinstance(result["targets"]["server_cpu_le_0_5_ms_per_dispatch"], bool)


def test_two_client_processes_raw_twirp_in_process() -> None:
    settings = DispatchBenchSettings(
        workers=WORKERS,
        dispatches=DISPATCHES,
        concurrency=8,
        processes=2,
        client="raw",
        rtt_samples=RTT_SAMPLES,
    )
    result = run_dispatch_bench(settings)
    assert_sane(result, processes=2, client="raw")
    json.dumps(result)  # JSON-ready as returned


def test_cli_paced_livekit_api_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "result.json"
    args = ["--workers", str(WORKERS), "--dispatches", str(DISPATCHES), "--rtt-samples", str(RTT_SAMPLES)]
    args += ["--rate", "200", "--json", str(path)]
    proc = subprocess.run(
        [sys.executable, "-m", "agentdispatch", "bench", "dispatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(path.read_text())
    assert_sane(result, processes=1, client="livekit-api")
    assert result["parameters"]["rate"] == 200
    # paced: 50 dispatches at 200/s take about 0.25 s to send, not a burst
    assert result["throughput"]["send_rate_per_s"] < 400
    assert "dispatch latency" in proc.stdout and str(path) in proc.stdout
    assert "Warning" not in proc.stderr


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        DispatchBenchSettings(processes=3, workers=2)
    with pytest.raises(ConfigError):
        DispatchBenchSettings(client="curl")
    with pytest.raises(ConfigError):
        DispatchBenchSettings(rate=-1)


def test_split_and_percentiles() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(1001, 4)) == 1001
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert summarize_ms([0.001, 0.002, 0.003])["p50"] == pytest.approx(2.0)


def test_collapsed_stack_summary(tmp_path: Path) -> None:
    stacks = tmp_path / "server.txt"
    stacks.write_text(
        "main (a/cli.py:1);run (asyncio/base_events.py:2);select (selectors.py:3) 30\n"
        "main (a/cli.py:1);run (asyncio/base_events.py:2);verify (agentdispatch/protocol/tokens.py:9) 50\n"
        "main (a/cli.py:1);run (asyncio/base_events.py:2);write (asyncio/selector_events.py:4) 20\n"
    )
    summary = summarize_collapsed(stacks)
    assert summary["samples"] == 100
    assert summary["idle_percent"] == 30.0
    assert summary["top_self"][0] == {
        "function": "verify (agentdispatch/protocol/tokens.py)",
        "samples": 50,
        "percent": 50.0,
    }
    assert all(not row["function"].startswith("select") for row in summary["top_self"])
    assert [row["function"] for row in summary["top_total_agentdispatch"]] == [
        "verify (agentdispatch/protocol/tokens.py)"
    ]


def test_idle_fleet_registers_and_reports_memory_and_cpu() -> None:
    # 6,000 status frames/s: enough CPU in a 1 s window for the floor's (10 ms ticks) to be above 0
    settings = IdleBenchSettings(idle_workers=300, processes=2, window=1.0, status_every=0.05, concurrency=10)
    result = run_idle_bench(settings)
    json.dumps(result)
    assert result["benchmark"] == "dispatch-idle"
    reg = result["registration"]
    assert (reg["requested"], reg["registered"], reg["errors"]) == (300, 300, 0)
    assert reg["per_s"] > 0 and reg["server_cpu_ms_per_registration"] > 0
    memory = result["memory"]
    assert memory["server_rss_after_mb"] >= memory["server_rss_before_mb"] > 0
    silent, status = result["idle_cpu"]["silent"], result["idle_cpu"]["with_status"]
    assert silent["frames_per_s_sent"] == 0 and silent["server_cpu_us_per_frame"] is None
    assert status["frames_per_s_sent"] == 6000  # 300 workers, one status each per 0.05 s
    assert status["server_cpu_percent_of_core"] >= 0 and status["seconds"] >= 1.0
    assert status["server_user_percent_of_core"] >= 0 and status["server_system_percent_of_core"] >= 0
    user_plus_system = status["server_user_percent_of_core"] + status["server_system_percent_of_core"]
    assert abs(user_plus_system - status["server_cpu_percent_of_core"]) < 0.01
    # every worker stayed connected through both windows: the server kept all of them registered
    assert result["fleet_at_end"] == {"open": 300, "closed_by_server": 0}
    assert result["targets"]["idle_cpu_le_3_percent_at_10000"] is None  # judged at 10,000 only
    # the receive floor: as many plain connections, the same frames, bytes counted by a do-nothing server
    floor = result["idle_cpu"]["floor"]
    assert (floor["connections"], floor["accepted"], floor["connect_errors"]) == (300, 300, 0)
    assert floor["frame_bytes"] == len(client_frame(_status_payload()))
    assert floor["frames_per_s_sent"] == 6000 and floor["frames_per_s_received"] > 0
    assert floor["cpu_us_per_frame"] > 0 and floor["seconds"] >= 1.0
    assert floor["user_percent_of_core"] >= 0 and floor["system_percent_of_core"] >= 0
    assert floor["event_loop"].startswith("uvloop.") == result["uvloop_installed"]  # the server's loop
    assert result["idle_cpu"]["server_vs_floor"] > 0
    text = _render(idle_table(result))
    assert "idle CPU, with status" in text and "idle CPU, receive floor" in text and "server vs floor" in text


def test_idle_fleet_without_floor() -> None:
    settings = IdleBenchSettings(idle_workers=20, processes=1, window=1.0, status_every=0.5, floor=False)
    result = run_idle_bench(settings)
    assert result["idle_cpu"]["floor"] is None and result["idle_cpu"]["server_vs_floor"] is None
    assert result["fleet_at_end"] == {"open": 20, "closed_by_server": 0}
    assert "not measured" in _render(idle_table(result))


def _status_payload() -> bytes:
    status = agent.UpdateWorkerStatus(load=0.0, status=agent.WorkerStatus.WS_AVAILABLE, job_count=0)
    return agent.WorkerMessage(update_worker=status).SerializeToString()


def _render(table: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_client_frames_and_spreading() -> None:
    frame = client_frame(b"abc")
    assert frame == b"\x82\x83\x00\x00\x00\x00abc"  # binary, masked (key 0), 3 bytes
    assert client_frame(b"x" * 300)[:4] == b"\x82\xfe\x01\x2c"
    assert _first_frame(b"\x82\x03abc\x82") == b"abc"
    assert _first_frame(b"\x82\x05ab") is None
    spread = _Spread(10, 1.0)
    seen: list[int] = []
    deadline = time.perf_counter() + 2.2
    while time.perf_counter() < deadline:
        time.sleep(0.05)
        seen.extend(spread.due())
    # about 2 rounds over all 10 indexes, in order, none skipped
    assert len(seen) >= 15
    assert seen[:10] == list(range(10))
