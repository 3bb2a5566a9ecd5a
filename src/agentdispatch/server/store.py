"""State behind one interface: rooms, participants, dispatches, jobs.

The dispatch logic only calls these methods; it never reaches into the containers. Records are
livekit-protocol messages. Callers save a record after changing it (`update_*`), so a store that
copies (Redis) behaves the same as this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from livekit.protocol import agent, agent_dispatch, models


class Store(Protocol):
    async def create_room(self, room: models.Room) -> tuple[models.Room, bool]:
        """Insert `room` unless one of that name exists; return the stored room and whether it is new."""

    async def get_room(self, name: str) -> models.Room | None: ...

    async def update_room(self, room: models.Room) -> None: ...

    async def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]: ...

    async def delete_room(self, name: str) -> models.Room | None:
        """Remove a room with its participants, dispatches and jobs; return it if it existed."""

    async def add_participant(self, room: str, participant: models.ParticipantInfo) -> None: ...

    async def remove_participant(self, room: str, identity: str) -> models.ParticipantInfo | None: ...

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]: ...

    async def add_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None: ...

    async def get_dispatch(self, dispatch_id: str) -> agent_dispatch.AgentDispatch | None: ...

    async def update_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None: ...

    async def list_dispatches(self, room: str) -> list[agent_dispatch.AgentDispatch]: ...

    async def add_job(self, job: agent.Job) -> None: ...

    async def get_job(self, job_id: str) -> agent.Job | None: ...

    async def update_job(self, job: agent.Job) -> None: ...

    async def jobs_of_dispatch(self, dispatch_id: str) -> list[agent.Job]: ...

    async def jobs_of_room(self, room: str) -> list[agent.Job]: ...


class MemoryStore:
    """The default store: one process, plain dictionaries."""

    def __init__(self) -> None:
        self._rooms: dict[str, models.Room] = {}
        self._participants: dict[str, dict[str, models.ParticipantInfo]] = {}
        self._dispatches: dict[str, agent_dispatch.AgentDispatch] = {}
        self._room_dispatches: dict[str, dict[str, None]] = {}
        self._jobs: dict[str, agent.Job] = {}
        self._dispatch_jobs: dict[str, dict[str, None]] = {}

    async def create_room(self, room: models.Room) -> tuple[models.Room, bool]:
        existing = self._rooms.get(room.name)
        if existing is not None:
            return existing, False
        self._rooms[room.name] = room
        self._participants[room.name] = {}
        self._room_dispatches[room.name] = {}
        return room, True

    async def get_room(self, name: str) -> models.Room | None:
        return self._rooms.get(name)

    async def update_room(self, room: models.Room) -> None:
        if room.name in self._rooms:
            self._rooms[room.name] = room

    async def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        if names:
            return [self._rooms[n] for n in names if n in self._rooms]
        return list(self._rooms.values())

    async def delete_room(self, name: str) -> models.Room | None:
        room = self._rooms.pop(name, None)
        self._participants.pop(name, None)
        for dispatch_id in self._room_dispatches.pop(name, {}):
            self._dispatches.pop(dispatch_id, None)
            for job_id in self._dispatch_jobs.pop(dispatch_id, {}):
                self._jobs.pop(job_id, None)
        return room

    async def add_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        self._participants.setdefault(room, {})[participant.identity] = participant

    async def remove_participant(self, room: str, identity: str) -> models.ParticipantInfo | None:
        return self._participants.get(room, {}).pop(identity, None)

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        return list(self._participants.get(room, {}).values())

    async def add_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        self._dispatches[dispatch.id] = dispatch
        self._room_dispatches.setdefault(dispatch.room, {})[dispatch.id] = None
        self._dispatch_jobs.setdefault(dispatch.id, {})

    async def get_dispatch(self, dispatch_id: str) -> agent_dispatch.AgentDispatch | None:
        return self._dispatches.get(dispatch_id)

    async def update_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        if dispatch.id in self._dispatches:
            self._dispatches[dispatch.id] = dispatch

    async def list_dispatches(self, room: str) -> list[agent_dispatch.AgentDispatch]:
        return [self._dispatches[d] for d in self._room_dispatches.get(room, {})]

    async def add_job(self, job: agent.Job) -> None:
        self._jobs[job.id] = job
        self._dispatch_jobs.setdefault(job.dispatch_id, {})[job.id] = None

    async def get_job(self, job_id: str) -> agent.Job | None:
        return self._jobs.get(job_id)

    async def update_job(self, job: agent.Job) -> None:
        if job.id in self._jobs:
            self._jobs[job.id] = job

    async def jobs_of_dispatch(self, dispatch_id: str) -> list[agent.Job]:
        return [self._jobs[j] for j in self._dispatch_jobs.get(dispatch_id, {}) if j in self._jobs]

    async def jobs_of_room(self, room: str) -> list[agent.Job]:
        jobs: list[agent.Job] = []
        for dispatch_id in self._room_dispatches.get(room, {}):
            jobs.extend(await self.jobs_of_dispatch(dispatch_id))
        return jobs
