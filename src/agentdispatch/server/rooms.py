"""Rooms, participants and dispatches: what creates jobs and what ends them."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from livekit.protocol import agent, agent_dispatch, models

from ..protocol import TwirpError
from ..protocol.ids import new_dispatch_id, new_job_id, new_room_sid
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from .config import ServerConfig
from .dispatcher import ENDED, Dispatcher
from .events import Event, EventBus, RoomEvent, RoomEventKind, WorkerEvent, WorkerEventKind
from .registry import WorkerRegistry
from .restarts import RoomAudience
from .session import MAX_NAME_BYTES
from .store import Store

log = logging.getLogger("agentdispatch.server.rooms")

JT_ROOM = agent.JobType.JT_ROOM
JT_PUBLISHER = agent.JobType.JT_PUBLISHER
JT_PARTICIPANT = agent.JobType.JT_PARTICIPANT
AGENT_KIND = models.ParticipantInfo.Kind.AGENT


@dataclass(frozen=True)
class DispatchSpec:
    """What a dispatch asks for (from CreateDispatch, CreateRoom.agents or a token's roomConfig)."""

    agent_name: str = ""
    metadata: str = ""
    deployment: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    restart_policy: int = agent_dispatch.JobRestartPolicy.JRP_ON_FAILURE
    implicit: bool = False

    @classmethod
    def from_room_agent(cls, d: agent_dispatch.RoomAgentDispatch) -> DispatchSpec:
        return cls(d.agent_name, d.metadata, d.deployment, dict(d.attributes), d.restart_policy)


@dataclass(frozen=True)
class RoomSpec:
    name: str
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    agents: Sequence[DispatchSpec] = ()


class RoomManager:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        registry: WorkerRegistry,
        dispatcher: Dispatcher,
        events: EventBus,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._dispatcher = dispatcher
        self._events = events
        self._clock = clock
        self._close_timers: dict[str, asyncio.TimerHandle] = {}
        self._dormant: dict[str, str] = {}  # implicit dispatch id -> room name, waiting for a worker
        self._visited: set[str] = set()  # rooms a non-agent participant has joined
        self._tasks = TaskSet("rooms")
        dispatcher.set_audience(self.audience)
        events.subscribe(self._on_event, only=(WorkerEvent,))

    def _on_event(self, event: Event) -> None:
        if (
            isinstance(event, WorkerEvent)
            and event.kind is WorkerEventKind.REGISTERED
            and not event.worker.agent_name
            and not event.worker.namespace
            and self._dormant
        ):
            self._tasks.spawn(self._wake_implicit(), f"wake-implicit:{event.worker.worker_id}")

    def _emit(
        self,
        kind: RoomEventKind,
        room: models.Room,
        p: models.ParticipantInfo | None = None,
        detail: str = "",
    ) -> None:
        self._events.emit(RoomEvent(kind, room, p, self._clock.monotonic(), detail))

    async def audience(self, room_name: str) -> RoomAudience:
        """Who a job in this room could still serve (the restart rule asks)."""
        room = await self._store.get_room(room_name)
        if room is None:
            return RoomAudience(exists=False, humans_now=0, ever_had_humans=room_name in self._visited)
        humans = sum(1 for p in await self._store.list_participants(room_name) if p.kind != AGENT_KIND)
        return RoomAudience(exists=True, humans_now=humans, ever_had_humans=room_name in self._visited)

    # -- rooms ---------------------------------------------------------------------------------
    async def create_room(self, spec: RoomSpec) -> tuple[models.Room, bool]:
        """Create a room (idempotent by name). A new room gets its dispatches, or the implicit one."""
        room, created, _ = await self._create_room(spec)
        return room, created

    async def _create_room(
        self, spec: RoomSpec, *, absent: bool = False
    ) -> tuple[models.Room, bool, list[agent_dispatch.AgentDispatch]]:
        """`create_room`, with the dispatches a new room got. `absent`: the caller has just looked
        the room up and not found it (the store's create is still idempotent if it appeared since)."""
        validate_room_name(spec.name)
        now_ns = self._clock.wall_ns()
        room = models.Room(
            sid=new_room_sid(),
            name=spec.name,
            empty_timeout=spec.empty_timeout or self._config.empty_timeout,
            departure_timeout=spec.departure_timeout or self._config.departure_timeout,
            max_participants=spec.max_participants,
            metadata=spec.metadata,
            creation_time=now_ns // 1_000_000_000,
            creation_time_ms=now_ns // 1_000_000,
        )
        if not absent:
            existing = await self._store.get_room(spec.name)
            if existing is not None:
                return existing, False, []
        self._dispatcher.check_capacity(max(1, len(spec.agents)))
        stored, created = await self._store.create_room(room)
        dispatches = []
        if created:
            if log.isEnabledFor(logging.INFO):  # the extra dict is not built per dispatch at WARNING
                log.info("room created", extra={"room": spec.name})
            self._emit(RoomEventKind.ROOM_STARTED, stored)
            self._arm_close_timer(spec.name, stored.empty_timeout)
            for dspec in spec.agents or (DispatchSpec(implicit=True),):
                dispatches.append(await self._add_dispatch(stored, dspec))
        return stored, created, dispatches

    async def list_rooms(self, names: Sequence[str]) -> list[models.Room]:
        return await self._store.list_rooms(names)

    async def delete_room(self, name: str, reason: str = "room deleted") -> None:
        room = await self._store.get_room(name)
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        await self._close_room(name, reason, agent.JobStateReason.JSR_ROOM_CLOSED)

    async def _close_room(self, name: str, reason: str, job_reason: int) -> None:
        timer = self._close_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        for job in await self._store.jobs_of_room(name):
            await self._dispatcher.end_job(job.id, agent.JobStatus.JS_CANCELLED, reason, job_reason)
        for dispatch in await self._store.list_dispatches(name):
            self._dormant.pop(dispatch.id, None)
        room = await self._store.delete_room(name)
        self._visited.discard(name)
        log.info("room closed", extra={"room": name, "reason": reason})
        self._emit(RoomEventKind.ROOM_FINISHED, room or models.Room(name=name), detail=reason)

    def _arm_close_timer(self, name: str, seconds: int) -> None:
        old = self._close_timers.pop(name, None)
        if old is not None:
            old.cancel()
        if seconds > 0:
            self._close_timers[name] = asyncio.get_running_loop().call_later(
                seconds, self._on_close_timer, name
            )

    def _on_close_timer(self, name: str) -> None:
        self._close_timers.pop(name, None)
        self._tasks.spawn(
            self._close_room(name, "room closed: no participants", agent.JobStateReason.JSR_ROOM_CLOSED),
            f"close-room:{name}",
        )

    # -- dispatches ------------------------------------------------------------------------------
    async def create_dispatch(self, room_name: str, spec: DispatchSpec) -> agent_dispatch.AgentDispatch:
        validate_room_name(room_name)
        room = await self._store.get_room(room_name)
        if room is None:
            # auto-create the room; this dispatch is its agent list, so no implicit dispatch
            room, created, dispatches = await self._create_room(
                RoomSpec(name=room_name, agents=(spec,)), absent=True
            )
            if created:
                return dispatches[-1]
        return await self._add_dispatch(room, spec)

    async def _add_dispatch(self, room: models.Room, spec: DispatchSpec) -> agent_dispatch.AgentDispatch:
        validate_agent_name(spec.agent_name)
        self._dispatcher.check_capacity(1, len(spec.metadata) + room.ByteSize())
        dispatch = agent_dispatch.AgentDispatch(
            id=new_dispatch_id(),
            agent_name=spec.agent_name,
            room=room.name,
            metadata=spec.metadata,
            deployment=spec.deployment,
            restart_policy=spec.restart_policy,  # type: ignore[arg-type]
            attributes=dict(spec.attributes),
            state=agent_dispatch.AgentDispatchState(created_at=self._clock.wall_ns()),
        )
        await self._store.add_dispatch(dispatch)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "dispatch created",
                extra={"room": room.name, "dispatch_id": dispatch.id, "agent_name": spec.agent_name},
            )
        types = self._registry.job_types(spec.agent_name, "", spec.deployment)
        if not types and spec.implicit:
            self._dormant[dispatch.id] = room.name
            return dispatch
        await self._start_jobs(room, dispatch, types or {JT_ROOM})
        return dispatch

    async def _start_jobs(
        self, room: models.Room, dispatch: agent_dispatch.AgentDispatch, types: set[int]
    ) -> None:
        if JT_ROOM in types:
            await self._dispatcher.submit(self._new_job(room, dispatch, JT_ROOM))
        if types & {JT_PARTICIPANT, JT_PUBLISHER}:
            for p in await self._store.list_participants(room.name):
                if p.kind == AGENT_KIND:
                    continue
                if JT_PARTICIPANT in types:
                    await self._dispatcher.submit(self._new_job(room, dispatch, JT_PARTICIPANT, p))
                if JT_PUBLISHER in types and p.is_publisher:
                    await self._dispatcher.submit(self._new_job(room, dispatch, JT_PUBLISHER, p))

    def _new_job(
        self,
        room: models.Room,
        dispatch: agent_dispatch.AgentDispatch,
        job_type: int,
        participant: models.ParticipantInfo | None = None,
    ) -> agent.Job:
        job = agent.Job(
            id=new_job_id(),
            dispatch_id=dispatch.id,
            type=job_type,  # type: ignore[arg-type]
            room=room,
            agent_name=dispatch.agent_name,
            metadata=dispatch.metadata,
            deployment=dispatch.deployment,
            attributes=dict(dispatch.attributes),
        )
        if participant is not None:
            job.participant.CopyFrom(participant)
        return job

    async def list_dispatches(self, room: str, dispatch_id: str = "") -> list[agent_dispatch.AgentDispatch]:
        result = []
        for d in await self._store.list_dispatches(room):
            if dispatch_id and d.id != dispatch_id:
                continue
            view = agent_dispatch.AgentDispatch()
            view.CopyFrom(d)
            view.state.jobs.extend(await self._store.jobs_of_dispatch(d.id))
            result.append(view)
        return result

    async def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        dispatch = await self._store.get_dispatch(dispatch_id)
        if dispatch is None or dispatch.room != room:
            raise TwirpError("not_found", f"dispatch {dispatch_id!r} not found in room {room!r}")
        if not dispatch.state.deleted_at:
            dispatch.state.deleted_at = self._clock.wall_ns()
            await self._store.update_dispatch(dispatch)
            self._dormant.pop(dispatch_id, None)
            for job in await self._store.jobs_of_dispatch(dispatch_id):
                await self._dispatcher.end_job(
                    job.id,
                    agent.JobStatus.JS_CANCELLED,
                    "dispatch deleted",
                    agent.JobStateReason.JSR_DISPATCH_DELETED,
                )
        return (await self.list_dispatches(room, dispatch_id))[0]

    async def _wake_implicit(self) -> None:
        """An unnamed worker registered: start the implicit dispatches that waited for one."""
        for dispatch_id, room_name in list(self._dormant.items()):
            dispatch = await self._store.get_dispatch(dispatch_id)
            room = await self._store.get_room(room_name)
            del self._dormant[dispatch_id]
            if dispatch is None or room is None:
                continue
            types = self._registry.job_types("", "", dispatch.deployment)
            await self._start_jobs(room, dispatch, types)

    # -- participants ----------------------------------------------------------------------------
    async def join(
        self, room_name: str, participant: models.ParticipantInfo, room_spec: RoomSpec
    ) -> models.Room:
        room, _ = await self.create_room(room_spec)
        validate_identity(participant.identity)
        existing = await self._store.list_participants(room_name)
        others = [p for p in existing if p.identity != participant.identity]
        humans = sum(1 for p in others if p.kind != AGENT_KIND) + (participant.kind != AGENT_KIND)
        if room.max_participants and len(others) >= room.max_participants:
            raise TwirpError("resource_exhausted", f"room {room_name!r} is full ({room.max_participants})")
        participant.joined_at = self._clock.wall_ns() // 1_000_000_000
        participant.joined_at_ms = self._clock.wall_ns() // 1_000_000
        participant.state = models.ParticipantInfo.State.ACTIVE
        await self._store.add_participant(room_name, participant)
        room.num_participants = len(others) + 1
        await self._store.update_room(room)
        if participant.kind != AGENT_KIND:
            self._visited.add(room_name)
            timer = self._close_timers.pop(room_name, None)
            if timer is not None:
                timer.cancel()
            await self._participant_jobs(room, participant, JT_PARTICIPANT)
        log.info(
            "participant joined",
            extra={"room": room_name, "identity": participant.identity, "humans": humans},
        )
        self._emit(RoomEventKind.PARTICIPANT_JOINED, room, participant)
        return room

    async def participants(self, room_name: str) -> list[models.ParticipantInfo]:
        return await self._store.list_participants(room_name)

    async def exists(self, room_name: str) -> bool:
        return await self._store.get_room(room_name) is not None

    async def save_participant(self, room_name: str, participant: models.ParticipantInfo) -> None:
        """Store a changed participant record (UpdateParticipant)."""
        await self._store.add_participant(room_name, participant)

    async def set_metadata(self, room_name: str, metadata: str) -> models.Room:
        room = await self._store.get_room(room_name)
        if room is None:
            raise TwirpError("not_found", f"room {room_name!r} does not exist")
        room.metadata = metadata
        await self._store.update_room(room)
        return room

    async def publish(self, room_name: str, identity: str) -> None:
        for p in await self._store.list_participants(room_name):
            if p.identity == identity and not p.is_publisher:
                p.is_publisher = True
                await self._store.add_participant(room_name, p)
                room = await self._store.get_room(room_name)
                if room is not None and p.kind != AGENT_KIND:
                    await self._participant_jobs(room, p, JT_PUBLISHER)

    async def _participant_jobs(self, room: models.Room, p: models.ParticipantInfo, job_type: int) -> None:
        """One job per (dispatch, participant identity, type): a reconnect keeps the running one."""
        for dispatch in await self._store.list_dispatches(room.name):
            if dispatch.state.deleted_at:
                continue
            if job_type not in self._registry.job_types(dispatch.agent_name, "", dispatch.deployment):
                continue
            jobs = await self._store.jobs_of_dispatch(dispatch.id)
            if any(
                j.type == job_type and j.participant.identity == p.identity and j.state.status not in ENDED
                for j in jobs
            ):
                log.info(
                    "participant rejoined; its job keeps running",
                    extra={"room": room.name, "identity": p.identity, "dispatch_id": dispatch.id},
                )
                continue
            await self._dispatcher.submit(self._new_job(room, dispatch, job_type, p))

    async def leave(self, room_name: str, identity: str) -> None:
        p = await self._store.remove_participant(room_name, identity)
        if p is None:
            return
        room = await self._store.get_room(room_name)
        remaining = await self._store.list_participants(room_name)
        if room is not None:
            room.num_participants = len(remaining)
            await self._store.update_room(room)
            if not any(q.kind != AGENT_KIND for q in remaining):
                self._arm_close_timer(room_name, room.departure_timeout)
        self._emit(RoomEventKind.PARTICIPANT_LEFT, room or models.Room(name=room_name), p)

    async def aclose(self) -> None:
        for timer in self._close_timers.values():
            timer.cancel()
        self._close_timers.clear()
        await self._tasks.aclose()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _validate_name(what: str, name: str, required: bool) -> None:
    if required and not name:
        raise TwirpError("invalid_argument", f"{what} is required")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise TwirpError("invalid_argument", f"{what} longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise TwirpError("invalid_argument", f"{what} must not contain control characters")


def validate_room_name(name: str) -> None:
    _validate_name("room name", name, required=True)


def validate_agent_name(name: str) -> None:
    """No worker could register a longer name or one with control characters: it could never run."""
    _validate_name("agent name", name, required=False)


def validate_identity(identity: str) -> None:
    _validate_name("participant identity", identity, required=True)
