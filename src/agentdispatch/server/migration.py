"""Who may keep a job after a reconnect (migrate_job), as pure rules; the Dispatcher applies them.

A job stays with a worker that reports it only when that worker has the same API key (the token's
issuer) and the same worker key (agent name, namespace, job type, deployment) as the worker it was
assigned to, and no other connected worker holds it. A job the node has no record of (it restarted)
is adopted: from its description in `MigrateJobRequest.jobs`, or as a bare record from its id.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import agent, agent_dispatch

from ..protocol import ids
from .session import Registration, WorkerKey, WorkerSession

ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED)
#: job ids looked at per migrate_job message (a worker runs far fewer jobs than this)
MAX_MIGRATE = 1000
MAX_JOB_ID = 64


@dataclass(frozen=True)
class Owner:
    """Who holds a running job: only the same API key and worker key may migrate it."""

    api_key: str
    worker_key: WorkerKey


def key_matches(reg: Registration, job: agent.Job) -> bool:
    return (
        job.agent_name == reg.agent_name
        and job.namespace == reg.namespace
        and job.type == reg.job_type
        and (not job.deployment or job.deployment == reg.deployment)
    )


def migrate_refusal(
    worker: WorkerSession, job: agent.Job | None, owner: Owner | None, holder: WorkerSession | None
) -> str | None:
    """None when `worker` may keep `job`; otherwise why not (logged, answered with JobTermination)."""
    if job is None:
        return "unknown job"
    if job.state.status in ENDED:
        return "job already ended"
    if not key_matches(worker.registration, job):
        return "job belongs to another agent name / job type / deployment"
    if owner is not None and owner.api_key != worker.api_key:
        return "job was assigned to a worker of another API key"
    if holder is not None and holder is not worker and holder.is_open:
        return f"job runs on connected worker {holder.id}"
    return None


def bare_job(job_id: str, reg: Registration) -> agent.Job | None:
    """The record of a job known only by its id (livekit-agents migrates ids), or None if implausible."""
    if not job_id.startswith(ids.JOB) or len(job_id) > MAX_JOB_ID:
        return None
    job = agent.Job(id=job_id, agent_name=reg.agent_name, namespace=reg.namespace)
    job.type = reg.job_type  # type: ignore[assignment]
    job.dispatch_id = f"{ids.DISPATCH}adopted_{job_id}"
    return job


def adopted_dispatch(job: agent.Job, now_ns: int) -> agent_dispatch.AgentDispatch:
    """The dispatch record recreated for an adopted job that names its room."""
    return agent_dispatch.AgentDispatch(
        id=job.dispatch_id or f"{ids.DISPATCH}adopted_{job.id}",
        agent_name=job.agent_name,
        room=job.room.name,
        metadata=job.metadata,
        deployment=job.deployment,
        state=agent_dispatch.AgentDispatchState(created_at=now_ns),
    )
