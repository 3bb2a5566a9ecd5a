"""`agentdispatch bench chaos --nodes 3 --kill-node`, run small: a real redis-server, three real nodes
behind a real haproxy (the shipped config), four real worker processes connected through it; one node
SIGKILLed, one worker SIGKILLed, two job processes SIGKILLed.

It must account for every dispatch (none lost, none run twice at once), the node kill must really have
happened (the node's pid gone, its exit -9) and really moved work: the workers it held came back through
haproxy and their jobs were seen on their new worker ids (migrated) or restarted elsewhere.

A second run kills the node's workers with it (`--node-kill-workers`, the machine died): a survivor
must take the node over and re-dispatch their jobs, still none lost and none run twice at once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentdispatch.bench.chaos.fleet import WorkerProc
from agentdispatch.bench.chaos.model import ChaosSettings
from agentdispatch.bench.chaos.nodekill import HeldWorker, NodeKillWatch
from agentdispatch.bench.chaos.record import Attempt
from agentdispatch.bench.chaos.servers import HAPROXY_CFG, haproxy_config
from agentdispatch.protocol import ConfigError
from agentdispatch.testing.services import HaproxyProcess, require

DISPATCHES = 80
NODES = 3


Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def _run_cluster(out: Path, *extra: str, dispatches: int = DISPATCHES, worker_kills: int = 1) -> Run:
    require("redis-server", "redis-server")
    require("haproxy", "haproxy")
    json_path = out / "chaos.json"
    args = ["--nodes", str(NODES), "--kill-node", "--workers", "4", "--dispatches", str(dispatches)]
    args += ["--worker-kills", str(worker_kills), "--job-kills", "2", "--seed", "11", "--max-duration", "3"]
    args += ["--end-timeout", "45", "--json", str(json_path), *extra]
    command = [sys.executable, "-m", "agentdispatch", "bench", "chaos", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            popen.send_signal(signal.SIGTERM)  # the benchmark stops workers, nodes, haproxy, redis
            stdout, stderr = popen.communicate(timeout=60)
    proc = subprocess.CompletedProcess(command, popen.returncode, stdout, stderr)
    assert json_path.exists(), proc.stdout + proc.stderr[-3000:]
    return proc, json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run_cluster(tmp_path_factory.mktemp("chaos-cluster"))


@pytest.mark.timeout(240)
def test_cluster_chaos_with_a_node_kill_loses_nothing_and_runs_nothing_twice(
    cluster_run: Run,
) -> None:
    proc, result = cluster_run
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    counts = result["dispatches"]["counts"]
    assert (result["lost"], result["double_run"], result["ok"]) == (0, 0, True), result["dispatches"]
    assert counts["total"] == DISPATCHES and result["dispatches"]["not_created"] == 0
    assert counts["success"] + counts["failed_with_reason"] == DISPATCHES, counts
    assert result["integrity"]["survivors"] == [] and result["integrity"]["unexplained_attempt_ends"] == []
    assert result["integrity"]["success_without_finished_attempt"] == []
    assert result["workers"]["unexpected_exits"] == []
    assert "node SIGKILL" in proc.stdout and "double-run" in proc.stdout  # the table was printed


@pytest.mark.timeout(240)
def test_the_node_kill_really_happened_and_moved_work(
    cluster_run: Run,
) -> None:
    _, result = cluster_run
    cluster = result["server"]["cluster"]
    (killed,) = cluster["killed"]
    assert killed["exit_code"] == -signal.SIGKILL and not psutil.pid_exists(killed["pid"])
    survivors = [i for i in range(NODES) if i != killed["index"]]
    assert [cluster["exit_codes"][i] for i in survivors] == [0] * len(survivors)
    nk = result["node_kill"]
    assert nk["node"] == killed["index"] and nk["workers_on_node"] >= 1 and nk["jobs_on_node"] >= 1
    assert nk["workers_reconnected"] >= 1, nk["details"]
    assert nk["jobs_moved"] + nk["restarted"] >= 1, nk["details"]
    assert nk["job_moved_ms"]["n"] == nk["jobs_moved"]
    for move in nk["details"]["jobs"]:  # a moved job is on a worker id of a reconnected worker
        if move["moved_at"] is not None:
            assert move["new_worker"] != move["old_worker"]


@pytest.mark.timeout(240)
def test_dispatches_entered_through_every_node_and_workers_came_through_haproxy(
    cluster_run: Run,
) -> None:
    _, result = cluster_run
    cluster = result["server"]["cluster"]
    created = [Path(n["log"]).read_text().count("dispatch created") for n in cluster["nodes"]]
    assert all(n > 0 for n in created) and sum(created) == DISPATCHES, created
    haproxy_log = Path(cluster["haproxy_log"]).read_text()
    # haproxy saw the killed node go down (its health check on GET /)
    assert re.search(rf"node{cluster['killed'][0]['index'] + 1} is DOWN", haproxy_log), haproxy_log[-2000:]
    assert result["kills"]["worker"]["done"] == 1


@pytest.mark.timeout(240)
def test_a_node_killed_with_its_workers_has_their_jobs_run_again_by_a_survivor_never_twice(
    tmp_path: Path,
) -> None:
    """The machine of a node dies: the node and the workers connected to it are SIGKILLed together.
    Nothing can migrate; a survivor takes the dead node over (its lease lapses) and re-dispatches the
    jobs after the reconnect grace, to the other workers. None lost, none running twice at once."""
    proc, result = _run_cluster(tmp_path, "--node-kill-workers", dispatches=60, worker_kills=0)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert (result["lost"], result["double_run"]) == (0, 0), (result["double_runs"], result["dispatches"])
    nk = result["node_kill"]
    assert nk["workers_killed_with_node"] and nk["workers_on_node"] >= 1 and nk["jobs_on_node"] >= 1
    assert nk["workers_reconnected"] == 0 and nk["migrated"] == 0
    assert nk["restarted"] >= 1, nk["details"]
    killed_workers = [k for k in result["kills"]["worker"]["details"] if k["by"] == "node-kill"]
    assert len(killed_workers) == nk["workers_on_node"]
    assert all(k["survivors"] == [] for k in killed_workers)  # every job process died with its worker
    # (resume n can be below `restarted`: a job assigned but whose process had not started yet when its
    # worker died left no killed attempt to resume from)
    assert result["integrity"]["survivors"] == [] and result["integrity"]["unexplained_attempt_ends"] == []


def test_the_haproxy_config_for_n_nodes_is_the_shipped_one_with_n_server_lines() -> None:
    binary = require("haproxy", "haproxy")
    config = haproxy_config(HAPROXY_CFG.read_text(), 5)
    servers = [line.split()[1] for line in config.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"node{k}" for k in range(1, 6)]
    assert "http-check send meth GET uri /" in config and "timeout tunnel" in config
    env = {"AD_BIND": "127.0.0.1:7880"} | {f"AD_NODE{k}": f"10.0.0.{k}:7880" for k in range(1, 6)}
    proxy = HaproxyProcess(config, 7880, binary, env)
    try:
        proxy.check()  # haproxy -c accepts it
    finally:
        proxy.close()


def test_a_node_kill_report_tells_migrated_restarted_and_ended_first_apart() -> None:
    worker = WorkerProc(0, subprocess.Popen(["true"]), "http://127.0.0.1:9", 0.0)
    worker.popen.wait()
    held = [HeldWorker(worker, "AW_old", {"AJ_a": "r-a", "AJ_b": "r-b", "AJ_c": "r-c", "AJ_d": "r-d"})]
    watch = NodeKillWatch.of(1, 4242, 100.0, 40, held)
    moves = {m.job_id: m for m in watch.jobs}
    moves["AJ_a"].moved_at, moves["AJ_a"].new_worker = 100.4, "AW_new"  # kept by migrate_job
    moves["AJ_b"].moved_at, moves["AJ_b"].new_worker = 103.0, "AW_other"  # re-dispatched
    moves["AJ_c"].ended_before_moved = True
    attempts = [
        Attempt("AJ_a", 10, 99.0, 101.0),
        Attempt("AJ_b", 11, 99.0, None),
        Attempt("AJ_b", 12, 102.9, 104.0),
    ]
    report = watch.report(attempts)
    assert (report["jobs_on_node"], report["jobs_moved"], report["migrated"], report["restarted"]) == (
        4,
        2,
        1,
        1,
    )
    assert report["ended_before_moved"] == 1 and report["not_seen_moved"] == ["AJ_d"]
    assert report["job_moved_ms"]["min"] == pytest.approx(400) and report["job_moved_ms"][
        "max"
    ] == pytest.approx(3000)
    assert report["workers_reconnected"] == 0 and report["worker_reconnect_ms"]["n"] == 0
    json.dumps(report, allow_nan=False)


def test_kill_node_needs_a_cluster() -> None:
    with pytest.raises(ConfigError):
        ChaosSettings(kill_node=True)
    assert ChaosSettings(nodes=3, kill_node=True).nodes == 3
    proc = subprocess.run(
        [sys.executable, "-m", "agentdispatch", "bench", "chaos", "--kill-node"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "kill_node needs nodes >= 2" in proc.stderr
