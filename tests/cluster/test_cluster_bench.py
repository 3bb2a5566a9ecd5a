"""`agentdispatch bench cluster` end to end on a small scale: every scenario accounts for every dispatch.

No timing assertions: the benchmark measures time, this test checks that what it reports adds up.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agentdispatch.cli.main import cli
from agentdispatch.testing.services import require


def test_bench_cluster_runs_all_three_scenarios_and_accounts_for_every_dispatch(tmp_path: Path) -> None:
    require("redis-server", "redis-server")
    out = tmp_path / "cluster.json"
    args = ["bench", "cluster", "--nodes", "2", "--workers", "6", "--dispatches", "40", "--rate", "0",
            "--concurrency", "4", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cross-node" in result.output
    data = json.loads(out.read_text())
    assert data["benchmark"] == "cluster" and data["git_commit"]
    names = [sc["name"] for sc in data["scenarios"]]
    assert names == ["memory-1", "redis-1", "redis-n"]
    for sc in data["scenarios"]:
        d = sc["dispatches"]
        assert (d["created"], d["assigned"], d["duplicates"], d["errors"]) == (40, 40, 0, 0), sc["name"]
        assert set(sc["cpu"]["node_cpu_ms_per_dispatch"]) == {f"node{i}" for i in range(sc["nodes"])}
    multi = data["scenarios"][2]
    same, cross = multi["same_node_latency_ms"]["n"], multi["cross_node_latency_ms"]["n"]
    assert same + cross == 40 and cross > 0, "with workers on both nodes some jobs cross nodes"
    assert data["scenarios"][0]["cross_node_latency_ms"]["n"] == 0
