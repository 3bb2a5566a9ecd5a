"""Worker command line: `cli.run_app(WorkerOptions(...))` in an agent file, and `agentdispatch worker`.

    python agent.py dev                      # development defaults (see docs/worker.md)
    python agent.py start --url wss://... --api-key K --api-secret S
    agentdispatch worker dev path/to/agent.py   # the same options as `python agent.py dev`

Argument parsing only: flags override the options, then `worker.run()` does the work.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..protocol import ConfigError
from ..worker.options import LOG_LEVELS, WorkerOptions
from ..worker.refs import load_module_from_path, ref_from_callable
from .logs import setup_logging

_FLAG_TO_OPTION = {
    "url": "ws_url",
    "api_key": "api_key",
    "api_secret": "api_secret",
    "log_level": "log_level",
    "host": "host",
    "port": "port",
    "drain_timeout": "drain_timeout",
    "max_jobs": "max_jobs",
    "agent_name": "agent_name",
}


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--url", default=None, help="Server URL [env LIVEKIT_URL; dev: ws://localhost:7880]."),
        click.option("--api-key", default=None, help="API key [env LIVEKIT_API_KEY; dev: devkey]."),
        click.option("--api-secret", default=None, help="API secret [env LIVEKIT_API_SECRET; dev: secret]."),
        click.option("--agent-name", default=None, help="Agent name [env LIVEKIT_AGENT_NAME]."),
        click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True),
        click.option("--host", default=None, help="HTTP health server address."),
        click.option("--port", type=click.IntRange(0, 65535), default=None, help="HTTP health server port."),
        click.option(
            "--drain-timeout", type=float, default=None, help="Seconds to let jobs finish on SIGTERM."
        ),
        click.option(
            "--max-jobs", type=click.IntRange(1), default=None, help="Exact cap on concurrent jobs."
        ),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _apply_flags(options: WorkerOptions, flags: dict[str, Any]) -> WorkerOptions:
    changes = {_FLAG_TO_OPTION[k]: v for k, v in flags.items() if k in _FLAG_TO_OPTION and v is not None}
    return dataclasses.replace(options, **changes)


def _launch(options: WorkerOptions, production: bool, flags: dict[str, Any]) -> None:
    from ..worker.serve import run

    try:
        resolved = _apply_flags(options, flags).resolve(production=production)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(resolved.log_level, flags.get("log_format", "text"))
    sys.exit(run(resolved))


def _app_group(get_options: Callable[[], WorkerOptions]) -> click.Group:
    @click.group()
    def app() -> None:
        """Run this agent as a worker."""

    @app.command("dev")
    @_common
    def dev(**flags: Any) -> None:
        """Development mode: local server defaults, debug logs, Ctrl-C stops at once."""
        _launch(get_options(), False, flags)

    @app.command("start")
    @_common
    def start(**flags: Any) -> None:
        """Production mode: SIGTERM drains (running jobs finish, no new ones)."""
        _launch(get_options(), True, flags)

    return app


class _Captured(BaseException):
    """Raised by `run_app` while `agentdispatch worker` runs an agent file as `__main__`: carries the
    options the file gives (a BaseException, so a user's `except Exception` does not swallow it)."""

    def __init__(self, options: WorkerOptions) -> None:
        super().__init__("run_app options captured")
        self.options = options


_capturing = False


def run_app(options: WorkerOptions, argv: Sequence[str] | None = None) -> None:
    """The `dev` / `start` command line for an agent file: ``cli.run_app(WorkerOptions(...))``."""
    if not isinstance(options, WorkerOptions):
        raise ConfigError(f"run_app expects WorkerOptions, got {type(options).__name__}")
    if _capturing:
        raise _Captured(_by_reference(options))
    _app_group(lambda: options).main(args=list(argv) if argv is not None else None)


def _by_reference(options: WorkerOptions) -> WorkerOptions:
    """Entrypoint and prewarm as ``"file.py:function"`` references: the file runs as `__main__` only while
    its options are captured, so functions are found again by path (job processes import the file)."""
    changes: dict[str, Any] = {}
    for name in ("entrypoint_fnc", "prewarm_fnc"):
        fn = getattr(options, name)
        if callable(fn):
            ref = ref_from_callable(fn, name)
            changes[name] = f"{ref.path or ref.module}:{ref.qualname}"
    return dataclasses.replace(options, **changes)


def _options_of_main(path: Path) -> WorkerOptions | None:
    """Run the file as `python path` would, up to its `cli.run_app(...)`; the options it passes."""
    global _capturing
    _capturing = True
    try:
        runpy.run_path(str(path), run_name="__main__")
    except _Captured as got:
        return got.options
    except (OSError, SyntaxError, ImportError) as exc:
        raise click.UsageError(f"cannot import {path}: {exc}") from None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        _capturing = False
    return None


def options_from_file(path: Path) -> WorkerOptions:
    """The options the file gives: those it passes to `cli.run_app(...)` under `if __name__ ==
    "__main__":` (the docs' shape), else its `worker_options` (WorkerOptions), else one built from its
    `entrypoint` (and `prewarm`)."""
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python agent.py` would: sibling modules import
    try:
        source = path.read_text()
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc}") from None
    if "run_app" in source:
        captured = _options_of_main(path)
        if captured is not None:
            return captured
    try:
        module = load_module_from_path(str(path))
    except (OSError, SyntaxError, ImportError) as exc:
        raise click.UsageError(f"cannot import {path}: {exc}") from None
    found = getattr(module, "worker_options", None)
    if isinstance(found, WorkerOptions):
        return found
    entrypoint = getattr(module, "entrypoint", None)
    if not callable(entrypoint):
        raise click.UsageError(
            f"{path} defines neither `worker_options = WorkerOptions(...)` nor `entrypoint`, and does not "
            f'call `cli.run_app(WorkerOptions(...))` under `if __name__ == "__main__":`'
        )
    try:
        return WorkerOptions(entrypoint_fnc=entrypoint, prewarm_fnc=getattr(module, "prewarm", None))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group("worker")
def worker_command() -> None:
    """Run an agent file as a worker (dev or start)."""


@worker_command.command("dev")
@click.argument("agent_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_common
def worker_dev(agent_file: Path, **flags: Any) -> None:
    """Development mode for AGENT_FILE."""
    _launch(options_from_file(agent_file), False, flags)


@worker_command.command("start")
@click.argument("agent_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_common
def worker_start(agent_file: Path, **flags: Any) -> None:
    """Production mode for AGENT_FILE."""
    _launch(options_from_file(agent_file), True, flags)
