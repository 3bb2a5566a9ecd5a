"""Accounting for a chaos run (pure: no I/O, no clocks): outcomes, double runs, resume times.

- Every dispatch lands in exactly one bucket: ``success`` (every job JS_SUCCESS), ``failed_with_reason``
  (a job JS_FAILED with a non-empty error), ``cancelled`` (JS_CANCELLED, reason given), ``create_failed``
  (CreateDispatch answered an error and the room holds no dispatch), or ``lost``: not ended within the
  timeout, gone from the server, ended FAILED with an empty error, or without any job.
- Every job attempt gets an interval [start, end]: ``end`` is the time the attempt recorded when it
  finished; for an attempt that was SIGKILLed (itself, or its worker) the moment its process was seen
  gone; for an attempt that ended some other way, the first moment it was seen gone (an upper bound);
  for a process still alive after the fleet stopped, infinity. Two attempts of one job whose intervals
  overlap are a **double run**.
- Resume time: from the SIGKILL that ended an attempt to the start of the job's next attempt.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..common.stats import summarize_ms
from .fleet import Death
from .record import Attempt

BUCKETS = ("success", "failed_with_reason", "cancelled", "create_failed", "lost")
KILLED_SOURCES = ("killed-job", "killed-worker")


@dataclass(frozen=True)
class JobView:
    job_id: str
    status: str
    error: str
    worker_id: str = ""


@dataclass(frozen=True)
class DispatchOutcome:
    """What the driver last saw of one dispatch (ListDispatch of its room)."""

    index: int
    room: str
    dispatch_id: str
    jobs: tuple[JobView, ...] = ()
    ended: bool = False
    #: the room no longer holds the dispatch
    missing: bool = False
    create_error: str = ""


@dataclass(frozen=True)
class Interval:
    attempt: Attempt
    end: float
    #: finished | killed-job | killed-worker | died-unexplained | still-running
    source: str
    killed_at: float | None = None


def classify(outcome: DispatchOutcome) -> tuple[str, str]:
    """(bucket, detail) of one dispatch."""
    if outcome.create_error and outcome.missing:
        return "create_failed", outcome.create_error
    if outcome.missing:
        return "lost", "dispatch missing on the server"
    if not outcome.jobs:
        return "lost", "dispatch has no job"
    if not outcome.ended:
        states = ",".join(sorted({j.status for j in outcome.jobs}))
        return "lost", f"not ended within the timeout ({states})"
    failed = [j for j in outcome.jobs if j.status == "JS_FAILED"]
    if failed:
        if all(j.error for j in failed):
            return "failed_with_reason", failed[0].error
        return "lost", "ended JS_FAILED with an empty error"
    cancelled = [j for j in outcome.jobs if j.status == "JS_CANCELLED"]
    if cancelled:
        return "cancelled", cancelled[0].error
    return "success", ""


def normalize_reason(error: str) -> str:
    """First line of an error with numbers and ids blanked, so equal causes count together."""
    line = error.strip().splitlines()[0] if error.strip() else ""
    line = re.sub(r"\b(AJ|AW|AD|RM)_\w+", r"\1_*", line)
    return re.sub(r"\d+", "N", line)[:160]


def intervals(
    attempts: Iterable[Attempt],
    deaths: Sequence[Death],
    noticed_dead: Mapping[str, float],
    survivors: Iterable[str],
    scan_time: float,
) -> list[Interval]:
    """Each attempt with its end and how that end is known (see the module doc)."""
    by_pid: dict[int, list[Death]] = {}
    for death in deaths:
        by_pid.setdefault(death.pid, []).append(death)
    alive = set(survivors)
    result = []
    for a in attempts:
        if a.end is not None:
            result.append(Interval(a, a.end, "finished"))
            continue
        matches = [d for d in by_pid.get(a.pid, []) if d.died_at is None or d.died_at >= a.start]
        if matches:
            d = min(matches, key=lambda d: d.killed_at)
            end = math.inf if d.died_at is None else d.died_at
            result.append(Interval(a, end, f"killed-{d.kind}", d.killed_at))
        elif a.key in alive:
            result.append(Interval(a, math.inf, "still-running"))
        else:
            result.append(Interval(a, noticed_dead.get(a.key, scan_time), "died-unexplained"))
    return result


def _by_job(spans: Iterable[Interval]) -> dict[str, list[Interval]]:
    jobs: dict[str, list[Interval]] = {}
    for span in spans:
        jobs.setdefault(span.attempt.job_id, []).append(span)
    for runs in jobs.values():
        runs.sort(key=lambda s: s.attempt.start)
    return jobs


def _span_json(span: Interval) -> dict[str, Any]:
    a = span.attempt
    end = None if math.isinf(span.end) else round(span.end, 4)
    return {
        "pid": a.pid,
        "worker_id": a.worker_id,
        "start": round(a.start, 4),
        "end": end,
        "end_source": span.source,
    }


def double_runs(spans: Iterable[Interval]) -> list[dict[str, Any]]:
    """Pairs of attempts of one job that were alive at the same time."""
    found = []
    for job_id, runs in _by_job(spans).items():
        for i, first in enumerate(runs):
            for second in runs[i + 1 :]:
                if second.attempt.start < first.end:
                    overlap = min(first.end, second.end) - second.attempt.start
                    found.append(
                        {
                            "job_id": job_id,
                            "overlap_s": None if math.isinf(overlap) else round(overlap, 4),
                            "first": _span_json(first),
                            "second": _span_json(second),
                        }
                    )
    return found


def resumes(spans: Iterable[Interval], bucket_of_job: Mapping[str, str]) -> dict[str, Any]:
    """Time from each kill that stopped an attempt to the job's next attempt; kills never resumed."""
    times: dict[str, list[float]] = {"killed-job": [], "killed-worker": []}
    not_resumed: Counter[str] = Counter()
    for job_id, runs in _by_job(spans).items():
        for i, span in enumerate(runs):
            if span.source not in KILLED_SOURCES or span.killed_at is None:
                continue
            later = [s for s in runs[i + 1 :] if s.attempt.start >= span.killed_at]
            if later:
                times[span.source].append(later[0].attempt.start - span.killed_at)
            else:
                not_resumed[bucket_of_job.get(job_id, "unknown dispatch")] += 1
    every = times["killed-job"] + times["killed-worker"]
    return {
        "after_worker_kill_ms": summarize_ms(times["killed-worker"]),
        "after_job_kill_ms": summarize_ms(times["killed-job"]),
        "all_ms": summarize_ms(every),
        "resumed": len(every),
        "not_resumed": dict(not_resumed),
    }


def account(outcomes: Sequence[DispatchOutcome]) -> tuple[dict[str, Any], dict[str, str]]:
    """Bucket counts, lost details and failure reasons; plus each job id's bucket."""
    counts = dict.fromkeys(BUCKETS, 0)
    reasons: Counter[str] = Counter()
    lost: list[dict[str, Any]] = []
    bucket_of_job: dict[str, str] = {}
    for outcome in outcomes:
        bucket, detail = classify(outcome)
        counts[bucket] += 1
        for job in outcome.jobs:
            bucket_of_job[job.job_id] = bucket
        if bucket in ("failed_with_reason", "cancelled", "create_failed"):
            reasons[f"{bucket}: {normalize_reason(detail)}"] += 1
        elif bucket == "lost":
            jobs = [{"id": j.job_id, "status": j.status, "error": j.error[:200]} for j in outcome.jobs]
            lost.append(
                {"room": outcome.room, "dispatch_id": outcome.dispatch_id, "why": detail, "jobs": jobs}
            )
    counts["total"] = len(outcomes)
    return {"counts": counts, "reasons": dict(reasons.most_common(12)), "lost": lost}, bucket_of_job


def integrity(
    spans: Sequence[Interval], outcomes: Sequence[DispatchOutcome], max_restarts: int
) -> dict[str, Any]:
    """Cross-checks between what the server reported and what the job processes recorded."""
    finished = {s.attempt.job_id for s in spans if s.source == "finished"}
    phantom = [
        j.job_id for o in outcomes if classify(o)[0] == "success" for j in o.jobs if j.job_id not in finished
    ]
    per_job = Counter(s.attempt.job_id for s in spans)
    over_bound = sorted(job for job, n in per_job.items() if n > max_restarts + 1)
    sources = Counter(s.source for s in spans)
    return {
        "attempts": len(spans),
        "attempt_end_sources": dict(sources),
        "max_attempts_per_job": max(per_job.values(), default=0),
        "jobs_over_restart_bound": over_bound,
        "success_without_finished_attempt": phantom,
        "unexplained_attempt_ends": [
            _span_json(s) | {"job_id": s.attempt.job_id} for s in spans if s.source == "died-unexplained"
        ],
        "survivors": [
            _span_json(s) | {"job_id": s.attempt.job_id} for s in spans if s.source == "still-running"
        ],
    }


def start_latency(spans: Iterable[Interval], created_at: Mapping[str, float]) -> dict[str, Any]:
    """CreateDispatch sent -> first attempt of the dispatch started (includes the job process start)."""
    first: dict[str, float] = {}
    for span in spans:
        a = span.attempt
        first[a.dispatch_id] = min(first.get(a.dispatch_id, math.inf), a.start)
    return summarize_ms(first[d] - t for d, t in created_at.items() if d in first)
