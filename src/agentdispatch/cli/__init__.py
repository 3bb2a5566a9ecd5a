"""Command line. `cli.run_app(WorkerOptions(...))` runs an agent file with `dev` / `start` sub-commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..worker.options import WorkerOptions


def run_app(options: WorkerOptions, argv: Sequence[str] | None = None) -> None:
    """``python agent.py dev`` / ``python agent.py start``: see docs/worker.md."""
    from .worker_cmd import run_app as _run_app

    _run_app(options, argv)


__all__ = ["run_app"]
