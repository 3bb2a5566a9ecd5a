"""Subcommands that load on use: `agentdispatch --help` imports no server, worker or benchmark code.

A `LazyGroup` knows each subcommand by name, by where it lives (`module:attribute`) and by its one-line
help. `--help` prints the table's help without importing anything; running a subcommand (or asking for its
own `--help`) imports just that module. `tests/cli/test_lazy.py` checks every table line against the real
command, so the help printed here cannot drift from the command's docstring.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class LazyCommand:
    #: "package.module:attribute" of the click command
    target: str
    #: one line for the group's --help (the command's own short help)
    help: str

    def __post_init__(self) -> None:
        module, _, attribute = self.target.partition(":")
        if not module or not attribute:
            raise ValueError(f"LazyCommand target must be 'module:attribute', got {self.target!r}")

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when one of them is invoked."""

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        command = entry.load()
        self.add_command(command, cmd_name)
        del self.lazy[cmd_name]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            entry = self.lazy.get(name)
            if entry is not None:
                rows.append((name, entry.help))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                # whole first sentence, wrapped like the lazy lines (click would cut it at ~45 chars)
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def loaded_commands(group: click.Group, names: Sequence[str]) -> dict[str, click.Command]:
    """Import the named subcommands of `group` (for tests and tools); unknown names raise KeyError."""
    ctx = click.Context(group)
    out: dict[str, click.Command] = {}
    for name in names:
        command = group.get_command(ctx, name)
        if command is None:
            raise KeyError(name)
        out[name] = command
    return out
