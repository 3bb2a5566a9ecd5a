"""Agents run in real job processes by the SIP tests (entrypoints named `path:function`)."""

from __future__ import annotations

import json
from pathlib import Path

from agentdispatch import JobContext
from agentdispatch.worker.child.audio import DtmfEvent, RoomAudio


def _record(ctx: JobContext, **data: object) -> None:
    out = json.loads(ctx.job.metadata or "{}").get("out")
    if out:
        Path(out).write_text(json.dumps(data))


async def entry_answer(ctx: JobContext) -> None:
    """Join (which answers the call), note who called, then stay until the room closes."""
    room = await ctx.connect()
    caller = await room.wait_for_participant()
    _record(ctx, identity=caller.identity, kind=caller.kind, attributes=dict(caller.attributes))


async def entry_hangup(ctx: JobContext) -> None:
    """Answer, then end the phone call through the room (lk.sip.hangup)."""
    room = await ctx.connect()
    audio = RoomAudio(room)
    caller = await room.wait_for_participant()
    await audio.hangup(caller.identity)


async def entry_end_job(ctx: JobContext) -> None:
    """Answer, then end the job itself: the agent leaves the room and the caller gets a BYE."""
    room = await ctx.connect()
    await room.wait_for_participant()
    ctx.shutdown("agent finished")


async def entry_dtmf(ctx: JobContext) -> None:
    """Record the digits the caller presses (RFC 4733 → lk.dtmf events)."""
    room = await ctx.connect()
    audio = RoomAudio(room)
    digits: list[str] = []

    @audio.on_dtmf
    def on_digit(event: DtmfEvent) -> None:
        digits.append(event.digit)
        _record(ctx, digits="".join(digits), sender=event.sender)

    await room.wait_for_participant()
