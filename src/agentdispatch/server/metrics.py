"""The server's Prometheus metrics: `/metrics`, fed by the lifecycle events and the fleet read model.

Each server owns its `CollectorRegistry` (several servers can live in one process). Counters and
histograms move on events; gauges (waiting jobs, workers, load, the autoscaling signal) are computed
from the `FleetObserver` at scrape time. Labels are bounded: agent_name, stage, status, outcome,
reason, result, to, state — never a job id, worker id or room name. docs/operations.md lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from livekit.protocol import agent
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .events import Event, JobEvent, JobEventKind, WorkerEvent, WorkerEventKind
from .observe import FleetObserver, reason_label, status_name, worker_state

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: the utilisation the autoscaling signal aims at (LiveKit's production load threshold)
TARGET_LOAD = 0.7
WORKER_STATES = ("available", "full", "draining", "unresponsive")


@dataclass(frozen=True)
class WebhookStats:
    """What the webhook sender reports (see webhooks.WebhookSender.statistics)."""

    delivered: int
    failed_attempts: int
    dropped: int
    queued: int


class ServerMetrics:
    """Owns the registry; subscribe `self.on_event` to the bus after the observer."""

    def __init__(
        self,
        observer: FleetObserver,
        per_job_load: float,
        version: str,
        webhook_stats: Callable[[], WebhookStats] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._observer = observer
        r = self.registry
        self.stage_seconds = Histogram(
            "agentdispatch_dispatch_stage_seconds",
            "Seconds between the stages of a dispatch: created, offered, accepted, running.",
            ["agent_name", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_created = Counter(
            "agentdispatch_jobs_created", "Jobs created (dispatches placed).", ["agent_name"], registry=r
        )
        self.jobs_ended = Counter(
            "agentdispatch_jobs_ended", "Jobs ended, by outcome and reason.",
            ["agent_name", "outcome", "reason"], registry=r,
        )  # fmt: skip
        self.offers = Counter(
            "agentdispatch_offers", "Offers answered or expired, by result (accepted, declined, timeout).",
            ["agent_name", "result"], registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "agentdispatch_job_restarts", "Jobs offered again after a failure or a lost worker.",
            ["agent_name"], registry=r,
        )  # fmt: skip
        self.transitions = Counter(
            "agentdispatch_worker_status_transitions", "Workers switching between AVAILABLE and FULL.",
            ["agent_name", "to"], registry=r,
        )  # fmt: skip
        self.workers_registered = Counter(
            "agentdispatch_workers_registered", "Worker registrations.", ["agent_name"], registry=r
        )
        self.workers_lost = Counter(
            "agentdispatch_workers_disconnected", "Worker disconnections.", ["agent_name"], registry=r
        )
        r.register(_FleetCollector(observer, per_job_load, version, webhook_stats))
        self._status: dict[str, int] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, JobEvent):
            self._on_job(event)
        elif isinstance(event, WorkerEvent):
            self._on_worker(event)

    def _on_job(self, event: JobEvent) -> None:
        name, kind = event.job.agent_name, event.kind
        if kind is JobEventKind.CREATED:
            self._child(self.jobs_created, name).inc()
        elif kind is JobEventKind.DECLINED:
            self._child(self.offers, name, "declined").inc()
        elif kind is JobEventKind.OFFER_TIMEOUT:
            self._child(self.offers, name, "timeout").inc()
        elif kind is JobEventKind.ASSIGNED:
            self._child(self.offers, name, "accepted").inc()
            t = self._observer.track(event.job.id)
            if t is not None and t.stage_changed and t.offered is not None and t.accepted is not None:
                self._child(self.stage_seconds, name, "created_to_offered").observe(
                    max(0.0, t.offered - t.created)
                )
                self._child(self.stage_seconds, name, "offered_to_accepted").observe(
                    max(0.0, t.accepted - t.offered)
                )
        elif kind is JobEventKind.RUNNING:
            t = self._observer.track(event.job.id)
            if t is not None and t.stage_changed and t.running is not None:  # once, not per repeated report
                if t.accepted is not None:
                    running = max(0.0, t.running - t.accepted)
                    self._child(self.stage_seconds, name, "accepted_to_running").observe(running)
                self._child(self.stage_seconds, name, "created_to_running").observe(
                    max(0.0, t.running - t.created)
                )
        elif kind is JobEventKind.RESTARTING:
            self._child(self.restarts, name).inc()
        elif kind is JobEventKind.ENDED:
            job = event.job
            self._child(self.jobs_ended, name, status_name(job.state.status), reason_label(job)).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), cached (labels() takes a lock and validates on every call)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _on_worker(self, event: WorkerEvent) -> None:
        w = event.worker
        if event.kind is WorkerEventKind.REGISTERED:
            self.workers_registered.labels(w.agent_name).inc()
        elif event.kind is WorkerEventKind.DISCONNECTED:
            self.workers_lost.labels(w.agent_name).inc()
            self._status.pop(w.worker_id, None)
            return
        before = self._status.get(w.worker_id)
        self._status[w.worker_id] = w.status
        if before is not None and before != w.status:
            to = "full" if w.status == agent.WorkerStatus.WS_FULL else "available"
            self.transitions.labels(w.agent_name, to).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


def desired_workers(waiting: int, running: int, jobs_per_worker: float) -> int:
    """Workers needed so every running and waiting job fits at TARGET_LOAD (docs/operations.md)."""
    demand = waiting + running
    if demand <= 0:
        return 0
    return max(1, math.ceil(demand / max(jobs_per_worker * TARGET_LOAD, 1e-9)))


class _FleetCollector(Collector):
    """Gauges read from the fleet model at scrape time."""

    def __init__(
        self,
        observer: FleetObserver,
        per_job_load: float,
        version: str,
        webhook_stats: Callable[[], WebhookStats] | None,
    ) -> None:
        self._observer = observer
        self._per_job_load = per_job_load
        self._version = version
        self._webhook_stats = webhook_stats

    def collect(self) -> Iterator[Metric]:
        obs = self._observer
        info = GaugeMetricFamily("agentdispatch_server_info", "This server node.", labels=["node", "version"])
        info.add_metric([obs.node_id, self._version], 1)
        yield info
        yield from self._job_gauges()
        yield from self._worker_gauges()
        yield from self._webhook_metrics()

    def _job_gauges(self) -> Iterator[Metric]:
        obs = self._observer
        waiting = obs.waiting()
        running = obs.running()
        names = sorted(set(waiting) | set(running) | {w.agent_name for w in obs.workers()})
        count = GaugeMetricFamily(
            "agentdispatch_jobs_waiting", "Jobs waiting for a worker (queued or being offered).",
            labels=["agent_name"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "agentdispatch_jobs_oldest_wait_seconds", "How long the oldest waiting job has waited.",
            labels=["agent_name"],
        )  # fmt: skip
        run = GaugeMetricFamily(
            "agentdispatch_jobs_running", "Jobs assigned to a worker and not ended.", labels=["agent_name"]
        )
        per_worker = GaugeMetricFamily(
            "agentdispatch_worker_capacity_jobs", "Estimated jobs one worker takes at full load.",
            labels=["agent_name"],
        )  # fmt: skip
        desired = GaugeMetricFamily(
            "agentdispatch_desired_workers",
            "Autoscaling signal: workers needed for running + waiting jobs at the target load.",
            labels=["agent_name"],
        )
        for name in names:
            w = waiting.get(name)
            n_wait = w.count if w is not None else 0
            n_run = running.get(name, 0)
            capacity = self.jobs_per_worker(name)
            count.add_metric([name], n_wait)
            oldest.add_metric([name], w.oldest_wait if w is not None else 0.0)
            run.add_metric([name], n_run)
            per_worker.add_metric([name], capacity)
            desired.add_metric([name], desired_workers(n_wait, n_run, capacity))
        yield from (count, oldest, run, per_worker, desired)

    def jobs_per_worker(self, agent_name: str) -> float:
        """Jobs per worker at load 1.0: measured from workers' reports, else 1 / per_job_load."""
        ratios = sorted(
            w.active_jobs / w.load
            for w in self._observer.workers()
            if w.agent_name == agent_name and w.active_jobs > 0 and w.load >= 0.05
        )
        if ratios:
            return ratios[len(ratios) // 2]
        return 1.0 / self._per_job_load

    def _worker_gauges(self) -> Iterator[Metric]:
        workers = self._observer.workers()
        by_state = GaugeMetricFamily(
            "agentdispatch_workers", "Registered workers by agent name and state.",
            labels=["agent_name", "state"],
        )  # fmt: skip
        counts: dict[tuple[str, str], int] = {}
        for w in workers:
            counts[(w.agent_name, worker_state(w))] = counts.get((w.agent_name, worker_state(w)), 0) + 1
        for name in sorted({w.agent_name for w in workers}):
            for state in WORKER_STATES:
                by_state.add_metric([name, state], counts.get((name, state), 0))
        yield by_state
        load = GaugeHistogramMetricFamily(
            "agentdispatch_fleet_worker_load", "Workers by last reported load.", labels=["agent_name"]
        )
        for name in sorted({w.agent_name for w in workers}):
            loads = [w.load for w in workers if w.agent_name == name]
            buckets = [(str(b), float(sum(1 for x in loads if x <= b))) for b in LOAD_BUCKETS]
            buckets.append(("+Inf", float(len(loads))))
            load.add_metric([name], buckets, gsum_value=sum(loads))
        yield load

    def _webhook_metrics(self) -> Iterator[Metric]:
        if self._webhook_stats is None:
            return
        s = self._webhook_stats()
        for name, doc, value in (
            ("agentdispatch_webhook_deliveries", "Webhook requests answered 2xx.", s.delivered),
            ("agentdispatch_webhook_failures", "Webhook attempts that failed (each retry counts).",
             s.failed_attempts),
            ("agentdispatch_webhook_dropped", "Webhook events given up (retries spent or queue full).",
             s.dropped),
        ):  # fmt: skip
            fam = CounterMetricFamily(name, doc, labels=[])
            fam.add_metric([], value)
            yield fam
        queued = GaugeMetricFamily("agentdispatch_webhook_queued", "Webhook events waiting for delivery.")
        queued.add_metric([], s.queued)
        yield queued
