"""`agentdispatch bench chaos`: argument parsing only (the run is `bench.chaos`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from ..bench.chaos.model import ChaosSettings
from ..bench.chaos.result import chaos_table
from ..bench.chaos.run import default_json_path, run_chaos
from .bench_run import run_benchmark, settings_from_options


@click.command("chaos")
@click.option("--workers", type=click.IntRange(1), default=4, show_default=True, help="Worker processes.")
@click.option("--dispatches", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--kill-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of all worker processes of the run that are SIGKILLed: kills / (workers + kills).",
)
@click.option(
    "--worker-kills",
    type=click.IntRange(0),
    default=None,
    help="Exact worker kills (overrides --kill-fraction).",
)
@click.option(
    "--job-kills", type=click.IntRange(0), default=None, help="Job processes to SIGKILL [2% of dispatches]."
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the kill plan, job durations and victims [random]."
)
@click.option(
    "--max-jobs", type=click.IntRange(1), default=4, show_default=True, help="Jobs per worker at most."
)
@click.option("--min-duration", type=click.FloatRange(0, min_open=True), default=0.2, show_default=True)
@click.option("--max-duration", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True)
@click.option(
    "--in-flight",
    type=click.IntRange(1),
    default=None,
    help="Unfinished dispatches at most [workers x max-jobs].",
)
@click.option("--reconnect-grace", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True)
@click.option("--offer-timeout", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True)
@click.option("--dispatch-deadline", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True)
@click.option(
    "--end-timeout",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds after the last CreateDispatch within which every dispatch must end (else: lost).",
)
@click.option(
    "--nodes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Server processes; >= 2: a cluster on a real redis-server behind a real haproxy.",
)
@click.option("--kill-node", is_flag=True, help="SIGKILL one cluster node (never the last) during the run.")
@click.option(
    "--node-kill-workers",
    is_flag=True,
    help="With --kill-node: SIGKILL the node's workers with it (a survivor must re-dispatch their jobs).",
)
@click.option(
    "--node-kill-at",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.4,
    show_default=True,
    help="Share of the dispatches created before the node kill.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Job attempt records and server/worker logs [next to the JSON].",
)
def chaos_command(json_path: Path | None, run_dir: Path | None, **options: int | float | bool | None) -> None:
    """SIGKILL workers and job processes under load; account for every dispatch.

    Exits 1 if a dispatch was lost or a job ran twice at once (see bench/README.md).
    """
    settings = settings_from_options(ChaosSettings, **options)
    json_path = json_path or default_json_path(time.time())
    run_dir = run_dir or json_path.with_suffix("")
    try:
        result = run_benchmark(lambda log: run_chaos(settings, run_dir, log=log), json_path, chaos_table)
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise click.ClickException(f"interrupted; workers and server stopped (logs in {run_dir})") from None
    if not result["ok"]:
        click.echo(f"chaos FAILED: lost={result['lost']} double_run={result['double_run']}", err=True)
        sys.exit(1)
