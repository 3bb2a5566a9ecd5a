"""Docs that run: every ```python block in README.md and docs/*.md, run as a reader would run it.

- A block with `cli.run_app(` is an agent file: it is saved to a file, run with `agentdispatch worker dev`
  against a real server, and a dispatch to its agent name must reach a running job (no traceback).
- A block preceded by `<!-- fragment: ... -->` is a piece of a larger program (inside an entrypoint):
  it must parse as the body of an async function.
- Any other block is a script: it runs with `python` against a real server (the README's URL is the
  server's) and must exit 0.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.serverproc import ServerProcess, agentdispatch_command

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*(?P<mark>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)
DOC_URL = "http://127.0.0.1:7880"


def _blocks() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group("mark") or "", m.group("code")))
    return found


BLOCKS = _blocks()


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) >= 3, BLOCKS


@pytest.mark.parametrize(("where", "mark", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
async def test_doc_block_runs_as_written(where: str, mark: str, code: str, tmp_path: Path) -> None:
    if mark.startswith("fragment"):
        ast.parse("async def _fragment(ctx):\n" + textwrap.indent(code, "    "))
        return
    with ServerProcess() as server:
        env = {
            **os.environ,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": "devkey",
            "LIVEKIT_API_SECRET": "secret",
        }
        if "cli.run_app(" in code:
            await _run_agent_file(code, server.url, env, tmp_path)
        else:
            script = code.replace(DOC_URL, server.url)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-"],
                input=script,
                text=True,
                capture_output=True,
                env=env,
                timeout=120,
            )
            assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


async def _run_agent_file(code: str, url: str, env: dict[str, str], tmp_path: Path) -> None:
    names = re.findall(r'agent_name="([^"]*)"', code)
    agent_name = names[0] if names else ""
    path = tmp_path / "agent.py"
    path.write_text(code)
    log = (tmp_path / "worker.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        *agentdispatch_command(),
        "worker",
        "dev",
        str(path),
        "--port",
        "0",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    lk = api.LiveKitAPI(url, "devkey", "secret")
    try:
        req = api.CreateAgentDispatchRequest(agent_name=agent_name, room="docs-room")
        await lk.agent_dispatch.create_dispatch(req)
        status = None
        for _ in range(600):  # bounds a hang only
            [dispatch] = await lk.agent_dispatch.list_dispatch("docs-room")
            jobs = list(dispatch.state.jobs)
            status = jobs[0].state.status if jobs else None
            if status in (agent.JobStatus.JS_RUNNING, agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED):
                break
            await asyncio.sleep(0.1)
        assert status in (agent.JobStatus.JS_RUNNING, agent.JobStatus.JS_SUCCESS), (
            status,
            jobs[0].state.error if jobs else "",
        )
    finally:
        await lk.aclose()
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
        log.close()
    output = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in output, output[-3000:]
