"""Terminal output shared by the commands: a console that stays readable in pipes, and bench results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console, RenderableType

from ..bench.common.report import write_json

PIPE_WIDTH = 140


def stdout_console() -> Console:
    """Rich console on stdout; in pipes and CI logs, wide enough for our tables and without live redraws."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPE_WIDTH)
    return console


def publish_result(result: dict[str, Any], path: Path, table: RenderableType) -> None:
    """Write a benchmark result as JSON, print its table, and say where the JSON went."""
    write_json(result, path)
    stdout_console().print(table)
    click.echo(f"results written to {path}")
