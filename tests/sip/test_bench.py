"""`agentdispatch bench sip` runs end to end and writes a complete result (numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_sip_writes_a_complete_result(sipp_bin: str, tmp_path: Path) -> None:
    out = tmp_path / "sip.json"
    proc = subprocess.run(
        [sys.executable, "-m", "agentdispatch", "bench", "sip", "--calls", "6", "--rate", "5",
         "--hold", "0.3", "--warmup", "1", "--workers", "1", "--idle", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "sip" and result["environment"]["git_commit"]
    assert result["answered"] == 6 and result["by_status"] == {"200": 6}
    for key in ("invite_to_180_ms", "invite_to_200_ms"):
        assert result[key]["n"] == 6 and 0 < result[key]["p50"] <= result[key]["p99"]
    assert "INVITE -> 200 OK (post-dial delay)" in proc.stdout
