"""`agentdispatch bench sip`: post-dial delay and outcomes of calls placed by sipp at a rate.

Argument parsing only; `bench.sip` does the work (see bench/README.md, "sip").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..bench.sip.cases import run_sip_cases
from ..bench.sip.run import SipBenchSettings, default_json_path, run_sip_bench
from ..bench.sip.table import cases_table, sip_table
from .bench_run import run_benchmark, settings_from_options


@click.command("sip")
@click.option("--calls", type=click.IntRange(1), default=300, show_default=True, help="Measured calls.")
@click.option(
    "--rate", type=click.FloatRange(0.1), default=10.0, show_default=True, help="New calls per second."
)
@click.option(
    "--concurrent", type=click.IntRange(1), default=100, show_default=True, help="Calls at once at most."
)
@click.option("--hold", type=click.FloatRange(0), default=10.0, show_default=True, help="Seconds per call.")
@click.option(
    "--audio",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds of G.711 each caller sends after the answer (echoed back); 0 = none.",
)
@click.option(
    "--warmup", type=click.IntRange(0), default=5, show_default=True, help="Unmeasured calls first."
)
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Worker processes.")
@click.option("--idle", type=click.IntRange(0), default=4, show_default=True, help="num_idle_processes each.")
@click.option(
    "--ringing-timeout", type=float, default=30.0, show_default=True, help="Gateway ringing timeout."
)
@click.option("--transport", type=click.Choice(["udp", "tcp"]), default="udp", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep sipp's and the workers' logs here (default: a temporary directory).")  # fmt: skip
@click.option("--cases", is_flag=True, help="Instead: one call per caller-experience case (docs/sip.md).")
@click.option(
    "--free-after", type=float, default=5.0, show_default=True, help="--cases: busy worker frees up."
)
@click.option("--cancel-after", type=float, default=3.0, show_default=True, help="--cases: caller hangs up.")
def sip_bench_command(
    json_path: Path | None,
    workdir: Path | None,
    cases: bool,
    free_after: float,
    cancel_after: float,
    **options: Any,
) -> None:
    """Post-dial delay (INVITE -> 180, INVITE -> 200) and outcomes of sipp calls at a rate, real workers."""
    settings = settings_from_options(SipBenchSettings, **options)
    path = json_path or default_json_path(time.time(), "sip-cases" if cases else "sip")
    if cases:
        run_benchmark(
            lambda log: run_sip_cases(settings.ringing_timeout, free_after, cancel_after, log, workdir),
            path,
            cases_table,
        )
        return
    run_benchmark(lambda log: run_sip_bench(settings, log=log, workdir=workdir), path, sip_table)
