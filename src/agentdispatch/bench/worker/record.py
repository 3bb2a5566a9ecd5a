"""What the two benchmark agents write: one file per job and one per prewarmed process.

Shared by `agents/ours_agent.py` and `agents/lk_agent.py` (run as scripts inside the workers'
job processes) and read by `run.py`. Standard library only, and careful not to disturb what it
measures: the prewarm record touches no module object (iterating `sys.modules` in an idle process would
copy-on-write every page holding a module and inflate its USS), and nothing is imported there.

- ``job-<job id>-<pid>.json``: the instant the entrypoint started, on CLOCK_MONOTONIC (one clock for every
  process of a Linux machine, comparable with the benchmark's send time) and on the wall clock
  (comparable with the server's ``job.state.started_at``), plus who ran it;
- ``ready-<pid>.json``: written by prewarm, the last step before a process counts as idle and warm;
  it also records how many modules the idle process holds.
"""

from __future__ import annotations

import os
import sys
import time

OUT_ENV = "AGENTDISPATCH_BENCH_OUT"
IDLE_ENV = "AGENTDISPATCH_BENCH_IDLE"
JOB_PREFIX = "job-"
READY_PREFIX = "ready-"


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def out_dir() -> str:
    return os.environ[OUT_ENV]


def idle_processes(default: int = 3) -> int:
    return int(os.environ.get(IDLE_ENV, default))


def _write(name: str, text: str) -> None:
    """Write then rename: a reader never sees half a file."""
    directory = out_dir()
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))


def write_job_record(
    mono_ns: int, wall_ns: int, job_id: str, dispatch_id: str, room: str, started_at: int
) -> None:
    """Called by the entrypoint with the timestamps it took first; the rest is not timed."""
    import json

    record = {
        "mono_ns": mono_ns,
        "wall_ns": wall_ns,
        "job_id": job_id,
        "dispatch_id": dispatch_id,
        "room": room,
        "job_started_at_ns": started_at,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "modules": len(sys.modules),
    }
    # the pid in the name: a job the server restarts runs again, in another process
    _write(f"{JOB_PREFIX}{job_id}-{os.getpid()}.json", json.dumps(record))


def write_ready_record() -> None:
    """Called by prewarm: integers only, formatted by hand."""
    pid, ppid, now, modules = os.getpid(), os.getppid(), monotonic_ns(), len(sys.modules)
    text = f'{{"pid": {pid}, "ppid": {ppid}, "mono_ns": {now}, "modules": {modules}}}'
    _write(f"{READY_PREFIX}{pid}.json", text)
