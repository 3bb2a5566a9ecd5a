"""The server log tells the story of each job: one line per lifecycle event, with its ids.

Subscribed to the EventBus. INFO: created, assigned (with ms since created), ended, restarting,
no capacity, declined, offer timeouts, migrated, orphaned. DEBUG: offered, queued, running.
"""

from __future__ import annotations

import logging

from livekit.protocol import agent

from .events import Event, JobEvent, JobEventKind

log = logging.getLogger("agentdispatch.server.jobs")

K = JobEventKind
_DEBUG = {K.OFFERED, K.QUEUED, K.RUNNING}
_MESSAGES = {
    K.CREATED: "job created",
    K.QUEUED: "job waits for a worker",
    K.OFFERED: "job offered",
    K.DECLINED: "job declined by worker",
    K.OFFER_TIMEOUT: "job offer not answered",
    K.ASSIGNED: "job assigned",
    K.RUNNING: "job running",
    K.MIGRATED: "job kept by reconnected worker",
    K.ORPHANED: "job's worker lost; waiting for it to reconnect",
    K.RESTARTING: "job restarting",
    K.ENDED: "job ended",
}


class JobLog:
    def __init__(self) -> None:
        self._created_at: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if not isinstance(event, JobEvent):
            return
        job = event.job
        if event.kind is K.CREATED:
            self._created_at[job.id] = event.at
        if event.kind is K.ENDED:
            started = self._created_at.pop(job.id, None)
            failed = job.state.status == agent.JobStatus.JS_FAILED
            level = logging.WARNING if failed else logging.INFO
        else:
            started = self._created_at.get(job.id)
            level = logging.DEBUG if event.kind in _DEBUG else logging.INFO
        if not log.isEnabledFor(level):  # the line is built only when it is written
            return
        extra: dict[str, object] = {
            "job_id": job.id,
            "dispatch_id": job.dispatch_id,
            "room": job.room.name,
            "agent_name": job.agent_name,
        }
        if event.worker_id:
            extra["worker_id"] = event.worker_id
        if event.detail:
            extra["detail"] = event.detail
        if event.kind is K.ASSIGNED and started is not None:
            extra["ms"] = round((event.at - started) * 1000, 2)
        elif event.kind is K.ENDED:
            extra["status"] = agent.JobStatus.Name(job.state.status)
            if job.state.reason:
                extra["reason"] = agent.JobStateReason.Name(job.state.reason)
        log.log(level, _MESSAGES[event.kind], extra=extra)
