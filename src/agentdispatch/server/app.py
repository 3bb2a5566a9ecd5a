"""The dispatch server: wires store, registry, dispatcher, rooms and endpoints into one aiohttp app.

Each endpoint gets the narrow set of collaborators it needs, never this object. Every lifecycle
change is published on `events` (an EventBus); the job log, presence relay and operator tools
subscribe there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import __version__
from ..protocol import AuthError, KeyRing, bearer_token
from ..protocol.ids import new_node_id
from ..util import SYSTEM_CLOCK, Clock
from .agent_endpoint import AgentEndpoint, AgentEndpointDeps
from .config import ServerConfig
from .connguard import FD_RESERVE, ConnectionGuard, GuardedSite, raise_open_file_limit
from .dispatcher import Dispatcher
from .events import EventBus, JobEvent, RoomEvent
from .fleet import FleetView
from .joblog import JobLog
from .ops import Operations
from .presence import PresenceHub
from .registry import SelectionRules, WorkerRegistry
from .room_service import RoomAdminService
from .rooms import RoomManager
from .store import Store, open_store
from .twirp import TwirpServices

log = logging.getLogger("agentdispatch.server")

MEDIA_NOT_SERVED = (
    "agentdispatch serves LiveKit's agent protocol and Twirp APIs, not WebRTC media: "
    "a job joins its room through the presence endpoint (JobContext.connect() in agentdispatch's runtime); "
    "see docs/presence.md"
)


class DispatchServer:
    """One node of the dispatch server. `start()` binds; `aclose()` stops."""

    def __init__(self, config: ServerConfig, store: Store | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.version = __version__
        self.node_id = config.node_id or new_node_id()
        self.keys = KeyRing(config.keys)
        self._owns_store = store is None
        self.store: Store = store or open_store(config.redis_url, clock=clock)
        self.events = EventBus()
        self.events.subscribe(JobLog(), only=(JobEvent,))
        rules = SelectionRules(
            per_job_load=config.per_job_load,
            offer_timeout=config.offer_timeout,
            max_backoff=config.max_offer_backoff,
            status_stale_after=config.status_stale_after,
        )
        self.registry = WorkerRegistry(rules, clock, random.Random(), self.node_id)
        self._starters: list[Callable[[], Awaitable[None]]] = []
        self.dispatcher = self._make_dispatcher()
        self.rooms = RoomManager(config, self.store, self.registry, self.dispatcher, self.events, clock)
        self.fleet = FleetView(self.registry, self.dispatcher, clock)
        self.presence = PresenceHub(self.keys, self.rooms)
        self.events.subscribe(self.presence.on_event, only=(RoomEvent,))
        self._agent = AgentEndpoint(
            AgentEndpointDeps(config, self.keys, self.dispatcher, self.node_id, self.version, clock)
        )
        self.twirp = TwirpServices(self.keys, self.rooms, self.store, config.body_timeout, clock)
        for path, method in RoomAdminService(self.rooms, self.presence).methods().items():
            self.twirp.add_method(path, method)
        self.ops = Operations(config, self.events, self.keys, clock, self.node_id, self.version, self.fleet)
        self._guard: ConnectionGuard | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._closed = False
        self.app = self._build_app()

    def _make_dispatcher(self) -> Dispatcher:
        """Cluster mode (a Redis store) places and hands off jobs cluster-wide (docs/cluster.md)."""
        args = (self.config, self.store, self.registry, self.keys.first, self.events, self.clock)
        if not self.config.redis_url:
            return Dispatcher(*args)
        from .cluster_dispatch import ClusteredDispatcher  # redis-py only in cluster mode

        clustered = ClusteredDispatcher(*args, node_id=self.node_id)
        self._starters.append(lambda: clustered.start(self.config.public_url or self.url))
        return clustered

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_frame_bytes, middlewares=[self._guarded])
        app.router.add_get("/", self._health)
        app.router.add_get("/agent", self._agent.handle)
        app.router.add_get("/presence", self.presence.handle)
        for path in ("/rtc", "/rtc/validate", "/rtc/v1", "/rtc/v1/validate"):
            app.router.add_route("*", path, self._media)
        app.router.add_routes(self.twirp.routes())
        self.ops.mount(app)
        return app

    @web.middleware
    async def _guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._guard is not None:
            return await self._guard.middleware(request, self._logged(handler))
        return await self._logged(handler)(request)

    @staticmethod
    def _logged(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPNotFound:
                if request.match_info.route.resource is None:
                    log.info(
                        "request for an unknown path", extra={"path": request.path, "method": request.method}
                    )
                raise

        return run

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _media(self, request: web.Request) -> web.Response:
        extra = {"path": request.path, "remote": request.remote or "?"}
        try:
            claims = self.keys.verify(bearer_token(request.headers, request.query))
        except AuthError:
            claims = None
        if claims is not None and claims.video is not None and claims.video.room:
            extra.update(room=claims.video.room, identity=claims.identity)
            self.dispatcher.note_media_attempt(claims.video.room, claims.identity)
        log.warning("a client asked for WebRTC signalling, which this server does not serve", extra=extra)
        return web.json_response(
            {"code": "unimplemented", "msg": MEDIA_NOT_SERVED}, status=501, headers={"Connection": "close"}
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        limit = raise_open_file_limit()
        cap = self.config.max_connections or max(64, limit - FD_RESERVE)
        self._guard = ConnectionGuard(self.config.header_timeout, cap, self.clock)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = GuardedSite(self._runner, self.config.host, self.config.port, self._guard)
        await self._site.start()
        self._guard.start()
        for start_part in self._starters:
            await start_part()
        log.info(
            "dispatch server listening",
            extra={
                "url": self.url,
                "node_id": self.node_id,
                "open_file_limit": limit,
                "max_connections": cap,
            },
        )

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            return self.config.port
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def aclose(self) -> None:
        """Stop within `config.shutdown_timeout` (+1 s for the HTTP runner), whatever is connected.

        No restart begins once shutdown starts; workers get go_away and a close frame (their running
        jobs keep running and are migrated to the next server); presence clients get `room_closed`.
        """
        if self._closed:
            return
        self._closed = True
        budget = self.config.shutdown_timeout
        self.dispatcher.shutting_down = True
        if self._site is not None:
            await self._site.stop()  # no new connections from here on
        try:
            async with asyncio.timeout(budget):
                await self._agent.close_all("server shutting down", budget / 2)
                await self.presence.close_all("server shutting down", budget / 2)
        except TimeoutError:
            log.warning(
                "shutdown: connections did not close in time; cutting them", extra={"seconds": budget}
            )
        await self._agent.aclose()
        await self.rooms.aclose()
        await self.dispatcher.aclose()
        if self._guard is not None:
            await self._guard.aclose()
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget):
                    await self._runner.cleanup()
            self._runner = None
        if self._owns_store:
            await self.store.aclose()


async def serve_forever(
    config: ServerConfig, on_started: Callable[[DispatchServer], None] | None = None
) -> None:
    """Run a server until cancelled (the CLI wraps this with signal handling)."""
    server = DispatchServer(config)
    await server.start()
    if on_started is not None:
        on_started(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.aclose()
