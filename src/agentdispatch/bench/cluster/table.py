"""The printed table of a cluster benchmark run: one row per scenario, side by side."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..common.report import fmt_num


def _ms(stats: dict[str, Any]) -> str:
    if not stats.get("n"):
        return "-"
    return f"{fmt_num(stats.get('p50'))} / {fmt_num(stats.get('p99'))}"


def cluster_table(result: dict[str, Any]) -> Table:
    p = result["parameters"]
    title = (
        f"agentdispatch bench cluster — {p['workers']} workers, {p['dispatches']} dispatches, "
        f"rate {p['rate'] or 'max'}/s, {p['clients']} client processes ({result['timestamp']})"
    )
    table = Table(title=title, title_justify="left")
    for col in (
        "scenario",
        "assigned",
        "p50 / p99 ms",
        "same-node p50/p99",
        "cross-node p50/p99",
        "disp/s",
        "node CPU ms/disp",
        "all nodes ms/disp",
        "redis ms/disp",
    ):
        table.add_column(col)  # fmt: skip
    for sc in result["scenarios"]:
        d, cpu = sc["dispatches"], sc["cpu"]
        per_node = " ".join(fmt_num(v) for v in cpu["node_cpu_ms_per_dispatch"].values())
        load = sc["load_avg_1m"]
        table.add_row(
            f"{sc['name']} ({sc['nodes']} node, {sc['store']}; load {load['start']:g}-{load['end']:g})",
            f"{d['assigned']}/{d['created']}" + (f" dup {d['duplicates']}" if d["duplicates"] else ""),
            _ms(sc["latency_ms"]),
            _ms(sc["same_node_latency_ms"]),
            _ms(sc["cross_node_latency_ms"]),
            fmt_num(sc["throughput_per_s"]),
            per_node,
            fmt_num(cpu["all_nodes_cpu_ms_per_dispatch"]),
            fmt_num(cpu["redis_cpu_ms_per_dispatch"]),
        )
    c = result["comparison"]
    delta = fmt_num(c["cross_node_p99_minus_memory_single_p99_ms"])
    target = c["target_cross_node_p99_le_single_plus_2ms"]
    table.caption = (
        f"cross-node p99 - single-node (memory) p99 = {delta} ms (target <= 2 ms: {target}); "
        f"commit {result.get('git_commit', '?')}"
    )
    return table
