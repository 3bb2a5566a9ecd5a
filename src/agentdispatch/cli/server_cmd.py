"""`agentdispatch server`: argument parsing only; builds ServerConfig and runs the server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from ..protocol import ConfigError
from ..server import DEV_KEYS, DispatchServer, ServerConfig
from ..server.webhooks import WEBHOOK_EVENT_NAMES
from .logs import setup_logging

log = logging.getLogger("agentdispatch.server")

#: objects allocated (net) before the cyclic GC's youngest generation is collected; see _run
GC_YOUNG = 5000

ENV_HELP = """Environment: LIVEKIT_API_KEY and LIVEKIT_API_SECRET (the API key pair, unless --keys-file or
--dev), REDIS_URL (same as --redis), AGENTDISPATCH_ADMIN_TOKEN (same as --admin-token)."""


def load_keys_file(path: Path) -> dict[str, str]:
    """A keys file holds `key: secret` lines (LiveKit's format); '#' starts a comment."""
    keys: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, secret = line.partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise click.BadParameter(f"{path}:{lineno}: expected 'key: secret'", param_hint="--keys-file")
        keys[key.strip()] = secret.strip()
    if not keys:
        raise click.BadParameter(f"{path} holds no keys", param_hint="--keys-file")
    return keys


def resolve_keys(dev: bool, keys_file: Path | None) -> dict[str, str]:
    if keys_file is not None:
        return load_keys_file(keys_file)
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    if key and secret:
        return {key: secret}
    if dev:
        return dict(DEV_KEYS)
    raise click.UsageError(
        "no API keys: set LIVEKIT_API_KEY and LIVEKIT_API_SECRET, pass --keys-file, or use --dev"
    )


@click.command("server", epilog=ENV_HELP)
@click.option("--dev", is_flag=True, help="Development mode: 127.0.0.1:7880, key devkey / secret secret.")
@click.option("--bind", default=None, help="Address to listen on [dev: 127.0.0.1, else 0.0.0.0].")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=7880, show_default=True, help="TCP port (0 = any free)."
)
@click.option(
    "--keys-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File of 'key: secret' lines (overrides LIVEKIT_API_KEY/SECRET).",
)
@click.option("--offer-timeout", type=float, default=5.0, show_default=True, help="Seconds per offer.")
@click.option(
    "--dispatch-deadline", type=float, default=30.0, show_default=True, help="Seconds a job may wait."
)
@click.option("--queue-limit", type=int, default=10_000, show_default=True, help="Jobs allowed to wait.")
@click.option(
    "--queue-bytes-limit",
    type=int,
    default=256 * 1024 * 1024,
    show_default=True,
    help="Bytes the waiting jobs may hold (records incl. metadata).",
)
@click.option(
    "--reconnect-grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a lost worker's jobs wait for it to reconnect and migrate them.",
)
@click.option(
    "--max-restarts", type=int, default=3, show_default=True, help="Restarts allowed per job before FAILED."
)
@click.option(
    "--status-stale-after",
    type=float,
    default=15.0,
    show_default=True,
    help="Skip a worker whose status reports stopped this many seconds ago (0 = never).",
)
@click.option(
    "--worker-send-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Disconnect a worker whose socket takes no frame for this many seconds.",
)
@click.option(
    "--worker-outbox-bytes",
    type=int,
    default=8 * 1024 * 1024,
    show_default=True,
    help="No new offers to a worker with more bytes queued to it; 4x: disconnect it.",
)
@click.option(
    "--header-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Close connections that send no complete request headers for this long.",
)
@click.option(
    "--body-timeout", type=float, default=30.0, show_default=True, help="Seconds to receive a request body."
)
@click.option(
    "--max-connections",
    type=int,
    default=0,
    show_default=True,
    help="Open connections served at once; more get 503 (0 = open-file limit - 64).",
)
@click.option(
    "--adopt-window",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds after start during which jobs reconnecting workers report are adopted, not terminated.",
)
@click.option(
    "--shutdown-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds shutdown may take, whatever is connected.",
)
@click.option("--public-url", default="", help="URL put in job assignments (default: the worker's own).")
@click.option(
    "--redis",
    "redis_url",
    envvar="REDIS_URL",
    default="",
    help="redis:// URL of the shared store: cluster mode (env REDIS_URL) [default: in memory].",
)
@click.option("--webhook-url", "webhook_urls", multiple=True, help="Send LiveKit webhooks here (repeatable).")
@click.option("--webhook-key", default="", help="API key that signs webhooks [default: the first key].")
@click.option(
    "--webhook-event",
    "webhook_events",
    multiple=True,
    type=click.Choice(WEBHOOK_EVENT_NAMES),
    help="Send only this webhook event (repeatable) [default: all].",
)
@click.option(
    "--admin-token", envvar="AGENTDISPATCH_ADMIN_TOKEN", default="", help="Shared secret for the admin API."
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least severe log level shown (DEBUG adds offers, queueing, running).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one line per event with key=value ids; json: one JSON object per line.",
)
def server_command(
    dev: bool,
    bind: str | None,
    port: int,
    keys_file: Path | None,
    offer_timeout: float,
    dispatch_deadline: float,
    queue_limit: int,
    queue_bytes_limit: int,
    reconnect_grace: float,
    max_restarts: int,
    status_stale_after: float,
    worker_send_timeout: float,
    worker_outbox_bytes: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    adopt_window: float,
    shutdown_timeout: float,
    public_url: str,
    redis_url: str,
    webhook_urls: tuple[str, ...],
    webhook_key: str,
    webhook_events: tuple[str, ...],
    admin_token: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run the dispatch server."""
    setup_logging(log_level, log_format)
    try:
        config = ServerConfig(
            keys=resolve_keys(dev, keys_file),
            host=bind or ("127.0.0.1" if dev else "0.0.0.0"),
            port=port,
            offer_timeout=offer_timeout,
            dispatch_deadline=dispatch_deadline,
            queue_limit=queue_limit,
            queue_bytes_limit=queue_bytes_limit,
            reconnect_grace=reconnect_grace,
            max_restarts=max_restarts,
            status_stale_after=status_stale_after,
            worker_send_timeout=worker_send_timeout,
            worker_outbox_bytes=worker_outbox_bytes,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
            adopt_window=adopt_window,
            shutdown_timeout=shutdown_timeout,
            public_url=public_url,
            redis_url=redis_url,
            webhook_urls=webhook_urls,
            webhook_key=webhook_key,
            webhook_events=webhook_events,
            admin_token=admin_token,
            admin_open_on_loopback=dev,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    run_event_loop(_run(config, dev, log_format == "json"))


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (about a third less loop overhead), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def wait_for_stop_signal() -> None:
    """Return at the first SIGINT or SIGTERM (the caller then shuts down)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def bind_error_hint(exc: OSError, config: ServerConfig) -> str:
    """One line for a socket that cannot be bound, naming the flag that changes it."""
    where = f"{config.host}:{config.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {config.port} is already in use on {config.host}: stop the other server or use --port N"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on {where}: pick a port above 1023 with --port N"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
        return f"cannot listen on {where}: {config.host} is not an address of this machine (see --bind)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


async def _run(config: ServerConfig, dev: bool = False, json_logs: bool = False) -> None:
    server = DispatchServer(config)
    try:
        await server.start()
    except OSError as exc:
        await server.aclose()
        raise click.ClickException(bind_error_hint(exc, config)) from None
    # what start-up built (modules, the app, options) lives as long as the process: collections no longer
    # walk it, which took a full collection from ~10 ms to what the fleet and jobs alone cost (P1's tail)
    gc.collect()
    gc.freeze()
    # the cyclic collector's young generation holds up to GC_YOUNG objects (CPython's default: 700):
    # with a fleet connected, every few hundred allocations a collection ran and, every tenth of the
    # tenth, walked every worker's objects; registration of 10,000 workers spent half its CPU there
    gc.set_threshold(GC_YOUNG, 10, 10)
    key, secret = next(iter(config.keys.items()))
    if json_logs:  # every line JSON: the banner is a log record too
        extra = {"url": server.url, "node_id": server.node_id}
        if dev:
            extra.update(livekit_url=server.ws_url, api_key=key, api_secret=secret)
        log.info("agentdispatch server ready", extra=extra)
    else:
        click.echo(f"agentdispatch server listening on {server.url} (node {server.node_id})", err=True)
    if dev and not json_logs:
        click.echo(
            f"  workers: LIVEKIT_URL={server.ws_url} LIVEKIT_API_KEY={key} LIVEKIT_API_SECRET={secret}\n"
            f"  try it:  agentdispatch worker dev examples/echo_agent.py (dashboard: {server.url}/dashboard)",
            err=True,
        )
    try:
        await wait_for_stop_signal()
    finally:
        if json_logs:
            log.info("shutting down")
        else:
            click.echo("shutting down", err=True)
        await server.aclose()
