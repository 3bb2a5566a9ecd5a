"""The printed table of a dispatch benchmark run."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..common.report import TARGETS_DOC, fmt_num


def _row_ms(table: Table, label: str, stats: dict[str, Any], note: str = "") -> None:
    if not stats.get("n"):
        table.add_row(label, "-", note)
        return
    text = "  ".join(f"{k} {fmt_num(stats.get(k))}" for k in ("p50", "p95", "p99", "max"))
    table.add_row(label, text + " ms", note or f"n={stats['n']}")


def dispatch_table(result: dict[str, Any]) -> Table:
    """One table with everything a reader needs to judge a dispatch benchmark run."""
    p, m = result["parameters"], result["method"]
    table = Table(title="agentdispatch bench dispatch", show_lines=False, title_justify="left")
    table.add_column("measure", style="bold")
    table.add_column("value")
    table.add_column("note", style="dim")
    table.add_row("setup", f"{p['workers']} workers, {p['dispatches']} dispatches", f"{result['timestamp']}")
    rate = f"{p['rate']:g}/s" if p["rate"] else "max (closed loop)"
    table.add_row(
        "load", f"rate {rate}, concurrency {p['concurrency']}", f"{m['client_processes']} client process(es)"
    )
    table.add_row("client", p["client"], m["client"])
    table.add_row("server", "external" if p["server_url"] else "separate process", m["server"][:60])
    d = result["dispatches"]
    table.add_row("dispatches", f"{d['assigned']}/{d['requested']} assigned", f"created {d['created']}")
    _row_ms(table, "dispatch latency", result["latency_ms"], "CreateDispatch sent -> JobAssignment received")
    _row_ms(table, "CreateDispatch call", result["create_dispatch_call_ms"], "HTTP request -> response")
    t = result["throughput"]
    table.add_row(
        "throughput",
        f"{fmt_num(t['dispatches_per_s'], ' /s', 1)}",
        f"phase {fmt_num(t['phase_seconds'], ' s')}, sent at {fmt_num(t['send_rate_per_s'], ' /s', 1)}",
    )
    _row_ms(table, "WS round trip, idle", result["rtt_ms"]["idle"])
    _row_ms(table, "HTTP round trip, idle", result["rtt_ms"]["http_idle"], "GET / on a kept-alive connection")
    _row_ms(table, "WS round trip, loaded", result["rtt_ms"]["loaded"])
    r = result["ratio"]
    table.add_row(
        "p99 / (HTTP+WS RTT)",
        f"{fmt_num(r['p99_vs_http_plus_ws_rtt'], 'x', 2)}",
        "P1: latency p99 / (idle HTTP p50 + idle WS p50); target <= 3x",
    )
    table.add_row(
        "latency / WS RTT",
        f"p50 {fmt_num(r['p50_vs_idle_rtt'], 'x', 1)}  p99 {fmt_num(r['p99_vs_idle_rtt'], 'x', 1)}",
        f"vs loaded RTT: p50 {fmt_num(r['p50_vs_loaded_rtt'], 'x', 1)}"
        f"  p99 {fmt_num(r['p99_vs_loaded_rtt'], 'x', 1)}",
    )
    f = result["failures"]
    reasons = ", ".join(f"{k}: {v}" for k, v in f["reasons"].items()) or "none"
    table.add_row("failures", str(f["total"]), reasons[:80])
    w = result["workers"]
    table.add_row(
        "jobs per worker",
        f"min {w['jobs_min']}  max {w['jobs_max']}  mean {w['jobs_mean']}",
        f"{w['count']} workers, {w['workers_without_jobs']} without jobs",
    )
    c = result["cpu"]
    table.add_row(
        "CPU per dispatch",
        f"server {fmt_num(c['server_cpu_ms_per_dispatch'], ' ms', 3)}",
        f"load generator {fmt_num(c['clients_cpu_ms_per_dispatch'], ' ms', 3)};"
        f" CPU s: server {fmt_num(c['server_cpu_seconds'])}, clients {fmt_num(c['clients_cpu_seconds'])}",
    )
    table.add_row(
        "cores busy",
        f"server {fmt_num(c['server_cores_used'], '', 2)}  clients {fmt_num(c['clients_cores_used'], '', 2)}",
        f"{c['count']} cpus; other processes {fmt_num(c['others_cores_used'], '', 2)};"
        f" machine before the run {fmt_num(c['machine_busy_cores_before'], '', 2)}",
    )
    _footer(table, result)
    return table


def _footer(table: Table, result: dict[str, Any]) -> None:
    tg = result["targets"]
    table.add_row(
        "target p99 <= 3x RTT",
        fmt_num(tg["latency_p99_le_3x_http_plus_ws_rtt"]),
        "P1: vs idle HTTP + WS round trip",
    )
    table.add_row(
        "target server <= 0.5 ms", fmt_num(tg["server_cpu_le_0_5_ms_per_dispatch"]), "P3: CPU per dispatch"
    )
    table.add_row(
        "target >= 2000/s", fmt_num(tg["throughput_ge_2000_per_s"]), f"{TARGETS_DOC}: at 1,000 workers"
    )
    profile = result.get("profile")
    if profile and profile.get("top_self"):
        for entry in profile["top_self"][:8]:
            table.add_row("server profile", f"{entry['percent']}% self", entry["function"][:90])
