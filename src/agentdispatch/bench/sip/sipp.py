"""Run `sipp` (Debian sip-tester) as a UAC and read back what each call saw, from its event log."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...util.aio import wait_for
from .scenarios import CallScenario

SIPP_TIMEOUT = 60.0


@dataclass
class CallTrace:
    """One sipp call: event name → wall time (s), plus the final code and Retry-After it saw."""

    call_id: str
    events: dict[str, float] = field(default_factory=dict)
    status: int = 0
    retry_after: str = ""

    def delay(self, event: str) -> float | None:
        """Seconds from the INVITE to `event`, if both happened."""
        if "invite" not in self.events or event not in self.events:
            return None
        return self.events[event] - self.events["invite"]


@dataclass
class SippRun:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    calls: dict[str, CallTrace]

    def text(self, suffix: str) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"*{suffix}")))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def find_sipp() -> str | None:
    return shutil.which("sipp")


def parse_events(text: str) -> dict[str, CallTrace]:
    calls: dict[str, CallTrace] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "EV":
            continue
        call_id, event = parts[1], parts[2]
        try:
            at = float(parts[3]) + float(parts[4]) / 1e6
        except ValueError:
            continue
        trace = calls.setdefault(call_id, CallTrace(call_id))
        trace.events.setdefault(event, at)
        if event in ("answered", "final") and len(parts) > 5 and parts[5].isdigit():
            trace.status = int(parts[5])
        for extra in parts[6:]:
            if extra.startswith("retry_after="):
                trace.retry_after = extra.split("=", 1)[1]
    return calls


async def run_sipp(
    sipp_bin: str,
    scenario: CallScenario,
    target: str,
    workdir: Path,
    *,
    calls: int = 1,
    rate: float = 1.0,
    limit: int = 1,
    service: str = "+15550100",
    caller: str = "+15551234",
    transport: str = "u1",
    timeout: float = SIPP_TIMEOUT,
    extra: tuple[str, ...] = (),
) -> SippRun:
    """Run one sipp client to completion (at most `timeout` s of calls, then it is killed)."""
    path = workdir / "scenario.xml"
    await asyncio.to_thread(_write, path, scenario.xml())
    args = [
        sipp_bin, target, "-sf", str(path), "-m", str(calls), "-r", str(rate), "-l", str(limit),
        "-i", "127.0.0.1", "-p", "0", "-s", service, "-key", "caller", caller, "-t", transport,
        "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error", "-trace_err", "-trace_logs",
        "-trace_msg", *extra,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await wait_for(proc.communicate(), timeout + 30)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    run = SippRun(
        proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"), workdir, {}
    )
    run.calls = parse_events(await asyncio.to_thread(run.text, "_logs.log"))
    return run
