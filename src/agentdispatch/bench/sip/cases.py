"""`agentdispatch bench sip --cases`: what a caller hears in each case, in seconds, with the default settings.

Every case is one real call (sipp) against one gateway; the cases run at the same time, each with its
own called number, agent name and worker process:

- free: a warm worker with capacity;
- no worker: nobody serves the agent name;
- FULL: the worker's load_fnc returns 1.5 (> 1, above its threshold 0.7) for the whole call;
- busy, then free: the load drops to 0 `free_after` seconds after the INVITE;
- caller hangs up: the caller CANCELs after `cancel_after` seconds of ringing (the worker is FULL).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...server import DispatchServer
from .run import start_gateway, start_workers, stop_workers, wait_registered
from .scenarios import CallScenario
from .sipp import run_sipp


@dataclass(frozen=True)
class Case:
    name: str
    number: str
    agent: str
    scenario: CallScenario
    worker_env: dict[str, str] | None  # None: no worker for this agent name


def cases(free_after: float, cancel_after: float) -> list[Case]:
    full = {"BENCH_SIP_LOAD": "1.5"}
    return [
        Case("worker available (warm)", "+15550001", "free", CallScenario(hold_ms=500), {}),
        Case("no worker for the agent", "+15550002", "nobody", CallScenario(expect=503), None),
        Case("worker FULL (load 1.5 > threshold 0.7)", "+15550003", "full", CallScenario(expect=503), full),
        Case(
            f"worker FULL, free after {free_after:g} s",
            "+15550004",
            "busy",
            CallScenario(hold_ms=500),
            {**full, "BENCH_SIP_FREE_FILE": "{free_file}"},
        ),
        Case(
            f"caller hangs up after {cancel_after:g} s",
            "+15550005",
            "full2",
            CallScenario(cancel_ms=int(cancel_after * 1000)),
            full,
        ),
    ]


async def _one(case: Case, target: str, workdir: Path, sipp_bin: str, timeout: float) -> dict[str, Any]:
    run = await run_sipp(
        sipp_bin,
        case.scenario,
        target,
        workdir / case.agent,
        service=case.number,
        caller=case.number,
        timeout=timeout,
    )
    (trace,) = run.calls.values() if len(run.calls) == 1 else (None,)
    if trace is None:
        return {"case": case.name, "error": f"sipp exit {run.returncode}"}
    end = trace.delay("answered") if trace.status == 200 else trace.delay("final")
    return {
        "case": case.name,
        "ringing_after_s": trace.delay("ringing"),
        "final_status": trace.status,
        "final_after_s": end,
        "retry_after": trace.retry_after or None,
        "cancel_sent_after_s": trace.delay("cancel_sent"),
        "sipp_ok": run.returncode == 0,
    }


SETTLE = 3.0  # seconds after registration: every worker has sent a load report (FULL ones are FULL)


async def run_cases(
    sipp_bin: str, workdir: Path, ringing_timeout: float, free_after: float, cancel_after: float
) -> list[dict[str, Any]]:
    todo = cases(free_after, cancel_after)
    server: DispatchServer
    server, gateway = await start_gateway(ringing_timeout, {c.number: c.agent for c in todo})
    free_file = workdir / "busy-worker-is-free"  # the busy worker's load drops to 0 once this exists
    procs = []
    try:
        for case in todo:
            if case.worker_env is not None:
                env = {k: v.format(free_file=free_file) for k, v in case.worker_env.items()}
                env.update(BENCH_SIP_AGENT=case.agent, BENCH_SIP_IDLE="1")
                procs += start_workers(1, server.ws_url, workdir, env, case.agent)
        await wait_registered(server, len(procs), procs)
        await asyncio.sleep(SETTLE)
        target = f"127.0.0.1:{gateway.port}"
        timeout = ringing_timeout + 30
        calls = asyncio.gather(*(_one(c, target, workdir, sipp_bin, timeout) for c in todo))
        busy = next(c for c in todo if "BENCH_SIP_FREE_FILE" in (c.worker_env or {}))
        while not any(r.room.startswith(f"b-{busy.number}_") for r in gateway.active_calls()):  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # the busy case's INVITE has arrived: its clock starts
        await asyncio.sleep(free_after)
        await asyncio.to_thread(free_file.touch)
        results = await calls
    finally:
        stop_workers(procs)
        await gateway.aclose()
        await server.aclose()
    return list(results)


def run_sip_cases(
    ringing_timeout: float,
    free_after: float,
    cancel_after: float,
    log: Any = print,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The caller-experience run: one call per case, a result with the settings and the environment."""
    import tempfile

    from ...testing.serverproc import HarnessError
    from ..common.stats import environment
    from .sipp import find_sipp

    sipp_bin = find_sipp()
    if sipp_bin is None:
        raise HarnessError("sipp not found: apt-get install sip-tester")
    log(f"one call per case; ringing timeout {ringing_timeout:g} s")
    settings = {"ringing_timeout": ringing_timeout, "free_after": free_after, "cancel_after": cancel_after}
    with tempfile.TemporaryDirectory(prefix="bench-sip-cases-") as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(run_cases(sipp_bin, where, ringing_timeout, free_after, cancel_after))
    return {"benchmark": "sip-cases", "settings": settings, "environment": environment(), "cases": rows}
