"""migrate_job: who may keep a job, every combination of key, agent name, type, deployment and holder."""

from __future__ import annotations

from typing import Any

import pytest
from livekit.protocol import agent, models

from agentdispatch.server.migration import Owner, bare_job, key_matches, migrate_refusal
from agentdispatch.server.session import Registration, SessionState, WorkerSession

JT_ROOM, JT_PUBLISHER = agent.JobType.JT_ROOM, agent.JobType.JT_PUBLISHER


class _OpenWs:
    closed = False


def _worker(api_key: str = "k1", name: str = "a", job_type: int = JT_ROOM, deployment: str = "") -> Any:
    w = WorkerSession(_OpenWs(), api_key)  # type: ignore[arg-type]
    w.reg = Registration(name, "", job_type, deployment, "v", 30.0, models.ParticipantPermission())
    w.transition(SessionState.REGISTERED)
    return w


def _job(deployment: str = "", status: int = agent.JobStatus.JS_RUNNING) -> agent.Job:
    job = agent.Job(id="AJ_x", agent_name="a", type=JT_ROOM, deployment=deployment)
    job.state.status = status  # type: ignore[assignment]
    return job


OWNER = Owner("k1", ("a", "", JT_ROOM, ""))


@pytest.mark.parametrize(
    ("worker_kw", "job_kw", "owner", "holder_open", "refused"),
    [
        ({}, {}, OWNER, False, None),  # the owner reconnecting keeps it
        ({}, {}, None, False, None),  # a node that lost the owner record: same key fields suffice
        ({"api_key": "k2"}, {}, OWNER, False, "another API key"),
        ({"name": "b"}, {}, OWNER, False, "another agent name"),
        ({"job_type": JT_PUBLISHER}, {}, OWNER, False, "another agent name / job type"),
        ({"deployment": "blue"}, {"deployment": "green"}, OWNER, False, "deployment"),
        ({"deployment": "blue"}, {}, OWNER, False, None),  # a job without deployment matches any
        ({}, {}, OWNER, True, "runs on connected worker"),  # never two at once
        ({}, {"status": agent.JobStatus.JS_SUCCESS}, OWNER, False, "already ended"),
    ],
)
def test_migrate_refusal(
    worker_kw: dict[str, Any],
    job_kw: dict[str, Any],
    owner: Owner | None,
    holder_open: bool,
    refused: str | None,
) -> None:
    holder = _worker() if holder_open else None
    answer = migrate_refusal(_worker(**worker_kw), _job(**job_kw), owner, holder)
    if refused is None:
        assert answer is None
    else:
        assert answer is not None and refused in answer, answer


def test_unknown_job_is_refused_and_bare_records_only_for_plausible_ids() -> None:
    assert migrate_refusal(_worker(), None, None, None) == "unknown job"
    reg = _worker(name="bare").registration
    job = bare_job("AJ_abc", reg)
    assert job is not None and key_matches(reg, job) and job.agent_name == "bare"
    assert bare_job("not-a-job-id", reg) is None
    assert bare_job("AJ_" + "x" * 100, reg) is None
