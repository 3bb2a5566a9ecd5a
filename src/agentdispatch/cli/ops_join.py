"""`agentdispatch room join ROOM`: be a user in a room from the terminal (a tiny presence chat client).

Joining creates the room if it does not exist (with `--agent NAME`: dispatching that agent, as a token's
roomConfig does). Lines typed are sent as data messages; what arrives is printed one line per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from .ops_common import Conn, connection_options, run


def join_token(conn: Conn, room: str, identity: str, agents: tuple[str, ...]) -> str:
    from livekit import api

    conn.require_keys()
    token = (
        api.AccessToken(conn.api_key, conn.api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    if agents:
        config = api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=a) for a in agents])
        token = token.with_room_config(config)
    return token.to_jwt()


def describe(event: dict[str, Any]) -> str:
    """One line for a presence event."""
    kind = event.get("type", "?")
    if kind == "joined":
        others = ", ".join(p.get("identity", "?") for p in event.get("participants", [])) or "nobody yet"
        return f"* joined {event.get('room', {}).get('name', '?')} (also here: {others})"
    if kind in ("participant_joined", "participant_left", "participant_updated"):
        who = event.get("participant", {})
        agent = " (agent)" if who.get("kind") == "AGENT" else ""
        return f"* {who.get('identity', '?')}{agent} {kind.removeprefix('participant_')}"
    if kind == "data":
        topic = f" [{event['topic']}]" if event.get("topic") else ""
        return f"<{event.get('from') or 'server'}>{topic} {event.get('payload', '')}"
    if kind in ("room_closed", "removed"):
        return f"* {kind.replace('_', ' ')}: {event.get('reason', '')}"
    if kind == "error":
        return f"! {event.get('code')}: {event.get('msg')}"
    return f"* {kind}: {json.dumps(event)}"


async def chat(conn: Conn, room: str, identity: str, agents: tuple[str, ...], topic: str, send: str) -> int:
    import aiohttp

    from ..protocol.urls import websocket_base

    token = join_token(conn, room, identity, agents)
    url = websocket_base(conn.url) + "/presence"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        reader = asyncio.get_running_loop().create_task(_print_events(ws, conn.json))
        try:
            if send:
                await ws.send_str(json.dumps({"type": "data", "payload": send, "topic": topic}))
                await asyncio.sleep(0.2)
                return 0
            await _send_stdin(ws, topic)
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"type": "leave"}))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return 0


async def _print_events(ws: Any, as_json: bool) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(msg.data)
        click.echo(json.dumps(event) if as_json else describe(event))
    click.echo("* disconnected", err=True)


async def _send_stdin(ws: Any, topic: str) -> None:
    loop = asyncio.get_running_loop()
    while not ws.closed:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # end of input: leave
            return
        text = line.rstrip("\n")
        if text:
            await ws.send_str(json.dumps({"type": "data", "payload": text, "topic": topic}))


@click.command("join")
@click.argument("room")
@click.option("--identity", default="user", show_default=True, help="Your participant identity.")
@click.option(
    "--agent", "agents", multiple=True, help="Dispatch this agent when the room is created (repeatable)."
)
@click.option("--topic", default="chat", show_default=True, help="Topic of the data messages you send.")
@click.option("--send", default="", help="Send this one message, then leave (no interactive input).")
@connection_options
def join_command(
    conn: Conn, room: str, identity: str, agents: tuple[str, ...], topic: str, send: str
) -> None:
    """Join ROOM as a user: print what happens in it, send each line you type as a data message."""
    run(chat(conn, room, identity, agents, topic, send))
