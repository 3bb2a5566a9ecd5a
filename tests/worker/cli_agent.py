"""An agent file run as a real program by the CLI tests (`python cli_agent.py start`)."""

from __future__ import annotations

from worker_agents import entry_choose, prewarm_userdata

from agentdispatch import WorkerOptions, cli

worker_options = WorkerOptions(
    entrypoint_fnc=entry_choose,  # metadata {"do": "sleep" | "ignore_shutdown" | ...}
    prewarm_fnc=prewarm_userdata,
    agent_name="cli-agent",
    load_fnc=lambda: 0.0,  # the test machine's CPU must not make the worker FULL
    num_idle_processes=2,
    shutdown_process_timeout=1.0,
    drain_timeout=30.0,
)

if __name__ == "__main__":
    cli.run_app(worker_options)
