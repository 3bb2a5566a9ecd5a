"""The `agentdispatch` command.

Every subcommand loads lazily (see `lazy.py`): `agentdispatch --help` and `agentdispatch worker ...` import
only what they use. To add a command, write it in its own module and add ONE line to `COMMANDS` (or, for a
benchmark, to `BENCH_COMMANDS`): name -> LazyCommand("agentdispatch.cli.<module>:<command>", "<one-line
help>"). Nothing else imports the module; `tests/cli/test_lazy.py` checks the line against the command.
"""

from __future__ import annotations

import click

from .. import __version__
from .lazy import LazyCommand, LazyGroup

#: `agentdispatch <name>`: one line per command
COMMANDS: dict[str, LazyCommand] = {
    "server": LazyCommand("agentdispatch.cli.server_cmd:server_command", "Run the dispatch server."),
    "worker": LazyCommand(
        "agentdispatch.cli.worker_cmd:worker_command", "Run an agent file as a worker (dev or start)."
    ),
    "demo": LazyCommand(
        "agentdispatch.cli.demo_cmd:demo_command",
        "In-memory server + workers (each job in its own process) + dispatches: watch jobs placed and run.",
    ),
    "dispatch": LazyCommand(
        "agentdispatch.cli.ops_dispatch:dispatch_group",
        "Create, list and delete agent dispatches (AgentDispatchService).",
    ),
    "room": LazyCommand(
        "agentdispatch.cli.ops_dispatch:room_group", "Create, list and delete rooms (RoomService)."
    ),
    "workers": LazyCommand(
        "agentdispatch.cli.ops_fleet:workers_command",
        "List registered workers: agent name, node, state, load, jobs.",
    ),
    "status": LazyCommand(
        "agentdispatch.cli.ops_fleet:status_command",
        "One screen: workers, capacity, waiting jobs, dispatch latency, recent failures with reasons.",
    ),
    "events": LazyCommand(
        "agentdispatch.cli.ops_fleet:events_command",
        "Job lifecycle events: recent jobs, or a live stream with --follow (also workers and rooms).",
    ),
    "token": LazyCommand(
        "agentdispatch.cli.ops_token:token_group", "Mint access tokens, like `lk token create`."
    ),
    "sip": LazyCommand(
        "agentdispatch.cli.sip_cmd:sip_command", "Run the dispatch server with the SIP gateway."
    ),
}

#: `agentdispatch bench <name>`: one line per shipped benchmark
BENCH_COMMANDS: dict[str, LazyCommand] = {
    "dispatch": LazyCommand(
        "agentdispatch.cli.bench_cmd:dispatch_command",
        "CreateDispatch -> JobAssignment latency and throughput against the real server.",
    ),
    "worker": LazyCommand(
        "agentdispatch.cli.worker_bench_cmd:worker_bench_command",
        "Job start latency (warm pool) and idle process memory: our worker vs livekit-agents, same server.",
    ),
    "chaos": LazyCommand(
        "agentdispatch.cli.chaos_cmd:chaos_command",
        "SIGKILL workers and job processes under load; account for every dispatch.",
    ),
    "cluster": LazyCommand(
        "agentdispatch.cli.cluster_bench_cmd:cluster_bench_command",
        "CreateDispatch -> JobAssignment through N nodes on Redis vs 1 node in memory / on Redis.",
    ),
    "sip": LazyCommand(
        "agentdispatch.cli.sip_bench_cmd:sip_bench_command",
        "Post-dial delay (INVITE -> 180, INVITE -> 200) and outcomes of sipp calls at a rate, real workers.",
    ),
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="agentdispatch")
def cli() -> None:
    """agentdispatch: LiveKit-compatible agent dispatch server and worker runtime."""


@cli.group("bench", cls=LazyGroup, lazy=BENCH_COMMANDS)
def bench_group() -> None:
    """Benchmarks that ship with the product: print a table, write JSON (see bench/README.md)."""


def main() -> None:
    cli()
