"""The chaos benchmark's result: the JSON document and the rich table printed from it."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import psutil
from rich.table import Table

from ..common.stats import environment
from .analysis import (
    DispatchOutcome,
    account,
    double_runs,
    integrity,
    intervals,
    resumes,
    start_latency,
)
from .model import FinishedRun
from .record import attempt_file_name

METHOD = {
    "server": "agentdispatch server --dev in its own process (testing.serverproc), INFO log in run_dir;"
    " --nodes N: N such nodes with --redis on one real redis-server, behind a real haproxy"
    " (deploy/haproxy/haproxy.cfg, one server line per node); workers connect through haproxy,"
    " API calls go round-robin to the live nodes",
    "node_kill": "--kill-node: SIGKILL the live node holding the most jobs (by the cluster directory in"
    " Redis and each worker's GET /worker); reconnect = kill -> the worker's GET /worker shows a new"
    " registered id; moved = kill -> ListDispatch shows the job on another worker id (polled every 50 ms)",
    "workers": "agentdispatch worker start bench/chaos/agents/chaos_agent.py: production, 2 idle processes,"
    " load 0, --max-jobs",
    "dispatches": "livekit-api CreateDispatch, one room each, JRP_ON_FAILURE, at most in_flight unfinished",
    "kills": "SIGKILL at points spread over the run (by dispatches created); each killed worker is replaced",
    "attempt_records": "each job process writes attempt-<job>-<pid>.json (start, end) atomically",
    "double_run": "two attempts of one job whose [start, end] overlap; a killed attempt ends when its "
    "process was seen gone (polled every 2 ms after the SIGKILL)",
    "resume": "SIGKILL (of the job process or its worker) -> start of the job's next attempt",
    "lost": "not ended within end_timeout after the last CreateDispatch, missing, FAILED with empty error",
}


def _outcomes(run: FinishedRun) -> list[DispatchOutcome]:
    return [
        t.outcome or DispatchOutcome(t.index, t.room, t.dispatch_id, create_error=t.create_error)
        for t in run.tracks
    ]


def _timing(run: FinishedRun) -> dict[str, float | None]:
    tl = run.timeline

    def span(a: str, b: str) -> float | None:
        return round(tl[b] - tl[a], 2) if a in tl and b in tl else None

    return {
        "dispatch_phase_s": span("dispatch_start", "last_create"),
        "tail_s": span("last_create", "all_ended"),
        "total_s": span("dispatch_start", "stopped"),
    }


def _machine(run: FinishedRun) -> dict[str, Any]:
    """How busy the whole machine was while dispatching (others' processes included: noise)."""
    before, after = run.cpu_before, run.cpu_after
    wall = run.timeline.get("all_ended", 0.0) - run.timeline.get("dispatch_start", 0.0)
    busy = None
    if before is not None and after is not None and wall > 0:
        idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
        total = sum(after) - sum(before)
        busy = round((total - idle) / wall, 2)
    return {"cores_busy": busy, "load_average": [round(x, 2) for x in psutil.getloadavg()]}


def _finished(run: FinishedRun, job_id: str, pid: int) -> bool:
    attempt = run.index.attempts.get(attempt_file_name(job_id, pid))
    return attempt is not None and attempt.end is not None


def _kills(run: FinishedRun) -> dict[str, Any]:
    s = run.s
    return {
        "worker": {
            "planned": s.planned_worker_kills
            + sum(1 for k in run.kills.worker if k.get("by") == "node-kill"),
            "done": len(run.kills.worker),
            "details": run.kills.worker,
        },
        "job": {
            "planned": s.planned_job_kills,
            "done": len(run.kills.job),
            #: the process had already recorded its end: the kill interrupted nothing but the exit
            "after_job_finished": sum(1 for k in run.kills.job if _finished(run, k["job_id"], k["pid"])),
            "details": run.kills.job,
        },
        "skipped": run.kills.skipped,
    }


def _server(run: FinishedRun) -> dict[str, Any]:
    servers = run.servers
    first = servers.nodes[0] if servers.nodes else None
    codes = servers.exit_codes
    section: dict[str, Any] = {
        "command": first.command if first else [],
        "log": str(first.log_path) if first else "",
        "exit_code": codes[0] if codes else None,
    }
    if servers.clustered:
        section["cluster"] = servers.describe()
    return section


def build_result(run: FinishedRun, survivors: list[str]) -> dict[str, Any]:
    s, fleet = run.s, run.fleet
    outcomes = _outcomes(run)
    deaths = fleet.deaths if fleet else []
    spans = intervals(run.index.attempts.values(), deaths, run.index.noticed_dead, survivors, time.time())
    dispatches, bucket_of_job = account(outcomes)
    doubles = double_runs(spans)
    lost = dispatches["counts"]["lost"] + (s.dispatches - len(outcomes))
    double_run = len({d["job_id"] for d in doubles})
    return {
        "benchmark": "chaos",
        **environment(),
        "parameters": asdict(s)
        | {
            "seed": run.seed,
            "planned_worker_kills": s.planned_worker_kills,
            "planned_job_kills": s.planned_job_kills,
            "in_flight": s.window,
        },
        "method": METHOD,
        "run_dir": str(run.run_dir),
        "server": _server(run),
        "node_kill": run.node_kill.report(list(run.index.attempts.values())) if run.node_kill else None,
        "timing": _timing(run),
        "machine": _machine(run),
        "lost": lost,
        "double_run": double_run,
        "ok": lost == 0 and double_run == 0,
        "dispatches": dispatches | {"not_created": s.dispatches - len(outcomes)},
        "double_runs": doubles[:50],
        "resume": resumes(spans, bucket_of_job),
        "first_start_ms": start_latency(
            spans, {t.dispatch_id: t.created_at for t in run.tracks if t.dispatch_id}
        ),
        "kills": _kills(run),
        "workers": fleet.summary() if fleet else {},
        "integrity": integrity(spans, outcomes, s.max_restarts),
    }


def _seconds(stats: dict[str, Any]) -> str:
    if not stats.get("n"):
        return "-"
    return "  ".join(f"{k} {stats[k] / 1000:.2f}s" for k in ("p50", "p99", "max"))


def _count(value: int, bad: bool) -> str:
    return (
        f"[bold red]{value}[/bold red]" if bad and value else f"[green]{value}[/green]" if bad else str(value)
    )


def chaos_table(result: dict[str, Any]) -> Table:
    p, c = result["parameters"], result["dispatches"]["counts"]
    table = Table(title="agentdispatch bench chaos", title_justify="left")
    table.add_column("measure", style="bold")
    table.add_column("value")
    table.add_column("note", style="dim")
    table.add_row(
        "setup",
        f"{p['workers']} workers x max_jobs {p['max_jobs']}, {p['dispatches']} dispatches",
        f"in flight {p['in_flight']}, jobs {p['min_duration']:g}-{p['max_duration']:g}s, seed {p['seed']}",
    )
    if p.get("nodes", 1) > 1:
        table.add_row(
            "cluster",
            f"{p['nodes']} nodes on Redis behind haproxy",
            "node kill: yes" if p.get("kill_node") else "no node kill",
        )
    table.add_row(
        "server timers",
        f"grace {p['reconnect_grace']:g}s, offer {p['offer_timeout']:g}s,"
        f" deadline {p['dispatch_deadline']:g}s",
        f"max_restarts {p['max_restarts']}",
    )
    k, w = result["kills"], result["workers"]
    table.add_row(
        "worker SIGKILLs",
        f"{k['worker']['done']}/{k['worker']['planned']}",
        f"of {w.get('processes_started', 0)} worker processes started",
    )
    late = k["job"]["after_job_finished"]
    note = f"{late} hit a job that had just finished" if late else ""
    table.add_row(
        "job SIGKILLs",
        f"{k['job']['done']}/{k['job']['planned']}",
        "; ".join([note, *k["skipped"]]).strip("; ")[:90],
    )
    table.add_row("SUCCESS", str(c["success"]), "")
    reasons = "; ".join(f"{r} x{n}" for r, n in result["dispatches"]["reasons"].items())
    table.add_row("FAILED with reason", str(c["failed_with_reason"]), reasons[:90])
    if c["cancelled"] or c["create_failed"]:
        table.add_row("cancelled / create failed", f"{c['cancelled']} / {c['create_failed']}", "")
    table.add_row("lost", _count(result["lost"], True), "must be 0")
    table.add_row("double-run", _count(result["double_run"], True), "must be 0")
    table.add_row("first start", _seconds(result["first_start_ms"]), "CreateDispatch -> job process started")
    _resume_rows(table, result["resume"])
    if result.get("node_kill"):
        _node_kill_rows(table, result["node_kill"])
    _integrity_rows(table, result)
    t, m = result["timing"], result["machine"]
    table.add_row("time", f"{t['total_s']}s", f"dispatching {t['dispatch_phase_s']}s, tail {t['tail_s']}s")
    table.add_row(
        "machine",
        f"{m['cores_busy']} of {result['cpu_count']} cores busy",
        f"load average {m['load_average'][0]}; other processes included",
    )
    table.add_row(
        "verdict", "[green]OK[/green]" if result["ok"] else "[bold red]FAIL[/bold red]", result["run_dir"]
    )
    return table


def _resume_rows(table: Table, r: dict[str, Any]) -> None:
    table.add_row(
        "resume after worker kill", _seconds(r["after_worker_kill_ms"]), f"n={r['after_worker_kill_ms']['n']}"
    )
    table.add_row(
        "resume after job kill", _seconds(r["after_job_kill_ms"]), f"n={r['after_job_kill_ms']['n']}"
    )
    if r["not_resumed"]:
        table.add_row("killed, not resumed", str(sum(r["not_resumed"].values())), str(r["not_resumed"])[:90])


def _node_kill_rows(table: Table, nk: dict[str, Any]) -> None:
    table.add_row(
        "node SIGKILL",
        f"node {nk['node']} at dispatch {nk['at_dispatch']}",
        f"{nk['workers_on_node']} worker(s), {nk['jobs_on_node']} job(s) on it",
    )
    table.add_row(
        "workers back after node kill",
        _seconds(nk["worker_reconnect_ms"]),
        "SIGKILLed with the node"
        if nk.get("workers_killed_with_node")
        else f"{nk['workers_reconnected']}/{nk['workers_on_node']} re-registered through haproxy",
    )
    table.add_row(
        "jobs moved after node kill",
        _seconds(nk["job_moved_ms"]),
        f"{nk['jobs_moved']} moved ({nk['migrated']} migrated, {nk['restarted']} restarted),"
        f" {nk['ended_before_moved']} ended first, {len(nk['not_seen_moved'])} not seen moved",
    )


def _integrity_rows(table: Table, result: dict[str, Any]) -> None:
    i = result["integrity"]
    table.add_row(
        "job attempts",
        str(i["attempts"]),
        ", ".join(f"{k} {v}" for k, v in sorted(i["attempt_end_sources"].items())),
    )
    problems = {
        "SUCCESS without a finished attempt": len(i["success_without_finished_attempt"]),
        "attempts ended unexplained": len(i["unexplained_attempt_ends"]),
        "job processes alive after the run": len(i["survivors"]),
        "jobs over the restart bound": len(i["jobs_over_restart_bound"]),
        "workers exited on their own": len(result["workers"].get("unexpected_exits", [])),
    }
    for label, n in problems.items():
        if n:
            table.add_row(label, _count(n, True), "see the JSON")
