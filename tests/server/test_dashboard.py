"""The dashboard in a real headless Chromium: what an operator sees, read from the rendered DOM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.services import require

SCREENSHOT_ENV = "AGENTDISPATCH_DASHBOARD_SCREENSHOT"


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_js(self, expression: str, what: str, timeout: float = 20.0) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if loop.time() > end:
                body = await self.js("document.body.innerText")
                raise AssertionError(f"the dashboard never showed {what}; it shows:\n{body}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[Page]:
    binary = require("chromium", "chromium")
    profile = tempfile.mkdtemp(prefix="ad-chromium-")
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={profile}", "--window-size=1440,1000", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        port = await _devtools_port(proc)
        async with aiohttp.ClientSession() as http:
            page_ws = await _page_ws(http, port)
            async with http.ws_connect(page_ws, max_msg_size=64 * 1024 * 1024) as ws:
                yield Page(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _devtools_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                raise AssertionError("chromium exited before DevTools listened:\n" + "".join(lines))
            line = raw.decode(errors="replace")
            lines.append(line)
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def _page_ws(http: aiohttp.ClientSession, port: int) -> str:
    async with asyncio.timeout(30):
        while True:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            pages = [t for t in targets if t.get("type") == "page" and "/dashboard" in t.get("url", "")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)


def row_text(attr: str, value: str) -> str:
    return f"(document.querySelector('tr[{attr}=\"{value}\"]') || {{innerText: ''}}).innerText"


@pytest.mark.parametrize("server_config", [{"admin_open_on_loopback": True, "dispatch_deadline": 60.0}])
async def test_the_dashboard_shows_workers_failures_and_new_workers_live(
    harness: Any, tmp_path: Path
) -> None:
    steady = await harness.worker(agent_name="support-agent", load=0.42)
    await steady.report(load=0.42)
    never = api.JobRestartPolicy.JRP_NEVER
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support-agent", room="call-7", restart_policy=never)
    )
    [failed] = await steady.wait_assignments(1)
    await steady.finish(failed.job.id, agent.JobStatus.JS_FAILED, error="entrypoint raised TimeoutError: stt")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="billing-agent", room="call-8")
    )
    await steady.sync()

    async with chromium(harness.server.url + "/dashboard") as page:
        await page.call("Runtime.enable")
        shown = row_text("data-worker-id", steady.id)
        worker_row = await page.wait_js(f"{shown}.includes('42%') && {shown}", "the registered worker's load")
        assert steady.id in worker_row and "support-agent" in worker_row and "available" in worker_row
        failed_row = await page.wait_js(row_text("data-job-id", failed.job.id), "the failed job")
        assert "failed" in failed_row and "entrypoint raised TimeoutError: stt" in failed_row
        waiting = await page.wait_js(row_text("data-agent", "billing-agent"), "the waiting job")
        assert waiting.split("\t")[:2] == ["billing-agent", "1"]
        assert await page.js("document.getElementById('conn-text').textContent") == "live"

        await page.js("window.__not_reloaded = true")
        newcomer = await harness.worker(agent_name="billing-agent")
        new_row = await page.wait_js(row_text("data-worker-id", newcomer.id), "the newly registered worker")
        assert "billing-agent" in new_row
        assert await page.js("window.__not_reloaded === true")  # it arrived over the event stream
        await page.wait_js("!document.querySelector('tr[data-agent=\"billing-agent\"]')", "the job placed")

        shot = await page.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    save_screenshot(png, tmp_path / "dashboard.png")


def save_screenshot(png: bytes, path: Path) -> None:
    """Into the test's tmp dir, and where AGENTDISPATCH_DASHBOARD_SCREENSHOT says (to look at it)."""
    path.write_bytes(png)
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).write_bytes(png)


async def test_the_dashboard_page_is_served_from_the_package(harness: Any) -> None:
    for path, kind in (("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"),
                       ("/dashboard/style.css", "text/css")):  # fmt: skip
        async with harness.http.get(harness.server.url + path) as resp:
            assert (resp.status, resp.content_type) == (200, kind)
    async with harness.http.get(harness.server.url + "/dashboard/..%2Fadmin.py") as resp:
        assert resp.status == 404
    async with harness.http.get(harness.server.url + "/admin/status") as resp:
        assert resp.status == 401  # the page is public, the data is not (no --dev here)


@pytest.mark.parametrize("server_config", [{"admin_token": "ops-secret"}])
async def test_without_dev_the_dashboard_reads_its_token_from_the_url(harness: Any) -> None:
    w = await harness.worker(agent_name="guarded")
    async with chromium(harness.server.url + "/dashboard#token=ops-secret") as page:
        row = await page.wait_js(row_text("data-worker-id", w.id), "the worker, with the token")
        assert "guarded" in row
    async with chromium(harness.server.url + "/dashboard#token=wrong") as page:
        await page.wait_js(
            "((document.getElementById('conn-text') || {}).textContent || '').startsWith('no access')",
            "the refused stream",
        )
        assert await page.js(f"!document.querySelector('tr[data-worker-id=\"{w.id}\"]')")
