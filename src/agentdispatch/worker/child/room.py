"""A room connection through the server's presence endpoint (no media): participants, events, data.

`ws(s)://host/presence?access_token=<job token>`; see docs/presence.md for the JSON messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from google.protobuf import json_format
from livekit.protocol import models

from ...protocol import WorkerError
from ...protocol.urls import websocket_base
from ...util import TaskSet

if TYPE_CHECKING:
    from .audio import RoomAudio

log = logging.getLogger("agentdispatch.worker.room")

RoomEvent = Literal["participant_joined", "participant_left", "data", "disconnected"]
EVENTS: tuple[str, ...] = ("participant_joined", "participant_left", "data", "disconnected")
JOIN_TIMEOUT = 10.0
AGENT_KIND = models.ParticipantInfo.Kind.AGENT


class RoomError(WorkerError):
    """Joining the room failed or the connection is closed."""


@dataclass(frozen=True)
class DataMessage:
    sender: str  # identity of the participant who sent it
    payload: str
    topic: str


def presence_url(url: str, token: str) -> str:
    return f"{websocket_base(url)}/presence?access_token={token}"


def _participant(data: Any) -> models.ParticipantInfo:
    return json_format.ParseDict(data or {}, models.ParticipantInfo(), ignore_unknown_fields=True)


class RoomConnection:
    """The agent's presence in its room. Obtain it with `await ctx.connect()`."""

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, joined: dict[str, Any]
    ):
        self._session = session
        self._ws = ws
        self.room = json_format.ParseDict(joined.get("room") or {}, models.Room(), ignore_unknown_fields=True)
        self.local_participant = _participant(joined.get("participant"))
        self.remote_participants: dict[str, models.ParticipantInfo] = {}
        for p in joined.get("participants") or []:
            info = _participant(p)
            self.remote_participants[info.identity] = info
        self._handlers: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}
        self._changed = asyncio.Condition()
        self._tasks = TaskSet(f"room:{self.room.name}")
        self.disconnected = asyncio.Event()
        self.disconnect_reason = ""
        self._audio: RoomAudio | None = None
        self._reader = self._tasks.spawn(self._read(), "reader")

    @property
    def audio(self) -> RoomAudio:
        """This room's audio: participants' frames, sending audio, DTMF, hang-up (docs/sip.md)."""
        if self._audio is None:
            from .audio import RoomAudio

            self._audio = RoomAudio(self)
        return self._audio

    @classmethod
    async def open(cls, url: str, token: str) -> RoomConnection:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(presence_url(url, token), heartbeat=30.0)
            frame = await ws.receive(timeout=JOIN_TIMEOUT)
            event = json.loads(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else {}
            if event.get("type") != "joined":
                raise RoomError(f"could not join the room: {event.get('msg') or frame.type.name}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            await session.close()
            raise RoomError(f"could not join the room: {exc!r}") from exc
        except RoomError:
            await session.close()
            raise
        return cls(session, ws, event)

    # -- events --------------------------------------------------------------------------------------
    def on(self, event: RoomEvent, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler (sync or async); usable as ``@room.on("data")``."""
        if event not in self._handlers:
            raise ValueError(f"unknown room event {event!r}; one of {', '.join(EVENTS)}")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._handlers[event].append(fn)
            return fn

        return register(handler) if handler is not None else register

    def _emit(self, event: str, arg: Any) -> None:
        for fn in self._handlers[event]:
            result = fn(arg)
            if inspect.isawaitable(result):
                self._tasks.spawn(_await(result), f"on-{event}")

    async def _read(self) -> None:
        reason = "connection closed"
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                reason = await self._dispatch(json.loads(frame.data)) or reason
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reason = f"connection lost: {exc!r}"
        finally:
            self.disconnect_reason = self.disconnect_reason or reason
            self.disconnected.set()
            async with self._changed:
                self._changed.notify_all()
            self._emit("disconnected", self.disconnect_reason)

    async def _dispatch(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        if kind == "data":
            self._emit(
                "data",
                DataMessage(
                    str(event.get("from", "")), str(event.get("payload", "")), str(event.get("topic", ""))
                ),
            )
        elif kind in ("participant_joined", "participant_left"):
            p = _participant(event.get("participant"))
            if kind == "participant_joined":
                self.remote_participants[p.identity] = p
            else:
                self.remote_participants.pop(p.identity, None)
            async with self._changed:
                self._changed.notify_all()
            self._emit(kind, p)
        elif kind == "room_closed":
            self.disconnect_reason = f"room closed: {event.get('reason', '')}"
            return self.disconnect_reason
        elif kind == "error":
            log.warning("presence error", extra={"code": event.get("code"), "msg": event.get("msg")})
        return None

    # -- actions -------------------------------------------------------------------------------------
    async def send_data(
        self, payload: str, *, topic: str = "", destination_identities: list[str] | None = None
    ) -> None:
        if self.disconnected.is_set():
            raise RoomError(f"room connection is closed ({self.disconnect_reason})")
        msg: dict[str, Any] = {"type": "data", "payload": payload, "topic": topic}
        if destination_identities:
            msg["destination_identities"] = list(destination_identities)
        await self._ws.send_str(json.dumps(msg))

    async def wait_for_participant(self, identity: str | None = None) -> models.ParticipantInfo:
        """The first remote non-agent participant (or the one with `identity`), waiting until one is there."""
        async with self._changed:
            while True:
                for p in self.remote_participants.values():
                    if (identity is None and p.kind != AGENT_KIND) or p.identity == identity:
                        return p
                if self.disconnected.is_set():
                    raise RoomError(f"room connection closed while waiting ({self.disconnect_reason})")
                await self._changed.wait()

    async def aclose(self) -> None:
        if not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self._ws.send_str(json.dumps({"type": "leave"}))
            await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._tasks.aclose()
        await self._session.close()


async def _await(result: Any) -> None:
    await result
