"""`agentdispatch demo`: argument parsing only; the demo itself is `agentdispatch.demo`."""

from __future__ import annotations

import asyncio

import click

from ..demo.runner import DemoSettings, SimWorkerSource, run_demo
from ..demo.runtime import RuntimeWorkerSource
from .logs import setup_logging
from .output import stdout_console


@click.command("demo")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True, help="Regular workers.")
@click.option(
    "--dispatches", type=click.IntRange(1, 500), default=20, show_default=True, help="Regular dispatches."
)
@click.option(
    "--seconds",
    type=click.FloatRange(0.5, 20),
    default=6.0,
    show_default=True,
    help="Seconds over which the dispatches are created.",
)
@click.option(
    "--simulated",
    is_flag=True,
    help="Use simulated protocol clients instead of the worker runtime (no job processes).",
)
def demo_command(workers: int, dispatches: int, seconds: float, simulated: bool) -> None:
    """In-memory server + workers (each job in its own process) + dispatches: watch jobs placed and run."""
    setup_logging("ERROR")  # the table tells the story; a failed job is not a warning here
    settings = DemoSettings(workers=workers, dispatches=dispatches, seconds=seconds)
    source = SimWorkerSource() if simulated else RuntimeWorkerSource()
    console = stdout_console()
    summary = asyncio.run(run_demo(settings, console, source))
    if summary.unfinished:  # the demo's time cap: say so, and do not pass for a complete run
        raise click.ClickException(
            f"time limit reached ({settings.time_limit:g} s) with {summary.unfinished} job(s) not ended; "
            "the machine may be busy: try --dispatches 10 or --seconds 10"
        )
    if summary.create_errors:
        raise click.ClickException(f"{len(summary.create_errors)} dispatch(es) could not be created")
