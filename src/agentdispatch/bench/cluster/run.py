"""The cluster benchmark: CreateDispatch -> JobAssignment through N nodes on one Redis, side by side with
one node in memory and one node on Redis, in the same run.

Layout of each scenario (fresh servers each time, one redis-server for the run, FLUSHALL between):

- `nodes` x `agentdispatch server --dev [--redis URL]`, each its own process;
- `clients` client processes of the dispatch benchmark (bench/dispatch/client.py); client i hosts its
  share of the simulated workers *and* sends its share of CreateDispatch calls, both on node i % nodes.
  So workers are spread over the nodes and dispatches enter through every node; the server places each
  job on the least loaded worker of the whole cluster, which is on another node for about (N-1)/N of them.
- the same client processes, workers, dispatches and rate in every scenario, so the rows compare.

A dispatch is *cross-node* when the worker that got it is connected to another node than the one its
CreateDispatch went to. CPU is measured per process (psutil) over the measured phase only.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...protocol.errors import ConfigError
from ...testing.serverproc import HarnessError, ServerProcess, ServerProcessSettings
from ...testing.services import RedisProcess, ensure_installed
from ..common.stats import environment, ratio, summarize_ms
from ..dispatch.client import ClientPlan
from ..dispatch.run import ClientHandle, call_all, cpu_snapshot, split

CROSS_NODE_P99_BUDGET_MS = 2.0


@dataclass(frozen=True)
class ClusterBenchSettings:
    nodes: int = 3
    workers: int = 150
    dispatches: int = 2000
    #: dispatches/s over all clients; 0 = closed loop at `concurrency`
    rate: float = 200.0
    concurrency: int = 30
    #: client processes (same in every scenario); default: one per node
    clients: int = 0
    rtt_samples: int = 200
    assign_timeout: float = 20.0
    #: which scenarios to run, in order
    scenarios: tuple[str, ...] = ("memory-1", "redis-1", "redis-n")
    agent_name: str = "bench"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.workers < 1 or self.dispatches < 1:
            raise ConfigError("nodes, workers and dispatches must be >= 1")
        if self.rate < 0 or self.concurrency < 1 or self.assign_timeout <= 0:
            raise ConfigError("rate must be >= 0, concurrency >= 1, assign_timeout > 0")
        unknown = set(self.scenarios) - {"memory-1", "redis-1", "redis-n"}
        if unknown or not self.scenarios:
            raise ConfigError(f"scenarios are memory-1, redis-1, redis-n; got {sorted(unknown)}")
        if self.client_count > min(self.workers, self.concurrency):
            raise ConfigError("client processes must not exceed workers or concurrency")

    @property
    def client_count(self) -> int:
        return self.clients or self.nodes


@dataclass
class ScenarioRun:
    name: str
    nodes: int
    redis: bool
    node_urls: list[str] = field(default_factory=list)
    worker_node: dict[str, int] = field(default_factory=dict)
    sent: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    sent_node: dict[str, int] = field(default_factory=dict)
    assigned: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    idle_rtt: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    #: 1-minute load average when the measured phase started and ended (noise from other processes)
    load_avg: tuple[float, float] = (0.0, 0.0)


class ClusterBench:
    def __init__(self, settings: ClusterBenchSettings, log: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.log = log
        self.run_id = uuid.uuid4().hex[:8]

    def run(self) -> dict[str, Any]:
        s = self.settings
        binary = ensure_installed("redis-server", "redis-server")
        if binary is None and any(n.startswith("redis") for n in s.scenarios):
            raise HarnessError("redis-server is not installed and apt-get could not install it")
        results = []
        with contextlib.ExitStack() as stack:
            redis = stack.enter_context(RedisProcess(binary)) if binary else None
            for name in s.scenarios:
                nodes = s.nodes if name == "redis-n" else 1
                use_redis = name != "memory-1"
                if use_redis and redis is not None:
                    _flushall(redis)
                self.log(f"scenario {name}: {nodes} node(s){' on Redis' if use_redis else ' in memory'}")
                run = ScenarioRun(name, nodes, use_redis)
                with self._nodes(nodes, redis.url if use_redis and redis else None) as (urls, pids):
                    run.node_urls = urls
                    redis_pid = [redis.pid] if use_redis and redis else []
                    self._measure(run, pids, redis_pid)
                results.append(summarize(run))
        return build_result(s, results)

    @contextlib.contextmanager
    def _nodes(self, n: int, redis_url: str | None) -> Iterator[tuple[list[str], list[int]]]:
        args = ("--redis", redis_url) if redis_url else ()
        procs = [ServerProcess(ServerProcessSettings(extra_args=args)) for _ in range(n)]
        try:
            for proc in procs:
                proc.start()
            yield [p.url for p in procs], [p.pid for p in procs]
        finally:
            for proc in procs:
                proc.stop()

    def _clients(self, run: ScenarioRun) -> list[ClientHandle]:
        s = self.settings
        count = s.client_count
        shares = zip(
            split(s.workers, count), split(s.dispatches, count), split(s.concurrency, count), strict=True
        )
        return [
            ClientHandle(
                ClientPlan(
                    index=i,
                    url=run.node_urls[i % run.nodes],
                    api_key="devkey",
                    api_secret="secret",
                    agent_name=s.agent_name,
                    workers=workers,
                    dispatches=dispatches,
                    rate=s.rate / count,
                    concurrency=concurrency,
                    client="raw",
                    room_prefix=f"{s.agent_name}-{self.run_id}-{run.name}",
                    prober=i == 0,
                )
            )
            for i, (workers, dispatches, concurrency) in enumerate(shares)
        ]

    def _measure(self, run: ScenarioRun, node_pids: list[int], redis_pids: list[int]) -> None:
        s = self.settings
        clients = self._clients(run)
        try:
            for i, reply in enumerate(call_all(clients, "setup", timeout=180.0)):
                run.worker_node.update({w: i % run.nodes for w in reply["worker_ids"]})
            run.idle_rtt = clients[0].call("idle_rtt", s.rtt_samples, timeout=120.0)["rtt"]
            call_all(clients, "warmup", timeout=120.0)
            call_all(clients, "collect", timeout=120.0)  # generous: a loaded box stalls the clients
            pids: dict[str, list[int]] = {f"node{i}": [pid] for i, pid in enumerate(node_pids)}
            pids["redis"] = redis_pids
            load0 = os.getloadavg()[0]
            before, t0 = cpu_snapshot(pids, clients), time.perf_counter()
            budget = 120.0 + s.dispatches / max(s.rate, 50.0)
            for i, reply in enumerate(call_all(clients, "run", timeout=budget)):
                for entry in reply["sent"]:
                    run.sent[entry[0]] = tuple(entry)
                    run.sent_node[entry[0]] = i % run.nodes
                run.errors.extend(reply["errors"])
            self._collect(clients, run)
            run.wall = time.perf_counter() - t0
            after = cpu_snapshot(pids, clients)
            run.cpu = {role: after[role] - before[role] for role in after}
            run.load_avg = (round(load0, 2), round(os.getloadavg()[0], 2))
            clients[0].call("stop_probe", timeout=120.0)
        finally:
            for client in clients:
                client.close()

    def _collect(self, clients: list[ClientHandle], run: ScenarioRun) -> None:
        deadline = time.perf_counter() + self.settings.assign_timeout
        while True:
            for reply in call_all(clients, "collect", timeout=120.0):
                for entry in reply["assigned"]:
                    if entry[0] in run.assigned:
                        run.duplicates += 1
                    elif entry[0] in run.sent:
                        run.assigned[entry[0]] = tuple(entry)
            if len(run.assigned) >= len(run.sent) or time.perf_counter() > deadline:
                return
            time.sleep(0.02)


def _flushall(redis: RedisProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not sock.recv(64).startswith(b"+OK"):
            raise HarnessError("FLUSHALL failed")


def summarize(run: ScenarioRun) -> dict[str, Any]:
    pairs = [(run.sent[d], a) for d, a in run.assigned.items()]
    cross = [a[2] - sent[2] for sent, a in pairs if run.worker_node.get(a[3]) != run.sent_node[sent[0]]]
    same = [a[2] - sent[2] for sent, a in pairs if run.worker_node.get(a[3]) == run.sent_node[sent[0]]]
    first = min((e[2] for e in run.sent.values()), default=0.0)
    last = max((a[2] for _, a in pairs), default=first)
    n = len(pairs)
    node_cpu = {k: v for k, v in run.cpu.items() if k.startswith("node") and not k.endswith("_system")}
    per_node_ms = {k: round(v * 1000 / n, 4) if n else None for k, v in node_cpu.items()}
    return {
        "name": run.name,
        "nodes": run.nodes,
        "store": "redis" if run.redis else "memory",
        "dispatches": {"created": len(run.sent), "assigned": n, "errors": len(run.errors),
                       "duplicates": run.duplicates, "error_examples": run.errors[:3]},
        "latency_ms": summarize_ms(a[2] - sent[2] for sent, a in pairs),
        "same_node_latency_ms": summarize_ms(same),
        "cross_node_latency_ms": summarize_ms(cross),
        "throughput_per_s": round(n / (last - first), 1) if last > first else None,
        "load_avg_1m": {"start": run.load_avg[0], "end": run.load_avg[1]},
        "idle_ws_rtt_ms": summarize_ms(run.idle_rtt),
        "cpu": {
            "measured_seconds": round(run.wall, 3),
            "node_cpu_ms_per_dispatch": per_node_ms,
            "all_nodes_cpu_ms_per_dispatch": round(sum(node_cpu.values()) * 1000 / n, 4) if n else None,
            "redis_cpu_ms_per_dispatch": round(run.cpu.get("redis", 0.0) * 1000 / n, 4) if n else None,
            "clients_cores_used": ratio(run.cpu.get("clients"), run.wall),
            "machine_cores_used": ratio(run.cpu.get("machine"), run.wall),
        },
    }  # fmt: skip


def build_result(s: ClusterBenchSettings, scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    by = {sc["name"]: sc for sc in scenarios}
    single = by.get("memory-1", {}).get("latency_ms", {}).get("p99")
    cross = by.get("redis-n", {}).get("cross_node_latency_ms", {}).get("p99")
    delta = None if single is None or cross is None else round(cross - single, 3)
    return {
        "benchmark": "cluster",
        **environment(),
        "parameters": {**asdict(s), "scenarios": list(s.scenarios), "clients": s.client_count},
        "method": {
            "latency": "perf_counter before CreateDispatch is sent -> JobAssignment decoded by a SimWorker",
            "cross_node": "the worker that got the job is connected to another node than the one called",
            "cpu": "psutil user+system seconds of each server process (and redis-server) over the phase",
        },
        "scenarios": scenarios,
        "comparison": {
            "cross_node_p99_minus_memory_single_p99_ms": delta,
            "target_cross_node_p99_le_single_plus_2ms": (
                None if delta is None else delta <= CROSS_NODE_P99_BUDGET_MS
            ),
        },
    }  # fmt: skip


def default_json_path(now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("bench") / "results" / f"cluster-{stamp}.json"


def run_cluster_bench(
    settings: ClusterBenchSettings, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    return ClusterBench(settings, log).run()
