"""`agentdispatch dispatch create|list|delete` and `agentdispatch room list|create|delete` (Twirp APIs)."""

from __future__ import annotations

from typing import Any

import click

from .ops_common import Conn, connection_options, print_json, print_table, to_dict, twirp_call

JOB_STATUS = {0: "pending", 1: "running", 2: "success", 3: "failed", 4: "cancelled"}


@click.group("dispatch")
def dispatch_group() -> None:
    """Create, list and delete agent dispatches (AgentDispatchService)."""


@dispatch_group.command("create")
@connection_options
@click.option("--room", required=True, help="Room name (created if missing).")
@click.option("--agent-name", required=True, help="Agent to dispatch.")
@click.option("--metadata", default="", help="Job metadata passed to the agent.")
@click.option(
    "--restart-policy",
    type=click.Choice(["on-failure", "never"]),
    default="on-failure",
    show_default=True,
    help="Offer a failed or lost job again, or end it.",
)
def dispatch_create(conn: Conn, room: str, agent_name: str, metadata: str, restart_policy: str) -> None:
    """Dispatch an agent to a room."""
    from livekit import api

    policy = (
        api.JobRestartPolicy.JRP_NEVER if restart_policy == "never" else api.JobRestartPolicy.JRP_ON_FAILURE
    )
    req = api.CreateAgentDispatchRequest(
        room=room, agent_name=agent_name, metadata=metadata, restart_policy=policy
    )
    d = twirp_call(conn, lambda lk: lk.agent_dispatch.create_dispatch(req))
    if conn.json:
        print_json(to_dict(d))
        return
    click.echo(f"dispatch {d.id} created: agent {d.agent_name!r} in room {d.room!r}")


@dispatch_group.command("list")
@connection_options
@click.argument("room")
def dispatch_list(conn: Conn, room: str) -> None:
    """List a room's dispatches with their jobs."""
    dispatches = twirp_call(conn, lambda lk: lk.agent_dispatch.list_dispatch(room))
    if conn.json:
        print_json([to_dict(d) for d in dispatches])
        return
    rows: list[list[Any]] = []
    for d in dispatches:
        jobs = list(d.state.jobs) or [None]
        for job in jobs:
            if job is None:
                rows.append([d.id, d.agent_name, "", "", "", ""])
                continue
            status = JOB_STATUS.get(job.state.status, str(job.state.status))
            rows.append([d.id, d.agent_name, job.id, status, job.state.worker_id, job.state.error])
    print_table(f"dispatches in {room}", ["dispatch", "agent", "job", "status", "worker", "error"], rows)


@dispatch_group.command("delete")
@connection_options
@click.argument("room")
@click.argument("dispatch_id")
def dispatch_delete(conn: Conn, room: str, dispatch_id: str) -> None:
    """Delete a dispatch (its running job is terminated)."""
    d = twirp_call(conn, lambda lk: lk.agent_dispatch.delete_dispatch(dispatch_id, room))
    if conn.json:
        print_json(to_dict(d))
        return
    click.echo(f"dispatch {d.id} deleted")


@click.group("room")
def room_group() -> None:
    """Create, list and delete rooms (RoomService)."""


@room_group.command("list")
@connection_options
@click.argument("names", nargs=-1)
def room_list(conn: Conn, names: tuple[str, ...]) -> None:
    """List rooms (all, or the NAMES given)."""
    from livekit import api

    resp = twirp_call(conn, lambda lk: lk.room.list_rooms(api.ListRoomsRequest(names=list(names))))
    if conn.json:
        print_json([to_dict(r) for r in resp.rooms])
        return
    rows = [[r.name, r.sid, r.num_participants, r.creation_time, r.metadata] for r in resp.rooms]
    print_table("rooms", ["name", "sid", "participants", "created", "metadata"], rows)


@room_group.command("create")
@connection_options
@click.argument("name")
@click.option("--empty-timeout", type=int, default=0, help="Seconds an empty room stays open.")
@click.option(
    "--agent", "agents", multiple=True, help="Dispatch this agent when the room opens (repeatable)."
)
@click.option("--metadata", default="")
def room_create(conn: Conn, name: str, empty_timeout: int, agents: tuple[str, ...], metadata: str) -> None:
    """Create a room, optionally with agents dispatched to it."""
    from livekit import api

    req = api.CreateRoomRequest(
        name=name,
        empty_timeout=empty_timeout,
        metadata=metadata,
        agents=[api.RoomAgentDispatch(agent_name=a) for a in agents],
    )
    r = twirp_call(conn, lambda lk: lk.room.create_room(req))
    if conn.json:
        print_json(to_dict(r))
        return
    click.echo(f"room {r.name} ({r.sid}) created")


@room_group.command("delete")
@connection_options
@click.argument("name")
def room_delete(conn: Conn, name: str) -> None:
    """Delete a room: its participants are removed and its jobs terminated."""
    from livekit import api

    twirp_call(conn, lambda lk: lk.room.delete_room(api.DeleteRoomRequest(room=name)))
    if conn.json:
        print_json({"deleted": name})
        return
    click.echo(f"room {name} deleted")


def _add_join() -> None:
    from .ops_join import join_command  # the chat client: loaded with `room`, only its own module

    room_group.add_command(join_command)


_add_join()
