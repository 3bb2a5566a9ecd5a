"""The admin HTTP API (`/admin/...`) and the dashboard (`/dashboard`): what operators read of the fleet.

Authenticated: a JWT signed with one of the server's API keys carrying the `roomAdmin` video grant,
or the server's `admin_token` (a shared secret, `--admin-token`), sent as `Authorization: Bearer ...`
or `?access_token=` (browsers' EventSource cannot set headers). With `admin_open_on_loopback`
(`--dev`) requests from 127.0.0.1 / ::1 need no token. The dashboard's static files are public;
the data they show comes from the authenticated API. docs/operations.md defines every endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from ..protocol.errors import AuthError
from ..protocol.tokens import KeyRing, bearer_token
from .events import Event
from .observe import FleetObserver, worker_dict

log = logging.getLogger("agentdispatch.server.admin")

LOOPBACK = ("127.0.0.1", "::1")
SSE_QUEUE = 2000
#: seconds between full snapshots on the event stream (also its keep-alive)
SNAPSHOT_INTERVAL = 5.0
#: job events after which the job's worker holds one job more or less
HOLDING_CHANGES = frozenset({"assigned", "migrated", "orphaned", "restarting", "ended"})
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class AdminAuth:
    keys: KeyRing
    admin_token: str = ""
    open_on_loopback: bool = False

    def check(self, request: web.Request) -> None:
        """Raise HTTPUnauthorized / HTTPForbidden unless the request may read the admin API."""
        if self.open_on_loopback and request.remote in LOOPBACK:
            return
        try:
            token = bearer_token(request.headers, request.query)
        except AuthError as exc:
            raise _error(web.HTTPUnauthorized, str(exc)) from None
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return
        try:
            claims = self.keys.verify(token)
        except AuthError as exc:
            raise _error(web.HTTPUnauthorized, str(exc)) from None
        if claims.video is None or not claims.video.room_admin:
            raise _error(web.HTTPForbidden, "the admin API requires the roomAdmin grant or the admin token")


def _error(cls: type[web.HTTPException], msg: str) -> web.HTTPException:
    body = json.dumps({"code": cls.__name__.removeprefix("HTTP").lower(), "msg": msg})
    return cls(text=body, content_type="application/json")


class AdminApi:
    """Routes for the admin API, its event stream, and the dashboard's files."""

    def __init__(self, observer: FleetObserver, auth: AdminAuth) -> None:
        self._observer = observer
        self._auth = auth
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self._unsubscribe: Callable[[], None] | None = None  # listening only while a stream is open
        self._static = resources.files("agentdispatch.server").joinpath("dashboard")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/status", self.status),
            web.get("/admin/workers", self.workers),
            web.get("/admin/jobs", self.jobs),
            web.get("/admin/events", self.events),
            web.get("/dashboard", self.dashboard),
            web.get("/dashboard/", self.dashboard),
            web.get("/dashboard/{name}", self.static_file),
        ]

    async def on_shutdown(self, app: web.Application) -> None:
        """End every event stream so the server's shutdown does not wait for them."""
        for queue in list(self._streams):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # -- JSON ------------------------------------------------------------------------------------
    def status_doc(self) -> dict[str, Any]:
        snap = self._observer.snapshot()
        workers = snap["workers"]
        snap["capacity"] = {
            "workers": len(workers),
            "available": sum(1 for w in workers if w["state"] == "available"),
            "active_jobs": sum(int(w["active_jobs"]) for w in workers),
            "mean_load": round(sum(float(w["load"]) for w in workers) / len(workers), 4) if workers else 0.0,
        }
        snap["recent_failures"] = [j for j in snap["recent_jobs"] if j["status"] == "failed"][:20]
        return snap

    async def status(self, request: web.Request) -> web.Response:
        self._auth.check(request)
        return web.json_response(self.status_doc())

    async def workers(self, request: web.Request) -> web.Response:
        self._auth.check(request)
        return web.json_response({"workers": self._observer.snapshot()["workers"]})

    async def jobs(self, request: web.Request) -> web.Response:
        self._auth.check(request)
        snap = self._observer.snapshot()
        keys = ("waiting", "waiting_jobs", "running", "recent_jobs")
        return web.json_response({k: snap[k] for k in keys})

    # -- server-sent events -------------------------------------------------------------------------
    def _on_event(self, event: Event, payload: dict[str, Any]) -> None:
        if not self._streams:
            return
        if payload["type"] == "worker" and payload["kind"] != "disconnected":
            current = self._observer.worker(payload["worker"]["worker_id"])  # with its job count
            if current is not None:
                payload = {**payload, "worker": worker_dict(current)}
        self._push(payload)
        if payload["type"] == "job" and payload["kind"] in HOLDING_CHANGES and payload["worker_id"]:
            worker = self._observer.worker(payload["worker_id"])  # its job count just changed
            if worker is not None:
                self._push({"type": "worker", "kind": "jobs", "detail": "", "worker": worker_dict(worker)})

    def _push(self, payload: dict[str, Any]) -> None:
        frame = sse_frame(str(payload["type"]), payload)  # encoded once for every reader
        for queue in list(self._streams):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # a reader that stopped reading: end its stream
                self._streams.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """`text/event-stream`: a `snapshot` now and every few seconds; `job`, `worker`, `room` events."""
        self._auth.check(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(SSE_QUEUE)
        if self._unsubscribe is None:
            self._unsubscribe = self._observer.add_listener(self._on_event)
        self._streams.add(queue)
        try:
            await resp.write(sse_frame("snapshot", self.status_doc()))
            while True:
                try:
                    async with asyncio.timeout(SNAPSHOT_INTERVAL):
                        first = await queue.get()
                except TimeoutError:
                    await resp.write(sse_frame("snapshot", self.status_doc()))
                    continue
                frames = [first]
                while not queue.empty() and frames[-1] is not None:  # one write for a burst
                    frames.append(queue.get_nowait())
                await resp.write(b"".join(f for f in frames if f is not None))
                if frames[-1] is None:
                    break
        except ConnectionResetError:
            pass  # the reader went away: nothing to tell it
        finally:
            self._streams.discard(queue)
            if not self._streams and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
        return resp

    # -- dashboard ------------------------------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static_file(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        path = self._static.joinpath(name)
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=path.read_bytes(),
            content_type=STATIC_TYPES[suffix],
            headers={"Cache-Control": "no-cache"},
        )


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
