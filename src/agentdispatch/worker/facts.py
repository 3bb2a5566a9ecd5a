"""What JobRequest (an offer) and JobContext (a running job) both tell about their job."""

from __future__ import annotations

from livekit.protocol import agent, models


class JobFacts:
    _job: agent.Job

    @property
    def job(self) -> agent.Job:
        return self._job

    @property
    def room(self) -> models.Room:
        """The room as the server described it in the job (name, sid, metadata...)."""
        return self._job.room

    @property
    def participant(self) -> models.ParticipantInfo | None:
        """For PUBLISHER / PARTICIPANT jobs: the participant this job is for."""
        return self._job.participant if self._job.HasField("participant") else None
