"""The dispatch server: wires store, registry, dispatcher, rooms and endpoints into one aiohttp app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from livekit.protocol import agent, models

from .. import __version__
from ..protocol import KeyRing, new_id
from ..util import SYSTEM_CLOCK, Clock
from .agent_endpoint import AgentEndpoint
from .config import ServerConfig
from .dispatcher import ENDED, Dispatcher
from .presence import PresenceHub
from .registry import WorkerRegistry
from .rooms import RoomManager
from .session import SessionState, WorkerSession
from .store import Store, open_store
from .twirp import TwirpServices

log = logging.getLogger("agentdispatch.server")


class DispatchServer:
    """One node of the dispatch server. `start()` binds; `aclose()` stops."""

    def __init__(self, config: ServerConfig, store: Store | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.version = __version__
        self.node_id = config.node_id or new_id("ND_")
        self.keys = KeyRing(config.keys)
        self._owns_store = store is None
        self.store: Store = store or open_store(config.redis_url, clock=clock)
        self.registry = WorkerRegistry(config.per_job_load)
        self.dispatcher = Dispatcher(config, self.store, self.registry, self.keys.first, clock)
        self.rooms = RoomManager(config, self.store, self.registry, self.dispatcher, clock)
        self.presence = PresenceHub(self)
        self.rooms.add_observer(self.presence)
        self._agent = AgentEndpoint(self)
        self._twirp = TwirpServices(self)
        self._orphans: dict[str, asyncio.TimerHandle] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_get("/", self._health)
        app.router.add_get("/agent", self._agent.handle)
        app.router.add_get("/presence", self.presence.handle)
        app.router.add_routes(self._twirp.routes())
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await self._site.start()
        log.info("dispatch server listening", extra={"url": self.url, "node_id": self.node_id})

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
        for timer in self._orphans.values():
            timer.cancel()
        self._orphans.clear()
        if self._site is not None:
            await self._site.stop()  # no new connections from here on
        go_away = agent.ServerMessage(go_away=agent.AgentHttp.GoAway(reason="server shutting down"))
        for session in self.registry:
            await session.send(go_away)
            await session.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")
        await self.rooms.aclose()
        await self.dispatcher.aclose()
        if self._owns_store:
            await self.store.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- worker events (called by the /agent endpoint) --------------------------------------------
    async def worker_registered(self, session: WorkerSession) -> None:
        self.registry.add(session)
        await self.rooms.worker_registered(session)
        await self.dispatcher.worker_available(session)

    async def worker_disconnected(self, session: WorkerSession) -> None:
        if session.state is SessionState.CLOSED:
            return
        registered = session.state is SessionState.REGISTERED
        session.transition(SessionState.CLOSED)
        if not registered:
            return
        running = await self.dispatcher.worker_gone(session)
        log.info("worker disconnected", extra={"worker_id": session.id, "running_jobs": len(running)})
        loop = asyncio.get_running_loop()
        for job_id in running:
            self._orphans[job_id] = loop.call_later(
                self.config.reconnect_grace, self._orphan_expired_cb, job_id, session.id
            )

    def _orphan_expired_cb(self, job_id: str, worker_id: str) -> None:
        self._orphans.pop(job_id, None)
        self.dispatcher.spawn(self._orphan_expired(job_id, worker_id), f"orphan:{job_id}")

    async def _orphan_expired(self, job_id: str, worker_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is None or job.state.status in ENDED or job.state.worker_id != worker_id:
            return
        await self.dispatcher.restart_or_fail(job, "worker lost", worker_id)

    async def migrate_jobs(self, session: WorkerSession, req: agent.MigrateJobRequest) -> None:
        """A (re)connected worker reports jobs it still runs: keep them with it, never run twice."""
        for job_id in req.job_ids:
            job = await self.store.get_job(job_id)
            owner = self.registry.get(job.state.worker_id) if job is not None else None
            if job is None or job.state.status in ENDED or (owner is not None and owner is not session):
                log.info("migrate refused, terminating", extra={"job_id": job_id, "worker_id": session.id})
                await session.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
                continue
            if self.dispatcher.is_pending(job_id):
                await self.dispatcher.cancel_pending(job_id)
            timer = self._orphans.pop(job_id, None)
            if timer is not None:
                timer.cancel()
            job.state.worker_id = session.id
            job.state.status = agent.JobStatus.JS_RUNNING
            job.state.updated_at = self.clock.wall_ns()
            await self.store.update_job(job)
            session.active_jobs.add(job_id)
            self.registry.refresh(session)
            log.info("job migrated", extra={"job_id": job_id, "worker_id": session.id})

    async def simulate_job(self, session: WorkerSession, req: agent.SimulateJobRequest) -> None:
        reg = session.registration
        room = models.Room()
        room.CopyFrom(req.room)
        if not room.name:
            room.name = new_id("sim-")
        if not room.sid:
            room.sid = new_id("RM_")
        job = agent.Job(
            id=new_id("AJ_"),
            dispatch_id=new_id("AD_"),
            type=agent.JobType.JT_PUBLISHER if req.HasField("participant") else agent.JobType.JT_ROOM,
            room=room,
            agent_name=reg.agent_name,
            namespace=reg.namespace,
            deployment=reg.deployment,
        )
        if req.HasField("participant"):
            job.participant.CopyFrom(req.participant)
        await self.dispatcher.offer_to(job, session)


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
