"""The worker's HTTP server: `GET /` health (503 until registered), `GET /worker` JSON, `GET /metrics`."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.registry import Collector

from ..protocol import WorkerError

log = logging.getLogger("agentdispatch.worker.http")


class WorkerMetrics:
    """Gauges refreshed from the worker's info on every scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.load = Gauge(
            "agentdispatch_worker_load", "Load reported to the server (0..1)", registry=self.registry
        )
        self.jobs = Gauge("agentdispatch_worker_jobs", "Jobs holding a slot", registry=self.registry)
        self.idle = Gauge(
            "agentdispatch_worker_idle_processes", "Prewarmed idle processes", registry=self.registry
        )
        self.available = Gauge(
            "agentdispatch_worker_available", "1 when the worker takes jobs", registry=self.registry
        )

    def render(self, info: dict[str, Any]) -> bytes:
        self.load.set(info["load"])
        self.jobs.set(info["slots_used"])
        self.idle.set(len(info["idle_pids"]))
        self.available.set(1 if info["status"] == "available" else 0)
        return generate_latest(self.registry)


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        info: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        collectors: Sequence[Collector] = (),
    ) -> None:
        self._host = host
        self._port = port
        self._info = info
        self._ready = ready
        self._metrics = WorkerMetrics()
        for collector in collectors:
            self._metrics.registry.register(collector)
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/", self._health)
        app.router.add_get("/worker", self._worker)
        app.router.add_get("/metrics", self._prometheus)
        self._app = app

    async def _health(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="OK")
        return web.Response(status=503, text="not registered")

    async def _worker(self, request: web.Request) -> web.Response:
        return web.json_response(self._info())

    async def _prometheus(self, request: web.Request) -> web.Response:
        body = self._metrics.render(self._info())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host or None, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                where = f"{self._host or '0.0.0.0'}:{self._port}"
                raise WorkerError(
                    f"the worker's HTTP port {where} is in use (another worker on this host?): "
                    f"pass --port N (WorkerOptions(port=N)), or --port 0 for a free port"
                ) from None
            raise WorkerError(f"the worker's HTTP server cannot listen on {self._port}: {exc}") from None
        log.info("worker HTTP server listening", extra={"url": self.url})

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            return self._port
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        host = self._host if self._host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
