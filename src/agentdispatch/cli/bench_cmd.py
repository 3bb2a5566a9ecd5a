"""`agentdispatch bench dispatch`: argument parsing only (the run is `bench.dispatch`).

Each benchmark is one module here and one line in `main.BENCH_COMMANDS`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..bench.dispatch.client import CLIENTS
from ..bench.dispatch.idle import IdleBenchSettings, default_idle_json_path, idle_table, run_idle_bench
from ..bench.dispatch.run import DispatchBenchSettings, default_json_path, run_dispatch_bench
from ..bench.dispatch.table import dispatch_table
from .bench_run import run_benchmark, settings_from_options


@click.command("dispatch")
@click.option("--workers", type=click.IntRange(1), default=100, show_default=True, help="Simulated workers.")
@click.option(
    "--dispatches", type=click.IntRange(1), default=2000, show_default=True, help="Measured dispatches."
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Dispatches/s; 0 = as fast as possible.",
)
@click.option(
    "--concurrency", type=click.IntRange(1), default=64, show_default=True, help="CreateDispatch in flight."
)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Client processes sharing the workers and the load (multiprocessing).",
)
@click.option("--client", type=click.Choice(CLIENTS), default="livekit-api", show_default=True)
@click.option("--rtt-samples", type=click.IntRange(1), default=500, show_default=True)
@click.option(
    "--assign-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait per job."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--server-url", default=None, help="Use this running server (dev keys) instead of starting one."
)
@click.option(
    "--profile-server",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="py-spy the server while measuring: .txt = collapsed stacks (+ top functions), .svg, .json.",
)
@click.option(
    "--idle-workers",
    type=click.IntRange(1),
    default=None,
    help="Instead: register N idle workers (--processes clients, default 4); registrations/s, KB, idle CPU.",
)
@click.option("--idle-seconds", type=click.FloatRange(1), default=10.0, show_default=True)
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="With --idle-workers: a third window against a do-nothing receive floor server.",
)
def dispatch_command(
    json_path: Path | None,
    profile_server: Path | None,
    idle_workers: int | None,
    idle_seconds: float,
    floor: bool,
    **options: Any,
) -> None:
    """CreateDispatch -> JobAssignment latency and throughput against the real server."""
    if idle_workers is not None:
        processes = options["processes"] if options["processes"] > 1 else 4
        idle = settings_from_options(
            IdleBenchSettings,
            idle_workers=idle_workers,
            processes=processes,
            window=idle_seconds,
            profile_path=profile_server,
            floor=floor,
        )
        idle_path = json_path or default_idle_json_path(time.time())
        run_benchmark(lambda log: run_idle_bench(idle, log=log), idle_path, idle_table)
        return
    settings = settings_from_options(DispatchBenchSettings, profile_path=profile_server, **options)
    path = json_path or default_json_path(time.time())
    run_benchmark(lambda log: run_dispatch_bench(settings, log=log), path, dispatch_table)
