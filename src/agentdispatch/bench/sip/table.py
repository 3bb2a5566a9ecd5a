"""The printed table of `bench sip`."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..common.report import fmt_num


def sip_table(result: dict[str, Any]) -> Table:
    s = result["settings"]
    title = (
        f"bench sip: {s['calls']} calls at {s['rate']:g}/s, up to {s['concurrent']} at once, "
        f"{s['hold']:g} s each, {s['workers']} worker(s) over {s['transport'].upper()}"
    )
    table = Table(title=title)
    for col in ("measure", "n", "p50", "p99", "max"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for label, key in (
        ("INVITE -> 180 Ringing", "invite_to_180_ms"),
        ("INVITE -> 200 OK (post-dial delay)", "invite_to_200_ms"),
        ("INVITE -> final error", "invite_to_final_error_ms"),
    ):
        row = result[key]
        table.add_row(
            label, str(row.get("n", 0)), *(fmt_num(row.get(q), " ms", 1) for q in ("p50", "p99", "max"))
        )
    audio = result.get("audio") or {}
    if audio:
        n = audio["frames_sent_per_call"]
        for label, key in (
            ("audio frames caller -> room", "to_room_ratio"),
            ("echo frames -> caller", "to_caller_ratio"),
        ):
            row = audio[key]
            table.add_row(
                f"{label} (of {n}/call)",
                str(audio["calls"]),
                f"{row['p50']:.1%}",
                f"min {row['min']:.1%}",
                "",
            )
    codes = ", ".join(f"{code}: {n}" for code, n in result["by_status"].items())
    load = result.get("machine_load", {}).get("after", [None])[0]
    table.caption = (
        f"answered {result['answered']}/{result['calls']}; final codes seen by sipp: {codes}; "
        f"machine load (1 min) {fmt_num(load, '', 2)} on {result['environment']['usable_cpus']} CPUs"
    )
    return table


def cases_table(result: dict[str, Any]) -> Table:
    s = result["settings"]
    table = Table(title=f"What the caller hears (ringing timeout {s['ringing_timeout']:g} s, one call each)")
    for col in ("case", "180 Ringing after", "final answer", "after", "Retry-After"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for row in result["cases"]:
        if "error" in row:
            table.add_row(row["case"], "-", row["error"], "-", "-")
            continue
        table.add_row(
            row["case"],
            fmt_num(row["ringing_after_s"], " s", 3),
            str(row["final_status"]),
            fmt_num(row["final_after_s"], " s", 3),
            f"{row['retry_after']} s" if row["retry_after"] else "-",
        )
    return table
