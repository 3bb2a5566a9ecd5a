"""A text agent: greets the user who joins its room, then echoes every chat message back.

    agentdispatch server --dev                 # terminal 1: the dispatch server
    python examples/echo_agent.py dev          # terminal 2: this worker
    agentdispatch worker dev examples/echo_agent.py   # (the same, through the agentdispatch command)

Then create a dispatch for agent "echo" (livekit-api `create_dispatch`) and join the room through the
presence endpoint with a user token; see docs/worker.md ("Try it").
"""

from __future__ import annotations

import logging

from agentdispatch import JobContext, JobProcess, WorkerOptions, cli
from agentdispatch.worker import DataMessage

log = logging.getLogger("echo-agent")
TOPIC = "chat"


def prewarm(proc: JobProcess) -> None:
    # load models, open clients... once per process, before any job is assigned to it
    proc.userdata["greeting"] = "Hello {name}, I am an echo agent: send me anything."


async def entrypoint(ctx: JobContext) -> None:
    room = await ctx.connect()

    @room.on("data")
    async def on_data(msg: DataMessage) -> None:
        if msg.topic == TOPIC:
            await room.send_data(f"echo: {msg.payload}", topic=TOPIC, destination_identities=[msg.sender])

    user = await room.wait_for_participant()
    template = ctx.proc.userdata.get("greeting", "Hello {name}!")
    await room.send_data(
        template.format(name=user.name or user.identity), topic=TOPIC, destination_identities=[user.identity]
    )
    log.info("greeted %s", user.identity, extra=ctx.log_fields)
    # returning keeps the job alive while the room is open; it ends when the room closes


worker_options = WorkerOptions(entrypoint_fnc=entrypoint, prewarm_fnc=prewarm, agent_name="echo")

if __name__ == "__main__":
    cli.run_app(worker_options)
