"""`agentdispatch token create`: a join token for a room and identity, like `lk token create`."""

from __future__ import annotations

import datetime

import click

from .ops_common import Conn, connection_options, print_json


def _duration(text: str) -> datetime.timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return datetime.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return datetime.timedelta(seconds=float(text))
    except (ValueError, IndexError):
        raise click.BadParameter(f"expected a duration like 30m, 1h, 3600; got {text!r}") from None


@click.group("token")
def token_group() -> None:
    """Mint access tokens, like `lk token create`."""


@token_group.command("create")
@connection_options
@click.option("--room", default="", help="Room the token grants.")
@click.option("--identity", "-i", default="", help="Participant identity.")
@click.option("--name", default="", help="Participant display name.")
@click.option(
    "--join", is_flag=True, help="Grant roomJoin (default when --room is given and no other grant)."
)
@click.option("--admin", is_flag=True, help="Grant roomAdmin for --room (dispatch and admin API).")
@click.option("--create", is_flag=True, help="Grant roomCreate.")
@click.option("--list", "list_", is_flag=True, help="Grant roomList.")
@click.option("--agent", "agents", multiple=True, help="Dispatch this agent when the token opens the room.")
@click.option("--metadata", default="", help="Participant metadata.")
@click.option("--valid-for", default="1h", show_default=True, help="Lifetime: 30m, 1h, 3600 ...")
def token_create(
    conn: Conn,
    room: str,
    identity: str,
    name: str,
    join: bool,
    admin: bool,
    create: bool,
    list_: bool,
    agents: tuple[str, ...],
    metadata: str,
    valid_for: str,
) -> None:
    """Mint a token signed with the API key: prints it (or JSON with --json)."""
    from livekit import api

    conn.require_keys()
    if room and not (join or admin or create or list_):
        join = True
    if join and not identity:
        raise click.UsageError("a join token needs --identity")
    grants = api.VideoGrants(room=room, room_join=join, room_admin=admin, room_create=create, room_list=list_)
    tok = api.AccessToken(conn.api_key, conn.api_secret).with_grants(grants).with_ttl(_duration(valid_for))
    if identity:
        tok = tok.with_identity(identity)
    if name:
        tok = tok.with_name(name)
    if metadata:
        tok = tok.with_metadata(metadata)
    if agents:
        config = api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=a) for a in agents])
        tok = tok.with_room_config(config)
    jwt = tok.to_jwt()
    if conn.json:
        print_json({"token": jwt, "url": conn.url, "room": room, "identity": identity})
        return
    click.echo(jwt)
