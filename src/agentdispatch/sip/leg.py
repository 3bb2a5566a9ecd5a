"""The caller's leg in the room: a presence WebSocket (docs/presence.md) joined with a SIP participant token.

Audio and DTMF travel as presence `data` messages on reserved topics (docs/sip.md, "Audio frames"):
`lk.audio` carries base64 16-bit little-endian mono PCM at 8 kHz (20 ms = 320 bytes), `lk.dtmf` a
JSON `{"digit", "duration_ms"}`, and an agent sends `lk.sip.hangup` to the SIP participant to end the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from ..util import TaskSet

log = logging.getLogger("agentdispatch.sip.leg")

AUDIO_TOPIC = "lk.audio"
DTMF_TOPIC = "lk.dtmf"
HANGUP_TOPIC = "lk.sip.hangup"
AGENT_KIND = "AGENT"
SEND_QUEUE = 256  # ~5 s of 20 ms frames; beyond that frames are dropped, never the call


class RoomLeg:
    """Join on `open()`; `agents` are the agent participants present; `closed` is set when the room goes."""

    def __init__(self, ws_url: str, token: str, room: str) -> None:
        self._url = f"{ws_url.rstrip('/')}/presence?access_token={token}"
        self.room = room
        self.agents: set[str] = set()
        self.agent_present = asyncio.Event()
        self.agents_gone = asyncio.Event()  # set when the last agent left after one was there
        self.hangup_requested = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.on_audio: Callable[[bytes], None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self._tasks = TaskSet(f"sip-leg:{room}")
        self.dropped_frames = 0

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(self._url, heartbeat=30.0)
            frame = await self._ws.receive(timeout=10)
            event = json.loads(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else {}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            await self.aclose()
            raise ConnectionError(f"could not join room {self.room}: {exc!r}") from exc
        if event.get("type") != "joined":
            await self.aclose()
            raise ConnectionError(f"could not join room {self.room}: {event.get('msg') or event}")
        for p in event.get("participants") or []:
            self._participant_joined(p)
        self._tasks.spawn(self._read(), "reader")
        self._tasks.spawn(self._write(), "writer")

    def _participant_joined(self, p: dict[str, Any]) -> None:
        if p.get("kind") == AGENT_KIND:
            self.agents.add(str(p.get("identity", "")))
            self.agent_present.set()

    def _participant_left(self, p: dict[str, Any]) -> None:
        identity = str(p.get("identity", ""))
        if identity in self.agents:
            self.agents.discard(identity)
            if not self.agents:
                self.agents_gone.set()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                self._dispatch(json.loads(frame.data))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.close_reason = f"presence connection lost: {exc!r}"
        finally:
            self.close_reason = self.close_reason or "presence connection closed"
            self.closed.set()

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "participant_joined":
            self._participant_joined(event.get("participant") or {})
        elif kind == "participant_left":
            self._participant_left(event.get("participant") or {})
        elif kind == "room_closed":
            self.close_reason = f"room closed: {event.get('reason', '')}"
        elif kind == "data":
            self._data(event)

    def _data(self, event: dict[str, Any]) -> None:
        topic = event.get("topic")
        if event.get("from") not in self.agents:
            return
        if topic == AUDIO_TOPIC and self.on_audio is not None:
            try:
                pcm = base64.b64decode(str(event.get("payload", "")), validate=True)
            except ValueError:
                return
            if pcm and len(pcm) % 2 == 0:
                self.on_audio(pcm)
        elif topic == HANGUP_TOPIC:
            self.hangup_requested.set()

    # -- sending ---------------------------------------------------------------------------------
    def _post(self, payload: str, topic: str) -> None:
        msg = json.dumps({"type": "data", "payload": payload, "topic": topic})
        try:
            self._outbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped_frames += 1

    def send_audio(self, pcm: bytes) -> None:
        self._post(base64.b64encode(pcm).decode(), AUDIO_TOPIC)

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self._post(json.dumps({"digit": digit, "duration_ms": duration_ms}), DTMF_TOPIC)

    async def _write(self) -> None:
        assert self._ws is not None
        while True:
            msg = await self._outbox.get()
            try:
                await self._ws.send_str(msg)
            except (aiohttp.ClientError, OSError, ConnectionError):
                return

    async def aclose(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError):
                await self._ws.send_str(json.dumps({"type": "leave"}))
            await self._ws.close()
        await self._tasks.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None
