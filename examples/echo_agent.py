"""A text agent: greets the user who joins its room, then echoes every chat message back.

Try it (three terminals):

    agentdispatch server --dev                            # 1: the dispatch server (devkey / secret)
    python examples/echo_agent.py dev                     # 2: this worker (agent name "echo")
    agentdispatch worker dev examples/echo_agent.py       #    ... or the same through `agentdispatch`
    agentdispatch token create --room demo -i alice --agent echo   # 3: a user token that dispatches "echo"

Connecting as that user to ws://127.0.0.1:7880/presence?access_token=<token> joins room "demo" and
dispatches the agent; send ``{"type": "data", "payload": "hi", "topic": "chat"}`` and the agent answers
``echo: hi`` (the JSON messages are in docs/presence.md; `agentdispatch dispatch create --room demo
--agent-name echo` dispatches it without a token). tests/worker/test_worker_echo.py does exactly this.
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
