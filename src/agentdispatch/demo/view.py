"""What the demo shows: the live job table and the final summary (pure rendering, no I/O)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from livekit.protocol import agent
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

STATUS_STYLE: dict[int, tuple[str, str]] = {
    agent.JobStatus.JS_PENDING: ("waiting", "yellow"),
    agent.JobStatus.JS_RUNNING: ("running", "cyan"),
    agent.JobStatus.JS_SUCCESS: ("succeeded", "green"),
    agent.JobStatus.JS_FAILED: ("failed", "red"),
    agent.JobStatus.JS_CANCELLED: ("cancelled", "magenta"),
}
MAX_LIVE_ROWS = 30
UNFINISHED = (agent.JobStatus.JS_PENDING, agent.JobStatus.JS_RUNNING)


@dataclass
class JobRow:
    job_id: str
    room: str
    agent_name: str
    worker: str
    status: int
    #: wall-clock nanoseconds from the server (dispatch created, job assigned, job ended); 0 = not yet
    created_ns: int
    started_ns: int
    ended_ns: int
    error: str = ""

    @property
    def assign_ms(self) -> float | None:
        return (self.started_ns - self.created_ns) / 1e6 if self.started_ns else None

    def label(self) -> tuple[str, str]:
        known = STATUS_STYLE.get(self.status)
        return known if known is not None else (f"status {self.status}", "white")

    def time_to_assign(self, now_ns: int) -> str:
        if self.assign_ms is not None:
            return f"{self.assign_ms:.1f} ms"
        until = self.ended_ns or now_ns
        verb = "gave up after" if self.ended_ns else "waiting"
        return f"{verb} {(until - self.created_ns) / 1e9:.1f} s"


def render_jobs(view: tuple[Sequence[JobRow], float, bool]) -> RenderableType:
    rows, elapsed, script_done = view
    table = Table(title="agentdispatch demo: jobs (from ListDispatch)", title_justify="left", expand=False)
    for name in ("job", "room", "agent", "worker", "status", "time to assign", "note"):
        table.add_column(name, no_wrap=name != "note")
    ordered = sorted(rows, key=lambda r: (r.created_ns, r.job_id))
    shown = ordered[-MAX_LIVE_ROWS:]
    now_ns = time.time_ns()
    for row in shown:
        label, style = row.label()
        table.add_row(
            row.job_id,
            row.room,
            row.agent_name,
            row.worker or "-",
            Text(label, style=style),
            row.time_to_assign(now_ns),
            row.error,
        )
    counts = Counter(r.label()[0] for r in rows)
    parts = [f"{counts.get(label, 0)} {label}" for label, _ in STATUS_STYLE.values() if counts.get(label)]
    more = f" ({len(ordered) - len(shown)} older jobs not shown)" if len(ordered) > len(shown) else ""
    all_ended = script_done and bool(rows) and not any(r.status in UNFINISHED for r in rows)
    phase = "all jobs ended" if all_ended else "waiting for jobs to end" if script_done else "dispatching"
    footer = Text(f"{len(rows)} jobs: {', '.join(parts) or 'none yet'} | {elapsed:.1f}s, {phase}{more}")
    return Group(table, footer)


@dataclass
class DemoSummary:
    jobs: int = 0
    placed: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    per_worker: dict[str, int] = field(default_factory=dict)
    assign_ms_p50: float | None = None
    assign_ms_max: float | None = None
    create_errors: list[str] = field(default_factory=list)


def summarize(
    rows: Sequence[JobRow], worker_names: dict[str, str], create_errors: Sequence[str]
) -> DemoSummary:
    assigned = sorted(r.assign_ms for r in rows if r.assign_ms is not None)
    per_worker = Counter({name: 0 for name in worker_names.values()})
    per_worker.update(r.worker for r in rows if r.worker)
    return DemoSummary(
        jobs=len(rows),
        placed=len(assigned),
        succeeded=sum(1 for r in rows if r.status == agent.JobStatus.JS_SUCCESS),
        failed=sum(1 for r in rows if r.status == agent.JobStatus.JS_FAILED),
        unfinished=sum(
            1 for r in rows if r.status in (agent.JobStatus.JS_PENDING, agent.JobStatus.JS_RUNNING)
        ),
        failure_reasons=dict(Counter(r.error for r in rows if r.status == agent.JobStatus.JS_FAILED)),
        per_worker=dict(sorted(per_worker.items())),
        assign_ms_p50=assigned[len(assigned) // 2] if assigned else None,
        assign_ms_max=assigned[-1] if assigned else None,
        create_errors=list(create_errors),
    )


def render_summary(summary: DemoSummary) -> RenderableType:
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("jobs", str(summary.jobs))
    timing = ""
    if summary.assign_ms_p50 is not None and summary.assign_ms_max is not None:
        timing = (
            f" (time to assign: median {summary.assign_ms_p50:.1f} ms, max {summary.assign_ms_max:.1f} ms)"
        )
    table.add_row("placed on a worker", f"{summary.placed}{timing}")
    table.add_row("succeeded", Text(str(summary.succeeded), style="green"))
    table.add_row("failed", Text(str(summary.failed), style="red" if summary.failed else ""))
    for reason, count in summary.failure_reasons.items():
        table.add_row("  failed because", f"{count} x {reason}")
    if summary.unfinished:
        table.add_row("still pending/running", str(summary.unfinished))
    for error in summary.create_errors:
        table.add_row("CreateDispatch error", error)
    for name, count in summary.per_worker.items():
        table.add_row(f"  jobs on {name}", str(count))
    return table
