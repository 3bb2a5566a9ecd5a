"""Memory of a benchmarked worker's processes: USS, PSS and RSS per process, by role.

- USS: pages only this process maps (what killing it would free). The fair "cost of one more idle process".
- PSS: each page's size divided by the number of processes mapping it, so memory shared with the forkserver
  and the other idle processes is charged in shares. Sums to the real footprint of a tree.
- RSS: every resident page, shared or not (over-counts; kept because it is what `ps` shows).

Read from /proc/<pid>/smaps_rollup by psutil's `memory_full_info()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psutil

from .procs import ProcInfo

MB = 1024 * 1024
FIELDS = ("uss", "pss", "rss")


def process_memory(info: ProcInfo) -> dict[str, Any] | None:
    """One process's memory in MiB, or None if it is gone."""
    try:
        full = psutil.Process(info.pid).memory_full_info()
    except psutil.Error:
        return None
    return {
        "pid": info.pid,
        "role": info.role,
        "uss_mb": round(full.uss / MB, 2),
        "pss_mb": round(full.pss / MB, 2),
        "rss_mb": round(full.rss / MB, 2),
        "cmdline": info.cmdline[:160],
    }


def _mean(rows: Sequence[dict[str, Any]], field: str) -> float | None:
    if not rows:
        return None
    return round(sum(float(r[f"{field}_mb"]) for r in rows) / len(rows), 2)


def _single(rows: Sequence[dict[str, Any]], role: str) -> dict[str, float] | None:
    matching = [r for r in rows if r["role"] == role]
    if not matching:
        return None
    return {f"{f}_mb": round(sum(float(r[f"{f}_mb"]) for r in matching), 2) for f in FIELDS}


def summarize_tree(procs: Sequence[ProcInfo], ready: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-role summary of one worker's tree; `ready` (pid -> prewarm record) adds module counts."""
    rows = [m for m in (process_memory(p) for p in procs) if m is not None]
    idle = [r for r in rows if r["role"] == "idle"]
    modules = [int(ready[r["pid"]]["modules"]) for r in idle if r["pid"] in ready]
    return {
        "idle": {
            "count": len(idle),
            **{f"mean_{f}_mb": _mean(idle, f) for f in FIELDS},
            "modules_mean": round(sum(modules) / len(modules), 1) if modules else None,
        },
        "main": _single(rows, "main"),
        "forkserver": _single(rows, "forkserver"),
        "helpers": [r for r in rows if r["role"] in ("resource_tracker", "other")],
        "tree_pss_mb": round(sum(float(r["pss_mb"]) for r in rows), 2),
        "processes": rows,
    }
