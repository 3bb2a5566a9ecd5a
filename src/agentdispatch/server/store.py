"""State behind one interface: rooms, participants, dispatches, jobs, request replays.

The dispatch logic only calls these methods; it never reaches into the containers. Records are
livekit-protocol messages. Callers save a record after changing it (`update_*`), so a store that
copies (Redis) behaves the same as this one; `MemoryStore(copies=True)` copies too, to prove it.
`claim_job` is the one compare-and-set: a job goes to a worker only if it is unassigned or still
held by the expected owner, so two nodes can never assign one job. Both stores pass
tests/server/test_store_contract.py.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple, Protocol, TypeVar

from google.protobuf.message import Message
from livekit.protocol import agent, agent_dispatch, models

from ..protocol.errors import TwirpError
from ..util import SYSTEM_CLOCK, Clock

ENDED_STATUSES = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED)
M = TypeVar("M", bound=Message)


class StoreUnavailable(TwirpError):
    """The store cannot be reached (Redis down or timing out); Twirp answers `unavailable`."""

    def __init__(self, msg: str) -> None:
        super().__init__("unavailable", msg)


class ReplayState(enum.Enum):
    NEW = "new"  #: the caller reserved the key and must run the call, then finish or abandon it
    PENDING = "pending"  #: another call with this key is running (maybe on another node)
    DONE = "done"  #: the first call finished; `reply` holds its answer


class Replay(NamedTuple):
    state: ReplayState
    reply: bytes = b""


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

    async def claim_job(self, job: agent.Job, expected_worker: str = "") -> bool:
        """Save `job` (whose state.worker_id is the new owner) only if the stored job exists, has not
        ended, and is unassigned, held by `expected_worker`, or already held by the new owner.
        Returns whether it was saved. Atomic: of two concurrent claims at most one wins."""

    async def reserve_request(self, key: str, ttl: float) -> Replay:
        """Start an idempotent call: NEW (reserved for `ttl` s), PENDING, or DONE with the reply."""

    async def finish_request(self, key: str, reply: bytes, ttl: float) -> None:
        """Record the answer of a reserved call; repeats of `key` get it for `ttl` seconds."""

    async def abandon_request(self, key: str) -> None:
        """The reserved call failed: forget the key so a retry runs again."""

    async def aclose(self) -> None: ...


def _copy(msg: M) -> M:
    dup = type(msg)()
    dup.CopyFrom(msg)
    return dup


class MemoryStore:
    """The default store: one process, plain dictionaries.

    By default it hands out the records it holds (fast, one process). `copies=True` stores and returns
    copies, exactly like a remote store, so tests can show the callers never rely on aliasing.
    """

    def __init__(
        self, *, copies: bool = False, clock: Clock = SYSTEM_CLOCK, max_replays: int = 100_000
    ) -> None:
        self._copies = copies
        self._clock = clock
        self._max_replays = max_replays
        self._replays: dict[str, tuple[float, Replay]] = {}
        self._rooms: dict[str, models.Room] = {}
        self._participants: dict[str, dict[str, models.ParticipantInfo]] = {}
        self._dispatches: dict[str, agent_dispatch.AgentDispatch] = {}
        self._room_dispatches: dict[str, dict[str, None]] = {}
        self._jobs: dict[str, agent.Job] = {}
        self._dispatch_jobs: dict[str, dict[str, None]] = {}

    def _c(self, msg: M) -> M:
        return _copy(msg) if self._copies else msg

    async def create_room(self, room: models.Room) -> tuple[models.Room, bool]:
        existing = self._rooms.get(room.name)
        if existing is not None:
            return self._c(existing), False
        self._rooms[room.name] = self._c(room)
        self._participants.setdefault(room.name, {})
        self._room_dispatches.setdefault(room.name, {})
        return room, True

    async def get_room(self, name: str) -> models.Room | None:
        room = self._rooms.get(name)
        return None if room is None else self._c(room)

    async def update_room(self, room: models.Room) -> None:
        if room.name in self._rooms:
            self._rooms[room.name] = self._c(room)

    async def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        if names:
            return [self._c(self._rooms[n]) for n in names if n in self._rooms]
        return [self._c(r) for r in self._rooms.values()]

    async def delete_room(self, name: str) -> models.Room | None:
        room = self._rooms.pop(name, None)
        self._participants.pop(name, None)
        for dispatch_id in self._room_dispatches.pop(name, {}):
            self._dispatches.pop(dispatch_id, None)
            for job_id in self._dispatch_jobs.pop(dispatch_id, {}):
                self._jobs.pop(job_id, None)
        return room

    async def add_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        self._participants.setdefault(room, {})[participant.identity] = self._c(participant)

    async def remove_participant(self, room: str, identity: str) -> models.ParticipantInfo | None:
        return self._participants.get(room, {}).pop(identity, None)

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        return [self._c(p) for p in self._participants.get(room, {}).values()]

    async def add_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        self._dispatches[dispatch.id] = self._c(dispatch)
        self._room_dispatches.setdefault(dispatch.room, {})[dispatch.id] = None
        self._dispatch_jobs.setdefault(dispatch.id, {})

    async def get_dispatch(self, dispatch_id: str) -> agent_dispatch.AgentDispatch | None:
        dispatch = self._dispatches.get(dispatch_id)
        return None if dispatch is None else self._c(dispatch)

    async def update_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        if dispatch.id in self._dispatches:
            self._dispatches[dispatch.id] = self._c(dispatch)

    async def list_dispatches(self, room: str) -> list[agent_dispatch.AgentDispatch]:
        return [self._c(self._dispatches[d]) for d in self._room_dispatches.get(room, {})]

    async def add_job(self, job: agent.Job) -> None:
        self._jobs[job.id] = self._c(job)
        self._dispatch_jobs.setdefault(job.dispatch_id, {})[job.id] = None

    async def get_job(self, job_id: str) -> agent.Job | None:
        job = self._jobs.get(job_id)
        return None if job is None else self._c(job)

    async def update_job(self, job: agent.Job) -> None:
        if job.id in self._jobs:
            self._jobs[job.id] = self._c(job)

    async def jobs_of_dispatch(self, dispatch_id: str) -> list[agent.Job]:
        jobs = self._jobs
        return [self._c(jobs[j]) for j in self._dispatch_jobs.get(dispatch_id, {}) if j in jobs]

    async def jobs_of_room(self, room: str) -> list[agent.Job]:
        jobs: list[agent.Job] = []
        for dispatch_id in self._room_dispatches.get(room, {}):
            jobs.extend(await self.jobs_of_dispatch(dispatch_id))
        return jobs

    async def claim_job(self, job: agent.Job, expected_worker: str = "") -> bool:
        stored = self._jobs.get(job.id)
        if stored is None or stored.state.status in ENDED_STATUSES:
            return False
        owner = stored.state.worker_id
        if owner not in ("", expected_worker, job.state.worker_id):
            return False
        self._jobs[job.id] = self._c(job)
        return True

    # -- idempotent requests ---------------------------------------------------------------------
    async def reserve_request(self, key: str, ttl: float) -> Replay:
        now = self._clock.monotonic()
        hit = self._replays.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        self._put_replay(key, now + ttl, Replay(ReplayState.PENDING))
        return Replay(ReplayState.NEW)

    async def finish_request(self, key: str, reply: bytes, ttl: float) -> None:
        self._put_replay(key, self._clock.monotonic() + ttl, Replay(ReplayState.DONE, reply))

    async def abandon_request(self, key: str) -> None:
        self._replays.pop(key, None)

    def _put_replay(self, key: str, until: float, replay: Replay) -> None:
        self._replays.pop(key, None)
        while len(self._replays) >= self._max_replays:
            self._replays.pop(next(iter(self._replays)))
        self._replays[key] = (until, replay)

    async def aclose(self) -> None:
        return None


def open_store(redis_url: str = "", cluster: str = "agentdispatch", clock: Clock = SYSTEM_CLOCK) -> Store:
    """The store a server runs on: RedisStore for a `redis://` URL (cluster mode), else MemoryStore."""
    if not redis_url:
        return MemoryStore(clock=clock)
    from .store_redis import RedisStore  # redis-py only when asked for

    return RedisStore(redis_url, cluster)
