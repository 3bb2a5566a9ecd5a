"""`agentdispatch bench sip`: sipp places calls at a rate against the gateway; real workers answer them.

One process runs the dispatch server and the SIP gateway (as `agentdispatch sip` does); the workers are
separate processes running `agents/answer_agent.py`; sipp is the caller. Post-dial delay is measured by
sipp itself (wall clock at the INVITE, the 180 and the 200), per call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from livekit.protocol import agent_dispatch, room, sip

from ...protocol import ConfigError
from ...server import DispatchServer, ServerConfig
from ...sip import GatewayConfig, SipGateway
from ...sip.call import CallRecord
from ...testing.serverproc import HarnessError
from ..common.stats import environment, percentile, summarize_ms
from .pcap import tone_frames, write_pcap
from .scenarios import CallScenario
from .sipp import SippRun, find_sipp, run_sipp

AGENT = Path(__file__).parent / "agents" / "answer_agent.py"
Log = Callable[[str], None]


@dataclass(frozen=True)
class SipBenchSettings:
    calls: int = 300
    rate: float = 10.0  # new calls per second
    concurrent: int = 100  # sipp's limit of simultaneous calls
    hold: float = 10.0  # seconds each answered call lasts (caller BYE)
    audio: float = 0.0  # seconds of G.711 the caller sends right after the answer (0 = none); echoed back
    warmup: int = 5  # unmeasured calls first (warm pool)
    workers: int = 2
    idle: int = 4  # num_idle_processes per worker
    ringing_timeout: float = 30.0
    transport: str = "udp"

    def __post_init__(self) -> None:
        if self.calls < 1 or self.rate <= 0 or self.concurrent < 1 or self.workers < 1 or self.idle < 0:
            raise ConfigError("calls, rate, concurrent, workers must be positive; idle >= 0")
        if self.audio < 0 or self.audio > self.hold:
            raise ConfigError("audio must be between 0 and hold seconds")
        if self.hold < 0 or self.warmup < 0 or self.ringing_timeout <= 0:
            raise ConfigError("hold, warmup >= 0 and ringing_timeout > 0")
        if self.transport not in ("udp", "tcp"):
            raise ConfigError("transport is udp or tcp")


def default_json_path(now: float, name: str = "sip") -> Path:
    import time

    return Path("bench/results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.json"


def start_workers(
    count: int, url: str, workdir: Path, extra_env: dict[str, str], name: str = "worker"
) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes running the bench agent against `url` (dev keys)."""
    env = {**os.environ, "LIVEKIT_URL": url, "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}
    env.update(extra_env)
    procs = []
    for i in range(count):
        log = (workdir / f"{name}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(AGENT), "dev"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def agent_rule(number: str, agent_name: str) -> sip.SIPDispatchRuleInfo:
    return sip.SIPDispatchRuleInfo(
        rule=sip.SIPDispatchRule(dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="b-")),
        numbers=[number],
        room_config=room.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name=agent_name)]),
    )


async def start_gateway(
    ringing_timeout: float, numbers: dict[str, str], dispatch_deadline: float | None = None
) -> tuple[DispatchServer, SipGateway]:
    """Server + gateway on free loopback ports; each called number dispatches its agent name."""
    deadline = dispatch_deadline if dispatch_deadline is not None else ringing_timeout + 5
    server = DispatchServer(ServerConfig(port=0, dispatch_deadline=deadline))
    gateway = SipGateway(server, GatewayConfig(port=0, ringing_timeout=ringing_timeout))
    gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="bench"))
    for number, agent_name in numbers.items():
        gateway.directory.add_rule(agent_rule(number, agent_name))
    server.app.router.add_routes(gateway.routes())
    await server.start()
    await gateway.start()
    return server, gateway


async def wait_registered(server: DispatchServer, count: int, procs: list[subprocess.Popen[bytes]]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while len(list(server.registry)) < count:
        if loop.time() > end or any(p.poll() is not None for p in procs):
            raise HarnessError("workers did not register; see the worker logs (--workdir)")
        await asyncio.sleep(0.1)


def _scenario(settings: SipBenchSettings, workdir: Path) -> CallScenario:
    if not settings.audio:
        return CallScenario(hold_ms=int(settings.hold * 1000))
    pcap = workdir / "caller.pcap"
    write_pcap(pcap, tone_frames(int(settings.audio * 50)))
    return CallScenario(hold_ms=int(settings.hold * 1000), pcap=str(pcap), payloads="0")


def audio_summary(run: SippRun, history: list[CallRecord], frames: int) -> dict[str, Any]:
    """Per measured call: frames the gateway relayed to the room (from the caller) and back to the caller."""
    measured = [r for r in history if r.sip_call_id in run.calls and r.final_status == 200]
    if not frames or not measured:
        return {}
    to_room = sorted(r.rtp_in / frames for r in measured)
    to_caller = sorted(r.rtp_out / frames for r in measured)
    return {
        "frames_sent_per_call": frames,
        "calls": len(measured),
        "to_room_ratio": {"min": round(to_room[0], 3), "p50": round(percentile(to_room, 50), 3)},
        "to_caller_ratio": {"min": round(to_caller[0], 3), "p50": round(percentile(to_caller, 50), 3)},
    }


def summarize(run: SippRun, calls: int) -> dict[str, Any]:
    traces = list(run.calls.values())
    statuses = Counter(t.status for t in traces)
    ringing = [d for t in traces if (d := t.delay("ringing")) is not None]
    answered = [d for t in traces if t.status == 200 and (d := t.delay("answered")) is not None]
    failed = [d for t in traces if t.status not in (0, 200) and (d := t.delay("final")) is not None]
    return {
        "calls": calls,
        "seen_by_sipp": len(traces),
        "answered": statuses.get(200, 0),
        "by_status": {str(k or "no answer"): v for k, v in sorted(statuses.items())},
        "invite_to_180_ms": summarize_ms(ringing),
        "invite_to_200_ms": summarize_ms(answered),
        "invite_to_final_error_ms": summarize_ms(failed),
        "sipp_exit_code": run.returncode,
    }


async def _bench(settings: SipBenchSettings, sipp_bin: str, workdir: Path, log: Log) -> dict[str, Any]:
    server = DispatchServer(ServerConfig(port=0, dispatch_deadline=settings.ringing_timeout + 5))
    gateway = SipGateway(server, GatewayConfig(port=0, ringing_timeout=settings.ringing_timeout))
    gateway.directory.add_trunk(sip.SIPInboundTrunkInfo(name="bench"))
    gateway.directory.add_rule(
        sip.SIPDispatchRuleInfo(
            rule=sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="b-")
            ),
            room_config=room.RoomConfiguration(
                agents=[agent_dispatch.RoomAgentDispatch(agent_name="bench-sip")]
            ),
        )
    )
    server.app.router.add_routes(gateway.routes())
    await server.start()
    await gateway.start()
    target = f"127.0.0.1:{gateway.port}"
    procs = start_workers(settings.workers, server.ws_url, workdir, {"BENCH_SIP_IDLE": str(settings.idle)})
    try:
        await wait_registered(server, settings.workers, procs)
        transport = "u1" if settings.transport == "udp" else "t1"
        if settings.warmup:
            log(f"warm-up: {settings.warmup} calls")
            await run_sipp(sipp_bin, CallScenario(hold_ms=200), target, workdir / "warmup",
                           calls=settings.warmup, rate=settings.rate, limit=settings.concurrent,
                           transport=transport)  # fmt: skip
        duration = settings.calls / settings.rate + settings.hold + settings.ringing_timeout
        log(f"measuring: {settings.calls} calls at {settings.rate:g}/s, {settings.hold:g} s each")
        load_before = os.getloadavg()
        run = await run_sipp(
            sipp_bin, _scenario(settings, workdir), target, workdir / "measure",
            calls=settings.calls, rate=settings.rate, limit=settings.concurrent, transport=transport,
            timeout=duration + 60,
        )  # fmt: skip
        gateway_status = {str(k): v for k, v in sorted(gateway.statistics().by_status.items())}
        audio = audio_summary(run, list(gateway.history), int(settings.audio * 50))
        load_after = os.getloadavg()
    finally:
        stop_workers(procs)
        await gateway.aclose()
        await server.aclose()
    result = {
        "benchmark": "sip",
        "settings": asdict(settings),
        "environment": environment(),
        **summarize(run, settings.calls),
        "audio": audio,  # {} without --audio
        "gateway_final_status": gateway_status,  # the gateway's view, warm-up calls included
        # the machine's 1/5/15-minute load averages around the measured phase (other processes count too)
        "machine_load": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
        },
    }
    return result


def run_sip_bench(
    settings: SipBenchSettings, log: Log = print, workdir: Path | None = None
) -> dict[str, Any]:
    sipp_bin = find_sipp()
    if sipp_bin is None:
        raise HarnessError("sipp not found: apt-get install sip-tester")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_bench(settings, sipp_bin, workdir, log))
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as tmp:
        return asyncio.run(_bench(settings, sipp_bin, Path(tmp), log))
