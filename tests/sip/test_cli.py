"""`agentdispatch sip`: the server and the gateway in one process, configured from a file."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from livekit import api
from livekit.protocol import sip

from agentdispatch.bench.sip.scenarios import CallScenario
from agentdispatch.bench.sip.sipp import run_sipp

CONFIG = {
    "trunks": [{"sip_trunk_id": "ST_cli", "numbers": ["+15550100"]}],
    "dispatch_rules": [
        {
            "rule": {"dispatch_rule_individual": {"room_prefix": "cli-"}},
            "room_config": {"agents": [{"agent_name": "nobody-runs-this"}]},
        }
    ],
}


async def test_sip_command_serves_calls_and_the_sip_api(sipp_bin: str, tmp_path: Path) -> None:
    config = tmp_path / "sip.json"
    config.write_text(json.dumps(CONFIG))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentdispatch", "sip", "--dev", "--port", "0", "--sip-port", "0",
        "--ringing-timeout", "1", "--final-status", "480", "--retry-after", "7", "--sip-config", str(config),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        banner = ""
        while "SIP on" not in banner:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "agentdispatch sip exited before listening"
            banner = line.decode()
        match = re.search(r"server on (http://\S+); SIP on (\S+:\d+)", banner)
        assert match is not None, banner
        url, target = match.group(1), match.group(2)
        assert "1 trunk(s), 1 dispatch rule(s)" in banner
        run = await run_sipp(sipp_bin, CallScenario(expect=480), target, tmp_path / "s")
        assert run.returncode == 0, run.stderr
        assert [(t.status, t.retry_after) for t in run.calls.values()] == [(480, "7")]
        async with api.LiveKitAPI(url, "devkey", "secret") as lk:
            trunks = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        assert [t.sip_trunk_id for t in trunks.items] == ["ST_cli"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
