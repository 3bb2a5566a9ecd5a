"""The worker benchmark's result: per-job samples summarised, ratios ours / livekit-agents, targets; and its
rich table."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.table import Table

from ..common.report import TARGETS_DOC, fmt_num
from ..common.stats import environment, ratio, summarize_ms
from .procs import LIVEKIT, OURS, livekit_agents_version

TARGET_RATIO = 0.5
#: a job whose wall clock moved more than this against CLOCK_MONOTONIC is left out of the wall-clock measure
MAX_CLOCK_STEP_S = 0.0005
KINDS = (OURS.kind, LIVEKIT.kind)
LATENCIES = {
    "assignment_to_entry_ms": "JobAssignment sent (job.state.started_at, wall) -> entrypoint runs (wall);"
    " left out: jobs during which the wall clock was stepped (jobs.<worker>.wall_clock_stepped) and jobs"
    " the server restarted after their process failed (jobs.<worker>.restarted)",
    "dispatch_to_entry_ms": "CreateDispatch sent -> entrypoint runs (CLOCK_MONOTONIC)",
    "create_call_ms": "CreateDispatch request -> response",
}


@dataclass(frozen=True)
class JobSample:
    worker: str
    dispatch_id: str
    job_id: str
    pid: int
    status: str
    worker_id: str
    #: how many times the job's entrypoint ran (> 1: its process failed and the server restarted it)
    runs: int
    dispatch_to_entry_s: float
    assignment_to_entry_s: float
    create_call_s: float
    #: change of (wall - CLOCK_MONOTONIC) between the send and the entrypoint; not ~0 = wall clock stepped
    wall_clock_step_s: float
    #: len(sys.modules) in the job process, read just after the entrypoint's timestamps
    modules_at_entry: int
    #: the job in the entrypoint carried the same started_at as ListDispatch reports (or none)
    started_at_matches: bool


def clock_stepped(sample: JobSample) -> bool:
    return abs(sample.wall_clock_step_s) > MAX_CLOCK_STEP_S


def wall_measure_valid(sample: JobSample) -> bool:
    """started_at -> entrypoint needs one run (started_at is the last assignment's) and a steady clock."""
    return sample.runs == 1 and not clock_stepped(sample)


def _latencies(samples: Sequence[JobSample]) -> dict[str, Any]:
    steady = [s for s in samples if wall_measure_valid(s)]
    return {
        "assignment_to_entry_ms": summarize_ms(s.assignment_to_entry_s for s in steady),
        "dispatch_to_entry_ms": summarize_ms(s.dispatch_to_entry_s for s in samples),
        "create_call_ms": summarize_ms(s.create_call_s for s in samples),
    }


def _memory_ratios(memory: dict[str, Any]) -> dict[str, float | None]:
    ours, lk = memory[OURS.kind], memory[LIVEKIT.kind]
    found: dict[str, float | None] = {}
    for field in ("uss", "pss", "rss"):
        found[f"idle_{field}_mean"] = ratio(ours["idle"][f"mean_{field}_mb"], lk["idle"][f"mean_{field}_mb"])
    for field in ("rss", "uss", "pss"):
        found[f"main_{field}"] = ratio(
            (ours["main"] or {}).get(f"{field}_mb"), (lk["main"] or {}).get(f"{field}_mb")
        )
    found["tree_pss"] = ratio(ours["tree_pss_mb"], lk["tree_pss_mb"])
    return found


def _latency_ratios(latency: dict[str, Any]) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for name in ("assignment_to_entry_ms", "dispatch_to_entry_ms"):
        for q in ("p50", "p99"):
            found[f"{name}_{q}"] = ratio(latency[OURS.kind][name].get(q), latency[LIVEKIT.kind][name].get(q))
    return found


def _targets(ratios: dict[str, float | None]) -> dict[str, bool | None]:
    def within(key: str) -> bool | None:
        value = ratios.get(key)
        return None if value is None else value <= TARGET_RATIO

    return {
        "job_start_p50_le_half_livekit": within("assignment_to_entry_ms_p50"),
        "job_start_p99_le_half_livekit": within("assignment_to_entry_ms_p99"),
        "idle_uss_le_half_livekit": within("idle_uss_mean"),
        "idle_pss_le_half_livekit": within("idle_pss_mean"),
    }


def build_result(
    measured: dict[str, Any],
    commands: dict[str, list[str]],
    problems: list[str],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    samples: list[JobSample] = measured["samples"]
    by_kind = {k: [s for s in samples if s.worker == k] for k in KINDS}
    latency = {k: _latencies(v) for k, v in by_kind.items()}
    ratios = {**_latency_ratios(latency), **_memory_ratios(measured["memory"])}
    failed = [asdict(s) for s in samples if s.status != "JS_SUCCESS" or not s.started_at_matches]
    return {
        "benchmark": "worker",
        **environment(),
        "parameters": {k: (str(v) if v is not None and k == "workdir" else v) for k, v in parameters.items()},
        "method": {
            "workers": {
                OURS.kind: OURS.description,
                LIVEKIT.kind: f"livekit-agents {livekit_agents_version()}",
            },
            "commands": commands,
            "latency": LATENCIES,
            "order": "one job at a time, alternating workers, each after its pool is full again + pause",
            "memory": "psutil memory_full_info of each idle forkserver child (prewarm done, no job yet)",
            "machine": platform.machine(),
            "load_average_1m": measured["load_average_1m"],
            "machine_cores_busy_while_measuring": measured["machine_cores_busy"],
        },
        "jobs": {
            k: {
                "measured": len(v),
                "succeeded": sum(s.status == "JS_SUCCESS" for s in v),
                "modules_at_entry": max((s.modules_at_entry for s in v), default=None),
                "wall_clock_stepped": sum(clock_stepped(s) for s in v),
                "restarted": sum(s.runs > 1 for s in v),
            }
            for k, v in by_kind.items()
        },
        "latency": latency,
        "memory": measured["memory"],
        "ratio_ours_vs_livekit": ratios,
        "targets": _targets(ratios),
        "failures": {
            "jobs": failed,
            "restarted": [asdict(s) for s in samples if s.runs > 1],
            "shutdown": problems,
        },
        "phase_seconds": measured["phase_seconds"],
        "samples": [asdict(s) for s in samples],
    }


def _num(value: Any, unit: str = "", digits: int = 2) -> str:
    return fmt_num(value, unit, digits)


def _ratio_cell(value: float | None) -> str:
    if value is None:
        return "-"
    style = "green" if value <= TARGET_RATIO else "red"
    return f"[{style}]{value:.2f}x[/{style}]"


def worker_table(result: dict[str, Any]) -> Table:
    """Ours and livekit-agents side by side, with the ratio ours / livekit-agents."""
    p, lat, mem, r = (
        result["parameters"],
        result["latency"],
        result["memory"],
        result["ratio_ours_vs_livekit"],
    )
    lk_version = result["method"]["workers"][LIVEKIT.kind]
    table = Table(
        title=f"agentdispatch bench worker: ours vs {lk_version}",
        caption=f"{p['jobs']} jobs per worker, {p['idle']} idle processes each; target ours / lk <= 0.5",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("measure", style="bold")
    table.add_column("ours", justify="right")
    table.add_column("livekit-agents", justify="right")
    table.add_column("ours / lk", justify="right")
    for name, label in (
        ("assignment_to_entry_ms", "job start"),
        ("dispatch_to_entry_ms", "dispatch -> entry"),
    ):
        for q in ("p50", "p99"):
            cells = [_num(lat[k][name].get(q), " ms") for k in KINDS]
            table.add_row(f"{label} {q}", *cells, _ratio_cell(r[f"{name}_{q}"]))
    for field in ("uss", "pss", "rss"):
        cells = [_num(mem[k]["idle"][f"mean_{field}_mb"], " MB") for k in KINDS]
        table.add_row(f"idle process {field.upper()}", *cells, _ratio_cell(r[f"idle_{field}_mean"]))
    table.add_row("idle processes counted", *[str(mem[k]["idle"]["count"]) for k in KINDS], "")
    table.add_row(
        "modules in idle process", *[_num(mem[k]["idle"]["modules_mean"], "", 0) for k in KINDS], ""
    )
    for field in ("rss", "uss"):
        cells = [_num((mem[k]["main"] or {}).get(f"{field}_mb"), " MB") for k in KINDS]
        table.add_row(f"worker main {field.upper()}", *cells, _ratio_cell(r[f"main_{field}"]))
    cells = [_num((mem[k]["forkserver"] or {}).get("pss_mb"), " MB") for k in KINDS]
    table.add_row("forkserver PSS", *cells, "")
    table.add_row(
        "whole tree PSS", *[_num(mem[k]["tree_pss_mb"], " MB") for k in KINDS], _ratio_cell(r["tree_pss"])
    )
    jobs = result["jobs"]
    table.add_row("jobs succeeded", *[f"{jobs[k]['succeeded']}/{jobs[k]['measured']}" for k in KINDS], "")
    stepped = [str(jobs[k]["wall_clock_stepped"]) for k in KINDS]
    table.add_row("left out: wall clock stepped", *stepped, "job start only")
    restarted = [str(jobs[k]["restarted"]) for k in KINDS]
    table.add_row("restarted: process failed", *restarted, "job start only")
    busy = result["method"]["machine_cores_busy_while_measuring"]
    table.add_row("machine cores busy", _num(busy), "", f"of {result['cpu_count']}")
    for name, met in result["targets"].items():
        table.add_row(f"target {name}", _num(met), "", TARGETS_DOC)
    return table
