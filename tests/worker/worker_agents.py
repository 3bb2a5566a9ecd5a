"""Entrypoints and prewarm functions run inside real job processes by the worker tests.

Jobs report what they saw by writing JSON to the file named in the dispatch metadata ({"out": path}).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentdispatch import JobContext, JobProcess


def record(ctx: JobContext, **data: Any) -> None:
    meta = json.loads(ctx.job.metadata or "{}")
    out = meta.get("out")
    if out:
        tmp = Path(out + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "job_id": ctx.job.id, **data}))
        tmp.replace(out)


def prewarm_userdata(proc: JobProcess) -> None:
    proc.userdata["prewarmed_in"] = proc.pid
    proc.userdata["model"] = "loaded"


def prewarm_hang(proc: JobProcess) -> None:
    time.sleep(3600)


def gate_path() -> Path:
    """A file the test creates to let `prewarm_gated` finish (per process group: the test run's)."""
    return Path(f"/tmp/agentdispatch-test-gate-{os.getpgrp()}")


def prewarm_gated(proc: JobProcess) -> None:
    deadline = time.monotonic() + 60
    while not gate_path().exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def prewarm_fail(proc: JobProcess) -> None:
    raise RuntimeError("model file missing")


async def entry_record(ctx: JobContext) -> None:
    participant = ctx.participant.identity if ctx.participant is not None else None
    logging.getLogger("test.agent").info("recording job", extra={"marker": "from-the-job"})
    record(
        ctx,
        userdata=dict(ctx.proc.userdata),
        worker_id=ctx.worker_id,
        room=ctx.room.name,
        participant=participant,
        job_type=ctx.job.type,
    )


async def entry_with_callbacks(ctx: JobContext) -> None:
    """Waits for shutdown; its callbacks (sync with reason, async without) record that they ran."""
    meta = json.loads(ctx.job.metadata or "{}")
    calls: list[str] = []

    def sync_cb(reason: str) -> None:
        calls.append(f"sync:{reason}")

    async def async_cb() -> None:
        await asyncio.sleep(0)
        calls.append("async")
        Path(meta["out"] + ".callbacks").write_text(json.dumps(calls))  # noqa: ASYNC240 - tiny test file

    ctx.add_shutdown_callback(sync_cb)
    ctx.add_shutdown_callback(async_cb)
    record(ctx, state="running")
    await ctx.wait_for_shutdown()


async def entry_wait(ctx: JobContext) -> None:
    """Runs until the worker asks it to stop."""
    record(ctx, state="running")
    reason = await ctx.wait_for_shutdown()
    record(ctx, state="stopped", reason=reason)


async def entry_sleep(ctx: JobContext) -> None:
    """Runs for metadata["seconds"], then ends on its own."""
    seconds = float(json.loads(ctx.job.metadata or "{}").get("seconds", 1.0))
    record(ctx, state="running")
    await asyncio.sleep(seconds)
    record(ctx, state="finished")


async def entry_crash(ctx: JobContext) -> None:
    raise RuntimeError("kaboom: the agent crashed on purpose")


async def entry_ignore_shutdown(ctx: JobContext) -> None:
    """Ignores the shutdown request and SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(ctx, state="ignoring")
    while True:
        time.sleep(1)  # noqa: ASYNC251 - on purpose: the shutdown request is never processed


HOG = (
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "block = b'x' * (int(sys.argv[2]) << 20)\n"
    "time.sleep(60)\n"
)
SPAWN_GRANDCHILD = (
    "import signal, subprocess, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]]).wait()\n"
)


async def entry_memory_hog(ctx: JobContext) -> None:
    """A child whose own child allocates metadata["mb"] MB after metadata["delay"] s; ignores shutdown."""
    meta = json.loads(ctx.job.metadata or "{}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(  # noqa: ASYNC220 - on purpose: blocks like a misbehaving agent
        [sys.executable, "-c", SPAWN_GRANDCHILD, HOG, str(meta.get("delay", 1.0)), str(meta.get("mb", 300))]
    )
    record(ctx, state="spawned", child=child.pid)
    child.wait()  # blocking: the graceful request cannot be handled


async def entry_leave_child(ctx: JobContext) -> None:
    """Starts a long-running subprocess and returns without stopping it."""
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(600)")
    record(ctx, child=child.pid)


async def entry_child_and_wait(ctx: JobContext) -> None:
    """Starts a subprocess in its own session (outside the job's process group), then waits."""
    child = subprocess.Popen(  # noqa: ASYNC220 - a quick start, on purpose without asyncio
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    record(ctx, state="running", child=child.pid)
    await ctx.wait_for_shutdown()


async def entry_noop(ctx: JobContext) -> None:
    return None


PR_GET_PDEATHSIG = 2


async def entry_pdeathsig(ctx: JobContext) -> None:
    """Records the parent-death signal the job process armed (Linux), then runs until stopped."""
    import ctypes

    value = ctypes.c_int(-1)
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    record(ctx, state="running", pdeathsig=value.value, ppid=os.getppid())
    await ctx.wait_for_shutdown()


async def entry_choose(ctx: JobContext) -> None:
    """Runs `entry_<metadata["do"]>` (default: entry_sleep): one agent file, several behaviours."""
    do = json.loads(ctx.job.metadata or "{}").get("do", "sleep")
    await globals()[f"entry_{do}"](ctx)
