"""The agent of `bench sip` (a data file run by path, never imported): join the room — which answers the
call — echo the caller's audio, and stay until the call ends (the caller's BYE closes the room)."""

from __future__ import annotations

import os

from agentdispatch import JobContext, WorkerOptions, cli
from agentdispatch.worker.child.audio import RoomAudio


async def entrypoint(ctx: JobContext) -> None:
    room = await ctx.connect()
    audio = RoomAudio(room)
    caller = await room.wait_for_participant()
    async for frame in audio.stream(caller.identity):
        await audio.send(frame.pcm, to=caller.identity)


def load() -> float:
    """BENCH_SIP_LOAD (e.g. 1.5: FULL) until the file BENCH_SIP_FREE_FILE exists, then 0."""
    switch = os.environ.get("BENCH_SIP_FREE_FILE", "")
    return 0.0 if switch and os.path.exists(switch) else float(os.environ["BENCH_SIP_LOAD"])


if __name__ == "__main__":
    busy = "BENCH_SIP_LOAD" in os.environ
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            agent_name=os.environ.get("BENCH_SIP_AGENT", "bench-sip"),
            num_idle_processes=int(os.environ.get("BENCH_SIP_IDLE", "4")),
            load_fnc=load if busy else None,
            load_threshold=0.7 if busy else None,
        )
    )
