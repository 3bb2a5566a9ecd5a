"""The dispatch benchmark: CreateDispatch -> JobAssignment latency and throughput, against the real server.

Layout of one run:

- the server: `agentdispatch server --dev` in its own process (or an existing one, `server_url`);
- P client processes (`dispatch_client.py`), each with its share of the N simulated workers
  (real WebSocket protocol clients, auto-accept, agent_name "bench") and of the M CreateDispatch calls;
- client 0 also holds a prober worker (agent_name "bench-rtt", never gets jobs) that measures the
  loopback WebSocket round trip (WorkerPing -> WorkerPong) against the same server: idle before the
  load, and interleaved with the load.

Latency of a dispatch = perf_counter just before CreateDispatch is sent -> perf_counter where the
JobAssignment frame with that dispatch_id is decoded by whichever simulated worker got it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

from ...protocol import ConfigError
from ...protocol.urls import http_base
from ...testing.serverproc import HarnessError, ServerProcess, wait_healthy
from ..common.profiling import PySpyRecorder, summarize_collapsed
from ..common.stats import environment, ratio, summarize_ms
from .client import CLIENTS, Assigned, ClientPlan, Sent, client_main

LATENCY_TARGET_RTT_MULTIPLE = 3.0
THROUGHPUT_TARGET = 2000.0
#: P3: server CPU per dispatch (ms), measured on the server process alone
SERVER_CPU_MS_TARGET = 0.5
#: seconds of machine CPU sampled before the measured phase, to say how quiet the machine was
QUIET_SAMPLE_SECONDS = 1.0
CLIENT_DESCRIPTIONS = {
    "livekit-api": "livekit.api.LiveKitAPI(...).agent_dispatch.create_dispatch (JWT minted per call)",
    "raw": "raw aiohttp Twirp POST; protobuf bodies and room-scoped tokens made before the clock starts",
}


@dataclass(frozen=True)
class DispatchBenchSettings:
    workers: int = 100
    dispatches: int = 2000
    #: dispatches/s over all client processes; 0 = as fast as `concurrency` allows (closed loop)
    rate: float = 0.0
    #: CreateDispatch requests in flight, over all client processes
    concurrency: int = 64
    #: client processes generating load and hosting the simulated workers
    processes: int = 1
    client: str = "livekit-api"
    #: use an existing server instead of starting `agentdispatch server --dev`
    server_url: str | None = None
    api_key: str = "devkey"
    api_secret: str = "secret"
    rtt_samples: int = 500
    #: seconds after the last CreateDispatch answer within which every assignment must arrive
    assign_timeout: float = 10.0
    agent_name: str = "bench"
    #: one unmeasured round of `concurrency` dispatches first (opens connections)
    warmup: bool = True
    #: attach py-spy to the server process during the measured phase and write its output here
    profile_path: Path | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.dispatches < 1:
            raise ConfigError("workers and dispatches must be >= 1")
        if self.rate < 0:
            raise ConfigError(f"rate must be >= 0, got {self.rate!r}")
        if self.concurrency < 1 or self.processes < 1:
            raise ConfigError("concurrency and processes must be >= 1")
        if self.processes > self.workers or self.processes > self.concurrency:
            raise ConfigError("processes must not exceed workers or concurrency")
        if self.client not in CLIENTS:
            raise ConfigError(f"client must be one of {', '.join(CLIENTS)}")
        if self.rtt_samples < 1 or self.assign_timeout <= 0:
            raise ConfigError("rtt_samples must be >= 1 and assign_timeout > 0")
        if self.profile_path is not None and self.server_url is not None:
            raise ConfigError("profiling needs the benchmark to start the server itself")


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal integers (the first ones get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class ClientHandle:
    """A client process and its command pipe."""

    def __init__(self, plan: Any, target: Callable[[Any, Connection], None] = client_main) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.plan = plan
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=target, args=(plan, child), name=f"bench-client-{plan.index}", daemon=True
        )
        self.process.start()
        child.close()

    def send(self, command: str, *args: Any) -> None:
        self.conn.send((command, args))

    def receive(self, timeout: float, command: str = "") -> dict[str, Any]:
        if not self.conn.poll(timeout):
            alive = "still running" if self.process.is_alive() else f"exited {self.process.exitcode}"
            waiting = f" waiting for its answer to {command!r}" if command else ""
            raise HarnessError(f"client {self.plan.index} silent for {timeout:g}s{waiting} (process {alive})")
        status, payload = self.conn.recv()
        if status != "ok":
            raise HarnessError(str(payload))
        reply: dict[str, Any] = payload
        return reply

    def call(self, command: str, *args: Any, timeout: float = 60.0) -> dict[str, Any]:
        self.send(command, *args)
        return self.receive(timeout, command)

    def close(self) -> None:
        with contextlib.suppress(OSError, HarnessError, EOFError):
            self.call("close", timeout=15.0)
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


def call_all(
    clients: Sequence[ClientHandle], command: str, *args: Any, timeout: float
) -> list[dict[str, Any]]:
    for client in clients:
        client.send(command, *args)
    return [client.receive(timeout, command) for client in clients]


@dataclass
class Measurement:
    """Raw facts gathered by one run, before any statistics."""

    worker_ids: list[str] = field(default_factory=list)
    idle_rtt: list[float] = field(default_factory=list)
    idle_http_rtt: list[float] = field(default_factory=list)
    #: cores busy on the whole machine just before the measured phase (the server idle)
    busy_cores_before: float | None = None
    loaded_rtt: list[float] = field(default_factory=list)
    sent: dict[str, Sent] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    assigned: dict[str, Assigned] = field(default_factory=dict)
    duplicates: int = 0
    unmatched: int = 0
    warmup_sent: int = 0
    wall: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def busy_cores(seconds: float) -> float | None:
    """Cores the whole machine kept busy over the next `seconds` (all processes, ours included)."""
    before, started = psutil.cpu_times(), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = psutil.cpu_times(), time.perf_counter() - started

    def busy(t: Any) -> float:
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    # per second actually slept (a busy machine oversleeps), capped: psutil's tick counts are coarse
    return ratio(min(busy(after) - busy(before), elapsed * (os.cpu_count() or 1)), elapsed)


def cpu_snapshot(pids: dict[str, list[int]], clients: Sequence[ClientHandle]) -> dict[str, float]:
    """`_cpu_seconds` of `pids`, with "clients" read by the client processes from their own CPU clock.

    /proc counts CPU in 10 ms ticks: a small run's clients can use less than one tick each and read
    as 0. Each client answers "cpu" with `time.process_time()` instead (nanoseconds).
    """
    out = _cpu_seconds(pids)
    if clients:
        out["clients"] = sum(r["cpu_seconds"] for r in call_all(clients, "cpu", timeout=60.0))
    return out


def _cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes, and by the whole machine ("machine")."""
    machine = psutil.cpu_times()
    out: dict[str, float] = {
        "machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
        "steal": getattr(machine, "steal", 0.0),
    }
    for role, role_pids in pids.items():
        total = system = 0.0
        for pid in role_pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
                system += times.system
        out[role] = total
        out[f"{role}_system"] = system  # kernel time: loopback TCP sends and receives, epoll
    return out


class DispatchBench:
    """One run of the benchmark; `run()` returns the result as a JSON-ready dict."""

    def __init__(self, settings: DispatchBenchSettings, log: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.log = log
        self.run_id = uuid.uuid4().hex[:8]
        self.server_pid: int | None = None

    def run(self) -> dict[str, Any]:
        s = self.settings
        with self._server() as url:
            self.log(f"server at {url}")
            clients = self._start_clients(url)
            try:
                measurement = self._measure(clients)
            finally:
                for client in clients:
                    client.close()
        return build_result(s, measurement, self._profile_summary())

    @contextlib.contextmanager
    def _server(self) -> Iterator[str]:
        if self.settings.server_url is not None:
            url = http_base(self.settings.server_url)
            wait_healthy(url, 10.0)
            yield url
            return
        with ServerProcess() as server:
            self.server_pid = server.pid
            yield server.url

    def _start_clients(self, url: str) -> list[ClientHandle]:
        s = self.settings
        shares = zip(
            split(s.workers, s.processes),
            split(s.dispatches, s.processes),
            split(s.concurrency, s.processes),
            strict=True,
        )
        return [
            ClientHandle(
                ClientPlan(
                    index=i,
                    url=url,
                    api_key=s.api_key,
                    api_secret=s.api_secret,
                    agent_name=s.agent_name,
                    workers=workers,
                    dispatches=dispatches,
                    rate=s.rate / s.processes,
                    concurrency=concurrency,
                    client=s.client,
                    room_prefix=f"{s.agent_name}-{self.run_id}",
                    prober=i == 0,
                )
            )
            for i, (workers, dispatches, concurrency) in enumerate(shares)
        ]

    def _measure(self, clients: list[ClientHandle]) -> Measurement:
        s = self.settings
        m = Measurement()
        self.log(f"registering {s.workers} workers in {len(clients)} client process(es)")
        for reply in call_all(clients, "setup", timeout=120.0):
            m.worker_ids.extend(reply["worker_ids"])
        self.log(f"idle WebSocket round trips: {s.rtt_samples}")
        idle = clients[0].call("idle_rtt", s.rtt_samples, timeout=120.0)
        m.idle_rtt, m.idle_http_rtt = idle["rtt"], idle["http_rtt"]
        if s.warmup:
            m.warmup_sent = sum(r["sent"] for r in call_all(clients, "warmup", timeout=120.0))
            call_all(clients, "collect", timeout=120.0)  # warm-up assignments are not measured
        pids: dict[str, list[int]] = {}
        if self.server_pid is not None:
            pids["server"] = [self.server_pid]
        m.busy_cores_before = busy_cores(QUIET_SAMPLE_SECONDS)
        recorder = self._start_profiler()
        self.log(f"dispatching {s.dispatches} (rate={s.rate or 'max'}, concurrency={s.concurrency})")
        cpu_before, t_before = cpu_snapshot(pids, clients), time.perf_counter()
        budget = 120.0 + s.dispatches / max(s.rate, 50.0)
        for reply in call_all(clients, "run", timeout=budget):
            m.sent.update({entry[0]: entry for entry in reply["sent"]})
            m.errors.extend(reply["errors"])
        self._wait_assignments(clients, m)
        m.wall = time.perf_counter() - t_before
        cpu_after = cpu_snapshot(pids, clients)
        m.cpu_seconds = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
        if recorder is not None:
            recorder.stop()
        m.loaded_rtt = clients[0].call("stop_probe", timeout=120.0)["rtt"]
        return m

    def _wait_assignments(self, clients: Sequence[ClientHandle], m: Measurement) -> None:
        deadline = time.perf_counter() + self.settings.assign_timeout
        while True:
            for reply in call_all(clients, "collect", timeout=120.0):
                for entry in reply["assigned"]:
                    dispatch_id = entry[0]
                    if dispatch_id not in m.sent:
                        m.unmatched += 1
                    elif dispatch_id in m.assigned:
                        m.duplicates += 1
                    else:
                        m.assigned[dispatch_id] = entry
            if len(m.assigned) >= len(m.sent) or time.perf_counter() > deadline:
                return
            time.sleep(0.02)

    def _start_profiler(self) -> PySpyRecorder | None:
        path = self.settings.profile_path
        if path is None or self.server_pid is None:
            return None
        recorder = PySpyRecorder(self.server_pid, path)
        recorder.start()
        return recorder

    def _profile_summary(self) -> dict[str, Any] | None:
        path = self.settings.profile_path
        if path is None:
            return None
        summary: dict[str, Any] = {"path": str(path)}
        if path.suffix == ".txt" and path.exists():
            summary.update(summarize_collapsed(path))
        return summary


def _others(m: Measurement) -> float | None:
    """CPU used during the measured phase by processes that are not part of the benchmark (noise)."""
    own = m.cpu_seconds.get("server", 0.0) + m.cpu_seconds.get("clients", 0.0)
    return ratio(max(0.0, m.cpu_seconds.get("machine", 0.0) - own), m.wall)


def _jobs_per_worker(m: Measurement) -> dict[str, Any]:
    counts = Counter({worker_id: 0 for worker_id in m.worker_ids})
    counts.update(entry[3] for entry in m.assigned.values())
    values = list(counts.values()) or [0]
    return {
        "count": len(m.worker_ids),
        "jobs_min": min(values),
        "jobs_max": max(values),
        "jobs_mean": round(sum(values) / len(values), 2),
        "workers_without_jobs": sum(1 for v in values if v == 0),
    }


def _failures(s: DispatchBenchSettings, m: Measurement) -> dict[str, Any]:
    reasons = Counter(e.split(":", 1)[0] for e in m.errors)
    unassigned = len(m.sent) - len(m.assigned)
    if unassigned:
        reasons[f"no assignment within {s.assign_timeout:g}s"] += unassigned
    return {
        "total": s.dispatches - len(m.assigned),
        "create_errors": len(m.errors),
        "unassigned": unassigned,
        "duplicate_assignments": m.duplicates,
        "reasons": dict(reasons),
        "examples": m.errors[:5],
    }


def _timing(m: Measurement) -> dict[str, Any]:
    """Latency, CreateDispatch call time and throughput of the measured dispatches."""
    pairs = [(m.sent[d], a) for d, a in m.assigned.items()]
    first_send = min((sent[2] for sent in m.sent.values()), default=0.0)
    last_send = max((sent[2] for sent in m.sent.values()), default=0.0)
    last_assign = max((a[2] for _, a in pairs), default=first_send)
    phase = last_assign - first_send
    return {
        "latency_ms": summarize_ms(a[2] - sent[2] for sent, a in pairs),
        "create_dispatch_call_ms": summarize_ms(sent[3] - sent[2] for sent in m.sent.values()),
        "throughput": {
            "dispatches_per_s": round(len(pairs) / phase, 1) if phase > 0 else None,
            "phase_seconds": round(phase, 4),
            "send_rate_per_s": (
                round(len(m.sent) / (last_send - first_send), 1) if last_send > first_send else None
            ),
        },
    }


def _ratios(rtt: dict[str, dict[str, Any]], latency: dict[str, Any]) -> dict[str, float | None]:
    idle, loaded, http = rtt["idle"], rtt["loaded"], rtt["http_idle"]
    both = None if idle.get("p50") is None or http.get("p50") is None else idle["p50"] + http["p50"]
    return {
        # P1: p99 / (idle HTTP round trip + idle WS round trip), both p50 of the same run
        "p99_vs_http_plus_ws_rtt": ratio(latency.get("p99"), both),
        "p50_vs_idle_rtt": ratio(latency.get("p50"), idle.get("p50")),
        "p99_vs_idle_rtt": ratio(latency.get("p99"), idle.get("p99")),
        "p50_vs_loaded_rtt": ratio(latency.get("p50"), loaded.get("p50")),
        "p99_vs_loaded_rtt": ratio(latency.get("p99"), loaded.get("p99")),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _per_dispatch_ms(seconds: float | None, m: Measurement) -> float | None:
    if seconds is None or not m.assigned:
        return None
    return round(1000.0 * seconds / len(m.assigned), 4)


def _cpu(m: Measurement) -> dict[str, Any]:
    server = m.cpu_seconds.get("server")
    clients = m.cpu_seconds.get("clients")
    return {
        "count": os.cpu_count() or 1,
        "measured_seconds": round(m.wall, 3),
        "server_cpu_seconds": None if server is None else round(server, 3),
        "clients_cpu_seconds": None if clients is None else round(clients, 3),
        "server_system_cpu_seconds": _rounded(m.cpu_seconds.get("server_system")),
        "server_cpu_ms_per_dispatch": _per_dispatch_ms(server, m),
        "clients_cpu_ms_per_dispatch": _per_dispatch_ms(clients, m),
        "machine_busy_cores_before": m.busy_cores_before,
        "server_cores_used": None if server is None else ratio(server, m.wall),
        "clients_cores_used": ratio(m.cpu_seconds.get("clients"), m.wall),
        "machine_cores_used": ratio(m.cpu_seconds.get("machine"), m.wall),
        "others_cores_used": _others(m),
        "steal_cores": ratio(m.cpu_seconds.get("steal"), m.wall),
    }


def _method(s: DispatchBenchSettings, m: Measurement) -> dict[str, Any]:
    return {
        "server": s.server_url or "agentdispatch server --dev, separate process (started by the bench)",
        "client": CLIENT_DESCRIPTIONS[s.client],
        "client_processes": s.processes,
        "latency": "perf_counter before CreateDispatch is sent -> JobAssignment decoded by a SimWorker",
        "clock": "time.perf_counter = CLOCK_MONOTONIC, one clock for all processes of the machine",
        "rtt": "WorkerPing -> WorkerPong on a dedicated worker connection to the same server",
        "http_rtt": "GET / on one kept-alive HTTP connection, alternating with the idle WS round trips",
        "cpu": "psutil user+system seconds of the server process and of the client processes",
        "throughput": "assignments received / (last assignment - first CreateDispatch sent)",
        "warmup_dispatches_not_measured": m.warmup_sent,
    }


def build_result(s: DispatchBenchSettings, m: Measurement, profile: dict[str, Any] | None) -> dict[str, Any]:
    timing = _timing(m)
    rtt = {
        "idle": summarize_ms(m.idle_rtt),
        "http_idle": summarize_ms(m.idle_http_rtt),
        "loaded": summarize_ms(m.loaded_rtt),
    }
    ratios = _ratios(rtt, timing["latency_ms"])
    p1_ratio, throughput = ratios["p99_vs_http_plus_ws_rtt"], timing["throughput"]["dispatches_per_s"]
    cpu = _cpu(m)
    server_ms = cpu["server_cpu_ms_per_dispatch"]
    parameters = asdict(s)
    parameters["profile_path"] = str(s.profile_path) if s.profile_path else None
    return {
        "benchmark": "dispatch",
        **environment(),
        "parameters": parameters,
        "method": _method(s, m),
        "dispatches": {"requested": s.dispatches, "created": len(m.sent), "assigned": len(m.assigned)},
        **timing,
        "rtt_ms": rtt,
        "ratio": ratios,
        "failures": _failures(s, m),
        "workers": _jobs_per_worker(m),
        "cpu": cpu,
        "targets": {
            "latency_p99_le_3x_http_plus_ws_rtt": (
                None if p1_ratio is None else p1_ratio <= LATENCY_TARGET_RTT_MULTIPLE
            ),
            "throughput_ge_2000_per_s": None if throughput is None else throughput >= THROUGHPUT_TARGET,
            "server_cpu_le_0_5_ms_per_dispatch": (
                None if server_ms is None else server_ms <= SERVER_CPU_MS_TARGET
            ),
        },
        "profile": profile,
    }


def default_json_path(now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("bench") / "results" / f"dispatch-{stamp}.json"


def run_dispatch_bench(
    settings: DispatchBenchSettings, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the benchmark once and return the result (see bench/README.md for every field)."""
    return DispatchBench(settings, log).run()
