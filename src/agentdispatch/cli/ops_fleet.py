"""`agentdispatch workers`, `agentdispatch status`, `agentdispatch events [--follow]`: the admin API."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from .ops_common import Conn, admin_get, connection_options, fmt_ms, print_json, print_table, run
from .output import stdout_console


def _worker_rows(workers: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [w["worker_id"], w["agent_name"] or "(automatic)", w["node_id"], w["state"],
         f"{w['load']:.2f}", w["active_jobs"], w["pending_offers"]]
        for w in workers
    ]  # fmt: skip


WORKER_COLUMNS = ["worker", "agent", "node", "state", "load", "jobs", "offers"]


@click.command("workers")
@connection_options
def workers_command(conn: Conn) -> None:
    """List registered workers: agent name, node, state, load, jobs."""
    doc = run(admin_get(conn, "/admin/workers"))
    if conn.json:
        print_json(doc["workers"])
        return
    print_table(f"{len(doc['workers'])} workers", WORKER_COLUMNS, _worker_rows(doc["workers"]))


@click.command("status")
@connection_options
def status_command(conn: Conn) -> None:
    """One screen: workers, capacity, waiting jobs, dispatch latency, recent failures with reasons."""
    doc = run(admin_get(conn, "/admin/status"))
    if conn.json:
        print_json({k: v for k, v in doc.items() if k != "latency_samples"})
        return
    cap, lat = doc["capacity"], doc["latency"]
    waiting_total = sum(int(w["count"]) for w in doc["waiting"].values())
    console = stdout_console()
    console.print(
        f"[bold]node[/bold] {doc['node_id']}   [bold]workers[/bold] {cap['workers']} "
        f"({cap['available']} available, mean load {cap['mean_load']:.2f})   "
        f"[bold]running jobs[/bold] {cap['active_jobs']}   [bold]waiting[/bold] {waiting_total}   "
        f"[bold]latency[/bold] p50 {fmt_ms(lat['p50_ms'])} p99 {fmt_ms(lat['p99_ms'])} "
        f"({int(lat['samples'])} jobs)"
    )
    print_table("workers", WORKER_COLUMNS, _worker_rows(doc["workers"]))
    waiting = [
        [name or "(automatic)", w["count"], f"{w['oldest_wait_s']:.1f} s"]
        for name, w in doc["waiting"].items()
    ]
    print_table("waiting for a worker", ["agent", "count", "oldest wait"], waiting)
    failures = [
        [_clock(j["at_ms"]), j["job_id"], j["agent_name"], j["room"], j["reason"], j["error"]]
        for j in doc["recent_failures"]
    ]
    print_table("recent failures", ["time", "job", "agent", "room", "reason", "error"], failures)


@click.command("events")
@connection_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen.")
@click.option("--count", type=int, default=0, help="With --follow: stop after this many events.")
def events_command(conn: Conn, follow: bool, count: int) -> None:
    """Job lifecycle events: recent jobs, or a live stream with --follow (also workers and rooms)."""
    if not follow:
        doc = run(admin_get(conn, "/admin/jobs"))
        for job in reversed(doc["recent_jobs"]):
            _print_event("job", job, conn.json)
        return
    run(_follow(conn, count))


async def _follow(conn: Conn, count: int) -> None:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    seen = 0
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(conn.http_url + "/admin/events", headers=conn.admin_headers()) as resp,
    ):
        if resp.status != 200:
            raise click.ClickException(f"/admin/events: HTTP {resp.status}: {(await resp.text()).strip()}")
        click.echo(f"following events of {conn.http_url} (Ctrl-C to stop)", err=True)
        kind = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind != "snapshot":
                _print_event(kind, json.loads(line.removeprefix("data: ")), conn.json)
                seen += 1
                if count and seen >= count:
                    return


def _print_event(kind: str, e: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(e, sort_keys=True), nl=True)
        return
    now = _clock(int(e.get("at_ms") or time.time() * 1000))
    if kind == "job":
        extra = f" reason={e['reason']}" if e.get("reason") and e["reason"] != "none" else ""
        if e.get("error"):
            extra += f" error={e['error']!r}"
        if e.get("latency_ms") is not None and e["kind"] == "running":
            extra += f" latency={fmt_ms(e['latency_ms'])}"
        click.echo(
            f"{now} job    {e['kind']:<13} {e['job_id']} agent={e['agent_name']!r} room={e['room']} "
            f"worker={e['worker_id'] or '-'} status={e['status']}{extra}"
        )
    elif kind == "worker":
        w = e["worker"]
        click.echo(
            f"{now} worker {e['kind']:<13} {w['worker_id']} agent={w['agent_name']!r} state={w['state']} "
            f"load={w['load']:.2f} jobs={w['active_jobs']}"
        )
    else:
        who = f" participant={e['participant']}" if e.get("participant") else ""
        click.echo(f"{now} room   {e['kind']:<13} {e['room']}{who}")


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "--:--:--"
