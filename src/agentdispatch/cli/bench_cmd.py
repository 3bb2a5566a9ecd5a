"""`agentdispatch bench ...`: the shipped benchmarks. Argument parsing only.

Each benchmark is one subcommand of the `bench` group; add new ones with `bench_group.add_command(...)`
(or `@bench_group.command(...)`) in their own module.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click
from rich.console import Console

from ..bench.dispatch import DispatchBenchSettings, default_json_path, run_dispatch_bench
from ..bench.dispatch_client import CLIENTS
from ..bench.report import dispatch_table
from ..bench.serverproc import BenchError
from ..protocol import ConfigError
from .output import publish_result
from .worker_bench_cmd import worker_bench_command


@click.group("bench")
def bench_group() -> None:
    """Benchmarks that ship with the product: print a table, write JSON (see bench/README.md)."""


@bench_group.command("dispatch")
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
def dispatch_command(
    workers: int,
    dispatches: int,
    rate: float,
    concurrency: int,
    processes: int,
    client: str,
    rtt_samples: int,
    assign_timeout: float,
    json_path: Path | None,
    server_url: str | None,
    profile_server: Path | None,
) -> None:
    """CreateDispatch -> JobAssignment latency and throughput against the real server."""
    warnings.filterwarnings("ignore", message="The HMAC key is")
    console = Console(stderr=True)
    try:
        settings = DispatchBenchSettings(
            workers=workers,
            dispatches=dispatches,
            rate=rate,
            concurrency=concurrency,
            processes=processes,
            client=client,
            server_url=server_url,
            rtt_samples=rtt_samples,
            assign_timeout=assign_timeout,
            profile_path=profile_server,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    path = json_path or default_json_path(time.time())
    try:
        result = run_dispatch_bench(settings, log=lambda text: console.print(f"[dim]{text}[/dim]"))
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    publish_result(result, path, dispatch_table(result))


bench_group.add_command(worker_bench_command)
