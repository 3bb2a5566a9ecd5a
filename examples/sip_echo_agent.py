"""A phone agent: answers the call, plays a short greeting, then echoes the caller's voice back.

    agentdispatch sip --dev --sip-port 5060 --sip-config examples/sip.json   # server + SIP gateway
    python examples/sip_echo_agent.py dev                                   # this worker

Then call sip:+15550100@127.0.0.1:5060 from any SIP phone (or sipp); see docs/sip.md.
"""

from __future__ import annotations

import logging

from agentdispatch import JobContext, WorkerOptions, cli
from agentdispatch.worker.child.audio import DtmfEvent, tone

log = logging.getLogger("sip-echo-agent")

GREETING = tone(440.0, 0.3) + tone(660.0, 0.3)  # two beeps stand in for "hello"


async def entrypoint(ctx: JobContext) -> None:
    room = await ctx.connect()  # joining the room answers the call (200 OK)
    audio = room.audio  # the room's audio (a RoomAudio)
    caller = await room.wait_for_participant()
    log.info("call from %s", caller.attributes.get("sip.phoneNumber", caller.identity), extra=ctx.log_fields)

    @audio.on_dtmf
    def on_digit(event: DtmfEvent) -> None:
        log.info("caller pressed %s", event.digit, extra=ctx.log_fields)

    voice = audio.stream(caller.identity)  # buffer the caller's audio while the greeting plays
    await audio.play(GREETING, to=caller.identity)
    async for frame in voice:
        await audio.send(frame.pcm, to=caller.identity)


worker_options = WorkerOptions(entrypoint_fnc=entrypoint, agent_name="sip-echo")

if __name__ == "__main__":
    cli.run_app(worker_options)
