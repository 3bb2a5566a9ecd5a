"""`agentdispatch bench worker`: job start latency and idle process memory, ours vs livekit-agents.

Argument parsing only; `bench.worker` does the work (see bench/README.md, "worker").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..bench.worker.result import worker_table
from ..bench.worker.run import (
    LOG_LEVELS,
    OURS_LAUNCH,
    WorkerBenchSettings,
    default_json_path,
    run_worker_bench,
)
from .bench_run import run_benchmark, settings_from_options


@click.command("worker")
@click.option(
    "--jobs", type=click.IntRange(1), default=40, show_default=True, help="Measured jobs per worker."
)
@click.option(
    "--idle", type=click.IntRange(1), default=3, show_default=True, help="num_idle_processes of both workers."
)
@click.option(
    "--warmup-jobs", type=click.IntRange(0), default=2, show_default=True, help="Unmeasured jobs first."
)
@click.option(
    "--pause",
    type=click.FloatRange(0),
    default=0.25,
    show_default=True,
    help="Seconds between a full pool and the next dispatch.",
)
@click.option(
    "--settle", type=click.FloatRange(0), default=2.0, show_default=True, help="Idle seconds before memory."
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="INFO", show_default=True)
@click.option(
    "--ours-launch",
    type=click.Choice(OURS_LAUNCH),
    default="script",
    show_default=True,
    help="Our worker as `python agent.py start` (script) or `agentdispatch worker start agent.py` (cli).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the workers' logs and records here (default: a temporary directory).",
)
def worker_bench_command(json_path: Path | None, **options: Any) -> None:
    """Job start latency (warm pool) and idle process memory: our worker vs livekit-agents, same server."""
    settings = settings_from_options(WorkerBenchSettings, **options)
    path = json_path or default_json_path(time.time())
    run_benchmark(lambda log: run_worker_bench(settings, log=log), path, worker_table)
