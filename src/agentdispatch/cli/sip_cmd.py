"""`agentdispatch sip`: the dispatch server with the SIP gateway in the same process.

Takes every `agentdispatch server` option (the same click parameters) plus the SIP ones; trunks and
dispatch rules come from `--sip-config` and/or the Twirp `livekit.SIP` service on the server's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import click

from ..protocol import ConfigError
from ..server import DispatchServer, ServerConfig
from .logs import setup_logging
from .server_cmd import bind_error_hint, resolve_keys, run_event_loop, server_command

SIP_OPTIONS = [
    click.Option(["--sip-host"], default=None, help="SIP/RTP address [default: the --bind address]."),
    click.Option(
        ["--sip-port"],
        type=click.IntRange(0, 65535),
        default=5060,
        show_default=True,
        help="SIP port, UDP and TCP (0 = any free).",
    ),
    click.Option(["--no-tcp"], is_flag=True, help="SIP over UDP only."),
    click.Option(
        ["--sip-advertise"], default="", help="Address put in SDP/Via/Contact instead of --sip-host (NAT)."
    ),
    click.Option(
        ["--ringback"], is_flag=True, help="183 Session Progress with a ringback tone while ringing."
    ),
    click.Option(["--rtp-ports"], default="20000-30000", show_default=True, help="RTP port range LOW-HIGH."),
    click.Option(
        ["--ringing-timeout"],
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds a call rings while its agent is awaited (a trunk's ringing_timeout wins).",
    ),
    click.Option(
        ["--final-status"],
        type=click.Choice(["503", "486", "480", "603"]),
        default="503",
        show_default=True,
        help="Answer when no agent came in time (a trunk's ringing_timeout_status wins).",
    ),
    click.Option(
        ["--retry-after"],
        type=int,
        default=30,
        show_default=True,
        help="Retry-After seconds sent with 503/486/480.",
    ),
    click.Option(
        ["--max-calls"],
        type=int,
        default=0,
        show_default=True,
        help="Concurrent calls per trunk (0 = unlimited; trunk metadata max_calls wins).",
    ),
    click.Option(
        ["--limit-status"],
        type=click.Choice(["486", "503", "480", "603"]),
        default="486",
        show_default=True,
        help="Answer over a trunk's call limit.",
    ),
    click.Option(
        ["--sip-config"],
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="JSON file of trunks and dispatch rules (docs/sip.md).",
    ),
]
SIP_NAMES = {opt.name for opt in SIP_OPTIONS if opt.name is not None}
NOT_CONFIG = {"dev", "bind", "keys_file", "log_level", "log_format"}


def _server_config(kw: dict[str, Any]) -> ServerConfig:
    dev, bind = kw["dev"], kw["bind"]
    rest = {k: v for k, v in kw.items() if k not in NOT_CONFIG}
    return ServerConfig(
        keys=resolve_keys(dev, kw["keys_file"]),
        host=bind or ("127.0.0.1" if dev else "0.0.0.0"),
        admin_open_on_loopback=dev,
        **rest,
    )


def _gateway_config(kw: dict[str, Any], host: str) -> Any:
    from ..sip import GatewayConfig

    lo, _, hi = str(kw["rtp_ports"]).partition("-")
    try:
        ports = (int(lo), int(hi))
    except ValueError:
        raise click.BadParameter("expected LOW-HIGH, e.g. 20000-30000", param_hint="--rtp-ports") from None
    return GatewayConfig(
        host=kw["sip_host"] or host,
        port=kw["sip_port"],
        tcp=not kw["no_tcp"],
        advertise=kw["sip_advertise"],
        ringback=kw["ringback"],
        rtp_ports=ports,
        ringing_timeout=kw["ringing_timeout"],
        final_status=int(kw["final_status"]),
        retry_after=kw["retry_after"],
        max_calls=kw["max_calls"],
        limit_status=int(kw["limit_status"]),
    )


def sip_main(**kw: Any) -> None:
    """Run the dispatch server with the SIP gateway.

    Inbound calls become rooms, dispatches and SIP participants; see docs/sip.md.
    """
    setup_logging(kw["log_level"], kw["log_format"])
    sip_kw = {k: kw.pop(k) for k in SIP_NAMES}
    try:
        config = _server_config(kw)
        gateway_config = _gateway_config(sip_kw, "127.0.0.1" if config.host == "0.0.0.0" else config.host)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    run_event_loop(_run(config, gateway_config, sip_kw["sip_config"]))


async def _run(config: ServerConfig, gateway_config: Any, sip_config: Path | None) -> None:
    from ..sip import SipConfigError, SipDirectory, SipGateway

    directory = SipDirectory()
    if sip_config is not None:
        try:
            directory.load_file(sip_config)
        except SipConfigError as exc:
            raise click.UsageError(str(exc)) from None
    server = DispatchServer(config)
    gateway = SipGateway(server, gateway_config, directory)
    server.app.router.add_routes(gateway.routes())
    try:
        await server.start()
        await gateway.start()
    except OSError as exc:
        await gateway.aclose()
        await server.aclose()
        raise click.ClickException(bind_error_hint(exc, config)) from None
    click.echo(
        f"agentdispatch server on {server.url}; SIP on {gateway_config.host}:{gateway.port} "
        f"({'UDP+TCP' if gateway_config.tcp else 'UDP'}); {len(directory.trunks)} trunk(s), "
        f"{len(directory.rules)} dispatch rule(s)",
        err=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        click.echo("shutting down: ringing calls get the final code, answered calls a BYE", err=True)
        await gateway.aclose()
        await server.aclose()


sip_command = click.Command(
    "sip",
    callback=sip_main,
    params=[*server_command.params, *SIP_OPTIONS],
    help=sip_main.__doc__,
    epilog=server_command.epilog,
)
