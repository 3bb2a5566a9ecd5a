"""Audio in the room for a job: receive a participant's audio frames, send audio, see DTMF, hang up a call.

Audio rides on the presence connection as `data` messages on reserved topics (docs/sip.md,
"Audio frames"): `lk.audio` = base64 of 16-bit little-endian mono PCM at 8 kHz, `lk.dtmf` = JSON
`{"digit", "duration_ms"}`; `lk.sip.hangup` sent to a SIP participant ends its phone call.

    room = await ctx.connect()
    audio = RoomAudio(room)
    caller = await room.wait_for_participant()
    async for frame in audio.stream(caller.identity):
        await audio.send(frame.pcm, to=caller.identity)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .room import DataMessage, RoomConnection

AUDIO_TOPIC = "lk.audio"
DTMF_TOPIC = "lk.dtmf"
HANGUP_TOPIC = "lk.sip.hangup"
SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2  # 320: one 20 ms frame of 16-bit samples
QUEUE_FRAMES = 500  # 10 s per listener; older frames are dropped first


@dataclass(frozen=True)
class AudioFrame:
    sender: str  # identity of the participant whose audio this is
    pcm: bytes  # 16-bit little-endian mono samples at `sample_rate`
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class DtmfEvent:
    sender: str
    digit: str
    duration_ms: int


class RoomAudio:
    """Audio of one room connection. Create it once per job, right after `ctx.connect()`."""

    def __init__(self, room: RoomConnection) -> None:
        self._room = room
        self._queues: list[tuple[str | None, asyncio.Queue[AudioFrame | None]]] = []
        self._dtmf_handlers: list[Callable[[DtmfEvent], Any]] = []
        room.on("data", self._on_data)
        room.on("disconnected", self._on_disconnected)

    def _on_data(self, msg: DataMessage) -> None:
        if msg.topic == AUDIO_TOPIC:
            try:
                pcm = base64.b64decode(msg.payload, validate=True)
            except (ValueError, binascii.Error):
                return
            frame = AudioFrame(msg.sender, pcm)
            for identity, queue in self._queues:
                if identity is None or identity == msg.sender:
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(frame)
        elif msg.topic == DTMF_TOPIC:
            try:
                data = json.loads(msg.payload)
                event = DtmfEvent(msg.sender, str(data["digit"]), int(data.get("duration_ms", 0)))
            except (ValueError, KeyError, TypeError):
                return
            for handler in self._dtmf_handlers:
                handler(event)

    def _on_disconnected(self, reason: str) -> None:
        for _, queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def on_dtmf(self, handler: Callable[[DtmfEvent], Any]) -> Callable[[DtmfEvent], Any]:
        """Register a (synchronous) DTMF handler; usable as a decorator."""
        self._dtmf_handlers.append(handler)
        return handler

    def stream(self, identity: str | None = None) -> AudioStream:
        """Start buffering frames from `identity` (or anyone) now; iterate the stream to read them."""
        return AudioStream(self, identity)

    def frames(self, identity: str | None = None) -> AudioStream:
        """Audio frames as they arrive from now on (from `identity`, or anyone), until the room closes."""
        return self.stream(identity)

    def _attach(self, entry: tuple[str | None, asyncio.Queue[AudioFrame | None]]) -> None:
        self._queues.append(entry)
        if self._room.disconnected.is_set():
            entry[1].put_nowait(None)

    def _detach(self, entry: tuple[str | None, asyncio.Queue[AudioFrame | None]]) -> None:
        if entry in self._queues:
            self._queues.remove(entry)

    async def send(self, pcm: bytes, *, to: str | None = None) -> None:
        """Send PCM (16-bit LE mono, 8 kHz) to the room, or only to participant `to` (e.g. the caller)."""
        await self._room.send_data(
            base64.b64encode(pcm).decode(),
            topic=AUDIO_TOPIC,
            destination_identities=[to] if to else None,
        )

    async def play(self, pcm: bytes, *, to: str | None = None) -> None:
        """Send `pcm` in 20 ms frames at real-time pace (a greeting, a prompt)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
            await self.send(pcm[offset : offset + FRAME_BYTES], to=to)
            delay = start + (i + 1) * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def hangup(self, identity: str) -> None:
        """End the phone call of SIP participant `identity` (the gateway sends BYE)."""
        await self._room.send_data("", topic=HANGUP_TOPIC, destination_identities=[identity])


def tone(frequency: float, seconds: float, amplitude: float = 0.3) -> bytes:
    """A sine tone as 16-bit PCM at 8 kHz (for greetings and tests)."""
    n = int(SAMPLE_RATE * seconds)
    peak = int(32767 * max(0.0, min(amplitude, 1.0)))
    samples = (int(peak * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)) for i in range(n))
    return struct.pack(f"<{n}h", *samples)


class AudioStream:
    """Frames of one participant (or all), buffered from creation; `async for frame in stream`."""

    def __init__(self, audio: RoomAudio, identity: str | None) -> None:
        self._audio = audio
        self._queue: asyncio.Queue[AudioFrame | None] = asyncio.Queue(QUEUE_FRAMES)
        self._entry = (identity, self._queue)
        audio._attach(self._entry)

    def __aiter__(self) -> AudioStream:
        return self

    async def __anext__(self) -> AudioFrame:
        frame = await self._queue.get()
        if frame is None:
            self.close()
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        self._audio._detach(self._entry)
