"""The run-and-report of a shipped benchmark, shared by the `bench` commands (option parsing stays theirs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, RenderableType

from ..protocol.errors import ConfigError
from ..protocol.jwt_warnings import ignore_short_hmac_key_warning
from ..testing.serverproc import HarnessError
from .output import publish_result

T = TypeVar("T")
Result = dict[str, Any]
Log = Callable[[str], None]


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
