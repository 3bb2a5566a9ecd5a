"""`agentdispatch bench cluster`: argument parsing only (the run is `bench.cluster`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..bench.cluster.run import ClusterBenchSettings, default_json_path, run_cluster_bench
from ..bench.cluster.table import cluster_table
from .bench_run import run_benchmark, settings_from_options


@click.command("cluster")
@click.option(
    "--nodes", type=click.IntRange(1), default=3, show_default=True, help="Server processes on Redis."
)
@click.option("--workers", type=click.IntRange(1), default=150, show_default=True, help="Simulated workers.")
@click.option("--dispatches", type=click.IntRange(1), default=2000, show_default=True)
@click.option(
    "--rate", type=click.FloatRange(0), default=200.0, show_default=True, help="Dispatches/s; 0 = max."
)
@click.option("--concurrency", type=click.IntRange(1), default=30, show_default=True)
@click.option(
    "--clients", type=click.IntRange(0), default=0, help="Client processes [default: one per node]."
)
@click.option("--assign-timeout", type=float, default=20.0, show_default=True)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["memory-1", "redis-1", "redis-n"]),
    help="Run only these (repeatable) [default: all three].",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def cluster_bench_command(json_path: Path | None, scenarios: tuple[str, ...], **options: Any) -> None:
    """CreateDispatch -> JobAssignment through N nodes on Redis vs 1 node in memory / on Redis."""
    if scenarios:
        options["scenarios"] = scenarios
    settings = settings_from_options(ClusterBenchSettings, **options)
    path = json_path or default_json_path(time.time())
    run_benchmark(lambda log: run_cluster_bench(settings, log=log), path, cluster_table)
