"""Operator-facing parts of a server node, wired in one place: fleet model, /metrics, webhooks, admin API.

`DispatchServer` builds one `Operations` with its event bus and mounts it on its app; everything here
only subscribes to lifecycle events, so none of it can slow down or change dispatch.
"""

from __future__ import annotations

from aiohttp import web

from ..protocol.tokens import KeyRing
from ..util import Clock
from .admin import AdminApi, AdminAuth
from .config import ServerConfig
from .events import EventBus
from .metrics import ServerMetrics
from .observe import FleetObserver, WorkerSource
from .webhook_proc import WebhookProcess
from .webhooks import WebhookOptions


class Operations:
    def __init__(
        self,
        config: ServerConfig,
        bus: EventBus,
        keys: KeyRing,
        clock: Clock,
        node_id: str,
        version: str,
        fleet: WorkerSource | None = None,
    ) -> None:
        self.observer = FleetObserver(clock, node_id, fleet)
        bus.subscribe(self.observer)
        self.webhooks: WebhookProcess | None = None
        if config.webhook_urls:
            key = config.webhook_key or keys.first.key
            events = frozenset(config.webhook_events)
            options = WebhookOptions(tuple(config.webhook_urls), key, keys.secret(key), events=events)
            self.webhooks = WebhookProcess(options, clock)  # delivery off the dispatch loop
        stats = self.webhooks.statistics if self.webhooks is not None else None
        self.metrics = ServerMetrics(self.observer, config.per_job_load, version, stats)
        bus.subscribe(self.metrics.on_event)
        if self.webhooks is not None:
            bus.subscribe(self.webhooks.on_event)
        auth = AdminAuth(keys, config.admin_token, config.admin_open_on_loopback)
        self.admin = AdminApi(self.observer, auth)

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_routes(self.admin.routes())
        app.on_shutdown.append(self.admin.on_shutdown)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)

    async def _startup(self, app: web.Application) -> None:
        if self.webhooks is not None:
            self.webhooks.start()

    async def _cleanup(self, app: web.Application) -> None:
        if self.webhooks is not None:
            await self.webhooks.aclose()
