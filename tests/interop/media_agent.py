"""A livekit-agents worker whose entrypoint does what real agents do first: `await ctx.connect()` (WebRTC)."""

from __future__ import annotations

import os

from livekit.agents import JobContext, WorkerOptions, cli


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()


def constant_load() -> float:
    return 0.0


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            agent_name=os.environ.get("AGENT_NAME", "media"),
            num_idle_processes=1,
            load_fnc=constant_load,
            host="127.0.0.1",
            port=0,
        )
    )
