"""What the operator commands share: lk-style connection options, clients, and output (rich or --json)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from ..protocol.jwt_warnings import ignore_short_hmac_key_warning
from ..protocol.urls import http_base
from .output import stdout_console

F = TypeVar("F", bound=Callable[..., Any])

# PyJWT warns on secrets under 32 bytes (LiveKit's dev secret is "secret"); the server decides what it accepts
ignore_short_hmac_key_warning()
DEFAULT_URL = "http://127.0.0.1:7880"


@dataclass(frozen=True)
class Conn:
    """Where the server is and how to authenticate (flags, else LIVEKIT_* / AGENTDISPATCH_* env)."""

    url: str
    api_key: str
    api_secret: str
    admin_token: str
    json: bool

    @property
    def http_url(self) -> str:
        return http_base(self.url)

    def require_keys(self) -> None:
        if not self.api_key or not self.api_secret:
            raise click.UsageError("no API key: pass --api-key/--api-secret or set LIVEKIT_API_KEY/SECRET")

    def admin_headers(self) -> dict[str, str]:
        """The admin token if given, else a short roomAdmin JWT signed with the API key."""
        if self.admin_token:
            return {"Authorization": f"Bearer {self.admin_token}"}
        self.require_keys()
        from livekit import api

        grants = api.VideoGrants(room_admin=True, room_list=True)
        token = api.AccessToken(self.api_key, self.api_secret).with_grants(grants).to_jwt()
        return {"Authorization": f"Bearer {token}"}


def connection_options(fn: F) -> F:
    """Add --url --api-key --api-secret --admin-token --json; the command receives `conn: Conn`."""

    @click.option("--url", envvar="LIVEKIT_URL", default=DEFAULT_URL, show_default=True, help="Server URL.")
    @click.option("--api-key", envvar="LIVEKIT_API_KEY", default="", help="API key [env LIVEKIT_API_KEY].")
    @click.option("--api-secret", envvar="LIVEKIT_API_SECRET", default="", help="[env LIVEKIT_API_SECRET]")
    @click.option("--admin-token", envvar="AGENTDISPATCH_ADMIN_TOKEN", default="", help="Admin API token.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    @functools.wraps(fn)
    def wrapper(
        url: str, api_key: str, api_secret: str, admin_token: str, as_json: bool, **kwargs: Any
    ) -> Any:
        conn = Conn(url, api_key, api_secret, admin_token, as_json)
        return fn(conn=conn, **kwargs)

    return wrapper  # type: ignore[return-value]


def run(coro: Awaitable[Any]) -> Any:
    """Run one command's coroutine; network failures become a one-line error, not a traceback."""
    import aiohttp

    async def main() -> Any:
        return await coro

    try:
        return asyncio.run(main())
    except aiohttp.ClientConnectionError as exc:
        raise click.ClickException(f"cannot reach the server: {exc}") from None


def twirp_call(conn: Conn, call: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `call(lkapi)` with a LiveKitAPI client; Twirp errors become a one-line error."""
    conn.require_keys()

    async def go() -> Any:
        from livekit import api

        lk = api.LiveKitAPI(conn.http_url, conn.api_key, conn.api_secret)
        try:
            return await call(lk)
        except api.TwirpError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        finally:
            await lk.aclose()

    return run(go())


async def admin_get(conn: Conn, path: str) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(conn.http_url + path, headers=conn.admin_headers()) as resp,
    ):
        body = await resp.text()
        if resp.status != 200:
            raise click.ClickException(f"{path}: HTTP {resp.status}: {body.strip()}")
        return json.loads(body)


def to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    stdout_console().print(table)


NUMERIC = {"load", "jobs", "offers", "count", "oldest wait", "latency", "waiting", "running", "workers"}


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"
