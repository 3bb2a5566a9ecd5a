"""Webhooks in LiveKit's format: `WebhookEvent` as protobuf JSON, signed so `WebhookReceiver` verifies it.

Each request carries `Authorization: <JWT>` signed with one API key (HS256, `iss` = key) whose `sha256`
claim is the base64 SHA-256 of the body — what livekit-api's `WebhookReceiver` checks, unchanged.
Room and participant events use LiveKit's names; job events carry the job in `WebhookEvent.job`
(`agent_job_pending` is LiveKit's name; the others are ours, listed in docs/operations.md).

Delivery never blocks dispatch: events go into bounded queues per URL — `lanes` of them, each with one
task posting in order; all events of one room share a lane, so a receiver sees each room's events in
order while rooms proceed side by side. A full lane drops its oldest event (counted, and reported in
the lane's next event's `num_dropped`). A failed post is retried with exponential backoff up to
`max_attempts`, then the event is given up (counted and logged) and the lane moves on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from google.protobuf import json_format
from livekit.protocol import webhook

from .. import __version__
from ..protocol import hs256
from ..protocol.errors import ConfigError
from ..protocol.ids import new_webhook_event_id
from ..util import Clock, TaskSet
from ..util.aio import wait_for
from .events import Event, JobEvent, JobEventKind, RoomEvent, RoomEventKind
from .metrics import WebhookStats

log = logging.getLogger("agentdispatch.server.webhooks")

JOB_EVENT_NAMES = {
    JobEventKind.CREATED: "agent_job_pending",
    JobEventKind.ASSIGNED: "agent_job_assigned",
    JobEventKind.RUNNING: "agent_job_running",
    JobEventKind.RESTARTING: "agent_job_restarting",
    JobEventKind.ENDED: "agent_job_ended",
}
ROOM_EVENT_NAMES = tuple(kind.value for kind in RoomEventKind)
WEBHOOK_EVENT_NAMES = (*ROOM_EVENT_NAMES, *JOB_EVENT_NAMES.values())
CONTENT_TYPE = "application/webhook+json"
USER_AGENT = f"agentdispatch/{__version__}"


@dataclass(frozen=True)
class WebhookOptions:
    urls: tuple[str, ...]
    api_key: str
    api_secret: str
    #: events waiting per URL; over it the oldest is dropped
    queue_size: int = 10_000
    #: concurrent ordered streams per URL; the events of one room always share one (so stay in order)
    lanes: int = 4
    #: posts per event before it is given up
    max_attempts: int = 12
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    request_timeout: float = 5.0
    #: seconds `aclose()` waits for queued events to go out
    flush_timeout: float = 3.0
    #: event names to send; empty: all
    events: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("webhooks need at least one URL")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"webhook URL must be http(s)://, got {url!r}")
        if not self.api_key or not self.api_secret:
            raise ConfigError("webhooks need an API key and secret to sign with")
        if self.queue_size < 1 or self.max_attempts < 1 or self.lanes < 1:
            raise ConfigError("webhook queue_size, lanes and max_attempts must be >= 1")
        unknown = sorted(self.events - set(WEBHOOK_EVENT_NAMES))
        if unknown:
            raise ConfigError(f"unknown webhook events {unknown}; known: {', '.join(WEBHOOK_EVENT_NAMES)}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigError("webhook backoff must satisfy 0 < initial <= max")


def webhook_name(event: Event) -> str | None:
    """The webhook event name of a lifecycle event, or None when it is not sent out."""
    if isinstance(event, RoomEvent):
        return event.kind.value
    if isinstance(event, JobEvent):
        return JOB_EVENT_NAMES.get(event.kind)
    return None


def to_webhook_event(event: Event, clock: Clock) -> webhook.WebhookEvent | None:
    """The LiveKit webhook for a lifecycle event, or None when the event is not sent out."""
    out = webhook.WebhookEvent(id=new_webhook_event_id(), created_at=clock.wall_ns() // 1_000_000_000)
    if isinstance(event, RoomEvent):
        out.event = event.kind.value
        out.room.CopyFrom(event.room)
        if event.participant is not None:
            out.participant.CopyFrom(event.participant)
        return out
    if isinstance(event, JobEvent):
        name = JOB_EVENT_NAMES.get(event.kind)
        if name is None:
            return None
        out.event = name
        out.job.CopyFrom(event.job)  # a copy: the record changes on
        out.room.CopyFrom(event.job.room)
        return out
    return None


def sign(body: str, api_key: str, api_secret: str, ttl: float = 300.0, now: float | None = None) -> str:
    """The Authorization value LiveKit sends: a JWT whose sha256 claim is the body's digest."""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    issued = int(time.time() if now is None else now)
    claims = {"iss": api_key, "nbf": issued, "exp": issued + int(ttl), "sha256": digest, "video": {}}
    return hs256.encode(claims, api_secret)


@dataclass
class _Lane:
    """One ordered stream of events to one URL: every event of a room goes through the same lane."""

    url: str
    queue: deque[webhook.WebhookEvent] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    dropped_since_sent: int = 0
    busy: bool = False


class WebhookSender:
    """Subscribe `sender.on_event` to the bus; `aclose()` flushes briefly and stops."""

    def __init__(self, options: WebhookOptions, clock: Clock) -> None:
        self._options = options
        self._clock = clock
        self._lanes = {url: [_Lane(url) for _ in range(options.lanes)] for url in options.urls}
        self._lane_size = max(1, -(-options.queue_size // options.lanes))
        self._tasks = TaskSet("webhooks")
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._closing = False
        self.delivered = 0
        self.failed_attempts = 0
        self.dropped = 0

    def statistics(self) -> WebhookStats:
        queued = sum(len(t.queue) + (1 if t.busy else 0) for t in self._all_lanes())
        return WebhookStats(self.delivered, self.failed_attempts, self.dropped, queued)

    def on_event(self, event: Event) -> None:
        if self._closing:
            return
        if self._options.events and webhook_name(event) not in self._options.events:
            return
        message = to_webhook_event(event, self._clock)
        if message is not None:
            self.send(message)

    def send(self, message: webhook.WebhookEvent) -> None:
        """Queue one ready-made webhook for every URL (the lane of its room)."""
        if self._closing:
            return
        if not self._started:
            self._start()
        index = zlib.crc32(message.room.name.encode()) % self._options.lanes
        for lanes in self._lanes.values():
            self._enqueue(lanes[index], message)

    def _enqueue(self, lane: _Lane, message: webhook.WebhookEvent) -> None:
        if len(lane.queue) >= self._lane_size:
            gone = lane.queue.popleft()
            lane.dropped_since_sent += 1
            self.dropped += 1
            if lane.dropped_since_sent == 1:  # once per run of drops, not once per event
                log.warning(
                    "webhook queue full, dropping the oldest", extra={"url": lane.url, "event": gone.event}
                )
        lane.queue.append(message)
        lane.idle.clear()
        lane.wake.set()

    def _all_lanes(self) -> list[_Lane]:
        return [lane for lanes in self._lanes.values() for lane in lanes]

    def _start(self) -> None:
        self._started = True
        for url, lanes in self._lanes.items():
            for i, lane in enumerate(lanes):
                self._tasks.spawn(self._deliver_loop(lane), f"deliver:{url}#{i}")

    async def _deliver_loop(self, target: _Lane) -> None:
        while True:
            while not target.queue:
                target.idle.set()
                target.wake.clear()
                await target.wake.wait()
            message = target.queue.popleft()
            target.busy = True
            try:
                await self._deliver(target, message)
            finally:
                target.busy = False

    async def _deliver(self, target: _Lane, message: webhook.WebhookEvent) -> None:
        message.num_dropped = target.dropped_since_sent
        body = json_format.MessageToJson(message, indent=None)  # lowerCamelCase, as LiveKit's protojson
        delay = self._options.backoff_initial
        for attempt in range(1, self._options.max_attempts + 1):
            error = await self._post(target.url, body)
            if error is None:
                self.delivered += 1
                target.dropped_since_sent = 0
                return
            self.failed_attempts += 1
            log.warning(
                "webhook delivery failed",
                extra={**_extras(message), "url": target.url, "attempt": attempt, "error": error},
            )
            if attempt < self._options.max_attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._options.backoff_max)
        self.dropped += 1
        target.dropped_since_sent += 1
        log.error(
            "webhook event given up",
            extra={**_extras(message), "url": target.url, "attempts": self._options.max_attempts},
        )

    async def _post(self, url: str, body: str) -> str | None:
        """One POST; None on a 2xx answer, else what went wrong."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._options.request_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        headers = {
            "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            "Authorization": sign(body, self._options.api_key, self._options.api_secret),
        }
        try:
            async with self._session.post(url, data=body.encode(), headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        self._closing = True
        if self._started:
            with contextlib.suppress(TimeoutError):
                idle = [t.idle.wait() for t in self._all_lanes()]
                await wait_for(asyncio.gather(*idle), self._options.flush_timeout)
        await self._tasks.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _extras(message: webhook.WebhookEvent) -> dict[str, str]:
    extras = {"event": message.event, "event_id": message.id, "room": message.room.name}
    if message.HasField("job"):
        extras["job_id"] = message.job.id
    return extras
