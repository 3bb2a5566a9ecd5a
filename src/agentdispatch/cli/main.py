"""The `agentdispatch` command."""

from __future__ import annotations

import click

from .. import __version__
from .bench_cmd import bench_group
from .chaos_cmd import chaos_command
from .demo_cmd import demo_command
from .server_cmd import server_command
from .worker_cmd import worker_command


@click.group()
@click.version_option(__version__, prog_name="agentdispatch")
def cli() -> None:
    """agentdispatch: LiveKit-compatible agent dispatch server and worker runtime."""


cli.add_command(server_command)
cli.add_command(worker_command)
cli.add_command(bench_group)
bench_group.add_command(chaos_command)
cli.add_command(demo_command)


def main() -> None:
    cli()
