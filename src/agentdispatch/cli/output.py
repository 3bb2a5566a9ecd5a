"""Shared by the commands: a console that stays readable in pipes, and the run-and-report of a benchmark."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, RenderableType

from ..bench.common.report import write_json
from ..protocol.errors import ConfigError
from ..protocol.jwt_warnings import ignore_short_hmac_key_warning
from ..testing.serverproc import HarnessError

T = TypeVar("T")
Result = dict[str, Any]
Log = Callable[[str], None]

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


def settings_from_options(make: Callable[..., T], **options: Any) -> T:
    """A benchmark's settings from its command-line options; invalid settings are a usage error."""
    try:
        return make(**options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run_benchmark(
    run: Callable[[Log], Result], path: Path, table: Callable[[Result], RenderableType]
) -> Result:
    """Run with progress on stderr, then write the JSON and print the table; HarnessError ends the command."""
    ignore_short_hmac_key_warning()
    console = Console(stderr=True)
    try:
        result = run(lambda text: console.print(f"[dim]{text}[/dim]"))
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from None
    publish_result(result, path, table(result))
    return result
