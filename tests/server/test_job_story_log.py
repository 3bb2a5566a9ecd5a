"""The server log tells each job's story (issue 10): one line per step with the job's ids, and a warning at
once when a dispatch names an agent no registered worker serves."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent


def _lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == job_id]


async def test_each_step_of_a_job_is_one_log_line_with_its_ids(
    harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentdispatch")  # offered and running are DEBUG lines
    w = await harness.worker(agent_name="story")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="story", room="story-room")
    )
    (assignment,) = await w.wait_assignments(1)
    job_id = assignment.job.id
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await harness.wait_job_status(job_id, agent.JobStatus.JS_SUCCESS)
    lines = _lines(caplog, job_id)
    for step in ("job created", "job offered", "job assigned", "job running", "job ended"):
        assert any(line.startswith(step) for line in lines), (step, lines)
    info = [
        r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == job_id and r.levelno >= 20
    ]
    assert info == ["job created", "job assigned", "job ended"]  # what a server at INFO tells
    ended = next(
        r for r in caplog.records if getattr(r, "job_id", None) == job_id and "ended" in r.getMessage()
    )
    assert (ended.room, ended.agent_name, ended.worker_id) == ("story-room", "story", w.id)  # type: ignore[attr-defined]


async def test_a_dispatch_no_worker_serves_is_warned_about_at_once(
    harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentdispatch")
    await harness.worker(agent_name="billing")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="biling", room="typo-room")  # a typo
    )
    warnings = [r for r in caplog.records if r.getMessage().startswith("no registered worker serves")]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].agent_name == "biling"  # type: ignore[attr-defined]
    assert warnings[0].registered_agent_names == ["billing"]  # type: ignore[attr-defined]
