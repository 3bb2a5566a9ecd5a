"""The server's /metrics: what Prometheus sees as jobs wait, run and fail and workers come and go."""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.parse
from asyncio.subprocess import DEVNULL, PIPE, STDOUT
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent
from prometheus_client.parser import text_string_to_metric_families

from agentdispatch.testing.serverproc import free_port
from agentdispatch.testing.services import require


async def scrape(harness: Any) -> str:
    async with harness.http.get(harness.server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` (labels must match exactly those given), or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def wait_metric(harness: Any, predicate: Any, what: str) -> str:
    """Scrape until `predicate(text)` holds (each scrape is a fresh read of the live server)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 10.0
    while True:
        text = await scrape(harness)
        if predicate(text):
            return text
        if loop.time() > end:
            raise AssertionError(f"/metrics never showed {what}:\n{text}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 30.0}])
async def test_waiting_jobs_then_stage_latency_once_a_worker_takes_them(harness: Any) -> None:
    for room in ("m-1", "m-2"):
        await harness.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="metered", room=room)
        )
    text = await scrape(harness)
    assert value(text, "agentdispatch_jobs_waiting", agent_name="metered") == 2
    assert value(text, "agentdispatch_jobs_created_total", agent_name="metered") == 2
    assert (value(text, "agentdispatch_jobs_oldest_wait_seconds", agent_name="metered") or 0) > 0
    assert value(text, "agentdispatch_desired_workers", agent_name="metered") == 1

    w = await harness.worker(agent_name="metered")
    await w.wait_assignments(2)
    await w.sync()
    text = await wait_metric(
        harness,
        lambda t: value(t, "agentdispatch_jobs_running", agent_name="metered") == 2,
        "2 running jobs",
    )
    assert value(text, "agentdispatch_jobs_waiting", agent_name="metered") == 0
    count = "agentdispatch_dispatch_stage_seconds_count"
    for stage in ("created_to_offered", "offered_to_accepted", "accepted_to_running", "created_to_running"):
        assert value(text, count, agent_name="metered", stage=stage) == 2, stage
    assert value(text, "agentdispatch_offers_total", agent_name="metered", result="accepted") == 2
    assert value(text, "agentdispatch_workers", agent_name="metered", state="available") == 1
    assert value(text, "agentdispatch_workers_registered_total", agent_name="metered") == 1
    assert value(text, "agentdispatch_fleet_worker_load_bucket", agent_name="metered", le="+Inf") == 1
    assert value(text, "agentdispatch_server_info", node=harness.server.node_id) == 1


async def test_failed_jobs_count_by_bounded_reason_never_by_id(harness: Any) -> None:
    # no worker for this agent: the job ends at the (short) dispatch deadline
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="nobody", room="r")
    )
    text = await wait_metric(
        harness,
        lambda t: value(t, "agentdispatch_jobs_ended_total", agent_name="nobody", outcome="failed") == 1,
        "the failed job",
    )
    assert value(text, "agentdispatch_jobs_ended_total", agent_name="nobody", outcome="failed",
                 reason="no_capacity") == 1  # fmt: skip
    [job] = await harness.list_jobs("r")
    assert job.id not in text and job.dispatch_id not in text and '"r"' not in text


async def test_declined_offers_and_full_available_transitions_are_counted(harness: Any) -> None:
    picky = await harness.worker(agent_name="picky", policy="reject")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="picky", room="p")
    )
    await picky.wait_offers(1)
    await picky.report(status=agent.WorkerStatus.WS_FULL, load=1.0)
    await picky.sync()
    await picky.report(status=agent.WorkerStatus.WS_AVAILABLE, load=0.2)
    await picky.sync()
    text = await wait_metric(
        harness,
        lambda t: (
            value(t, "agentdispatch_worker_status_transitions_total", agent_name="picky", to="available") == 1
        ),
        "FULL -> AVAILABLE",
    )
    assert value(text, "agentdispatch_offers_total", agent_name="picky", result="declined") >= 1  # type: ignore[operator]
    assert value(text, "agentdispatch_worker_status_transitions_total", agent_name="picky", to="full") == 1


async def test_two_servers_in_one_process_keep_their_own_metrics(harness: Any, make_harness: Any) -> None:
    other = await make_harness()
    await harness.worker(agent_name="only-here")
    await harness.wait_for(lambda: len(harness.server.ops.observer.workers()) == 1, what="worker seen")
    assert (
        value(await scrape(harness), "agentdispatch_workers", agent_name="only-here", state="available") == 1
    )
    assert (
        value(await scrape(other), "agentdispatch_workers", agent_name="only-here", state="available") is None
    )


async def test_promtool_accepts_the_server_metrics(harness: Any) -> None:
    promtool = require("promtool", "prometheus")
    await harness.worker(agent_name="linted")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="linted", room="l")
    )
    [w] = harness.workers
    await w.wait_assignments(1)
    await w.sync()
    text = await scrape(harness)
    assert "agentdispatch_dispatch_stage_seconds_bucket" in text
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, out.decode()


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 120.0}])
async def test_prometheus_scrapes_the_waiting_jobs_gauge(harness: Any) -> None:
    prometheus = require("prometheus", "prometheus")
    for room in ("q-1", "q-2", "q-3"):
        await harness.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="unstaffed", room=room)
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ad-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: agentdispatch\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{harness.server.port}']}}]\n"
        )
        log_path = Path(tmp) / "prometheus.log"
        log_file = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=DEVNULL,
            stderr=log_file,
        )
        try:
            result = await _query_until_positive(
                f"http://127.0.0.1:{port}",
                'agentdispatch_jobs_waiting{agent_name="unstaffed"}',
                proc,
                log_path,
            )
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log_file.close()
    assert result == 3.0


async def _query_until_positive(
    base: str, query: str, proc: asyncio.subprocess.Process, log_path: Path
) -> float:
    url = f"{base}/api/v1/query?query={urllib.parse.quote(query)}"
    loop = asyncio.get_running_loop()
    end = loop.time() + 60.0
    last = ""
    async with aiohttp.ClientSession() as http:
        while loop.time() < end:
            if proc.returncode is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}; its log: {log_path}")
            try:
                async with http.get(url) as resp:
                    last = await resp.text()
                    doc = json.loads(last)
                    results = doc.get("data", {}).get("result", [])
                    if results and float(results[0]["value"][1]) > 0:
                        return float(results[0]["value"][1])
            except aiohttp.ClientConnectionError:
                pass  # not listening yet
            await asyncio.sleep(0.25)
    raise AssertionError(f"prometheus never returned {query} > 0; last answer {last}")


async def test_a_repeated_running_report_is_measured_once(harness: Any) -> None:
    w = await harness.worker(agent_name="chatty")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="chatty", room="c")
    )
    [a] = await w.wait_assignments(1)
    for _ in range(3):
        await w.finish(a.job.id, agent.JobStatus.JS_RUNNING)
    await w.sync()
    text = await scrape(harness)
    count = "agentdispatch_dispatch_stage_seconds_count"
    assert value(text, count, agent_name="chatty", stage="created_to_running") == 1
    assert value(text, count, agent_name="chatty", stage="accepted_to_running") == 1
