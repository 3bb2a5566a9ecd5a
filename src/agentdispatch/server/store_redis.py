"""The Store on Redis (redis-py asyncio): records as protobuf bytes, indexes as sorted sets.

Every key starts with ``ad:<cluster>:`` so clusters can share one Redis. Layout::

    room           hash  name -> Room            room:o          zset  name, insertion order
    part:<room>    hash  identity -> Participant part:<room>:o   zset  identity, insertion order
    disp           hash  id -> AgentDispatch     disp:r:<room>   zset  dispatch ids of a room
    job            hash  id -> Job               job:d:<disp>    zset  job ids of a dispatch
    job:meta       hash  id -> "<status>|<worker_id>"  (what claim_job compares, kept with every write)
    req:<key>      string "P" (reserved) or "D"+reply, with a TTL (idempotent Twirp calls)
    seq            counter that orders the zsets

Multi-key changes run as Lua scripts, so each is atomic and a crash cannot leave half of one.
Redis unreachable or timing out -> StoreUnavailable (Twirp `unavailable`); the connection pool
reconnects by itself on the next call once Redis is back.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from livekit.protocol import agent, agent_dispatch, models
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .store import ENDED_STATUSES, Replay, ReplayState, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

_PUT_ORDERED = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
if KEYS[4] then redis.call('HSET', KEYS[4], ARGV[1], ARGV[3]) end
"""

_CREATE_ROOM = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then return old end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
return false
"""

_UPDATE_IF_EXISTS = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return 1
"""

_REMOVE_ORDERED = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return old
"""

# keys derived from the prefix inside the script: fine on one Redis (and Sentinel), not Redis Cluster
_DELETE_ROOM = """
local p, name = ARGV[1], ARGV[2]
local rdisp = p .. 'disp:r:' .. name
for _, d in ipairs(redis.call('ZRANGE', rdisp, 0, -1)) do
  local djobs = p .. 'job:d:' .. d
  for _, j in ipairs(redis.call('ZRANGE', djobs, 0, -1)) do
    redis.call('HDEL', p .. 'job', j)
    redis.call('HDEL', p .. 'job:meta', j)
  end
  redis.call('DEL', djobs)
  redis.call('HDEL', p .. 'disp', d)
end
redis.call('DEL', rdisp, p .. 'part:' .. name, p .. 'part:' .. name .. ':o')
local old = redis.call('HGET', p .. 'room', name)
redis.call('HDEL', p .. 'room', name)
redis.call('ZREM', p .. 'room:o', name)
return old
"""

# ARGV: job id, expected owner, new owner, record, new meta, ended statuses...
_CLAIM_JOB = """
local meta = redis.call('HGET', KEYS[2], ARGV[1])
if not meta then return 0 end
local sep = string.find(meta, '|', 1, true)
local status, owner = string.sub(meta, 1, sep - 1), string.sub(meta, sep + 1)
for i = 6, #ARGV do if status == ARGV[i] then return 0 end end
if owner ~= '' and owner ~= ARGV[2] and owner ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
return 1
"""

_JOBS_OF_DISPATCHES = """
local out = {}
for _, d in ipairs(ARGV) do
  for _, j in ipairs(redis.call('ZRANGE', KEYS[1] .. d, 0, -1)) do
    local rec = redis.call('HGET', KEYS[2], j)
    if rec then out[#out + 1] = rec end
  end
end
return out
"""


def guarded(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn "Redis is unreachable" into StoreUnavailable; every other error stays what it is."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"store (Redis) unavailable: {exc}") from exc

    return wrapper


def _raw(value: object) -> bytes:
    """A reply as bytes (the client runs without decode_responses)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply {type(value).__name__}")


def _raw_opt(value: object) -> bytes | None:
    return None if value is None else _raw(value)


def _names(values: object) -> list[str]:
    if not isinstance(values, list | tuple):
        raise TypeError(f"unexpected Redis reply {type(values).__name__}")
    return [_raw(v).decode() for v in values]


def _meta(job: agent.Job) -> bytes:
    return f"{int(job.state.status)}|{job.state.worker_id}".encode()


class RedisStore:
    """Shared state for every node of one cluster; `cluster` namespaces the keys."""

    def __init__(
        self,
        url: str,
        cluster: str = "agentdispatch",
        *,
        socket_timeout: float = 2.0,
        max_connections: int = 64,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = f"ad:{cluster}:"
        self.redis: aioredis.Redis = client or aioredis.Redis.from_pool(
            # blocking: a burst waits for a free connection instead of failing "too many connections"
            aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                socket_timeout=socket_timeout,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                health_check_interval=10,
            )
        )
        r = self.redis
        self._put_ordered = r.register_script(_PUT_ORDERED)
        self._create_room = r.register_script(_CREATE_ROOM)
        self._update_if_exists = r.register_script(_UPDATE_IF_EXISTS)
        self._remove_ordered = r.register_script(_REMOVE_ORDERED)
        self._delete_room = r.register_script(_DELETE_ROOM)
        self._claim = r.register_script(_CLAIM_JOB)
        self._jobs_of = r.register_script(_JOBS_OF_DISPATCHES)
        self._ended = [str(int(s)) for s in ENDED_STATUSES]

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @guarded
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def _list_ordered(self, hash_key: str, order_key: str, names: Sequence[str] = ()) -> list[bytes]:
        if not names:
            names = _names(await self.redis.zrange(order_key, 0, -1))
        if not names:
            return []
        values = await self.redis.hmget(hash_key, list(names))
        return [_raw(v) for v in values if v is not None]

    # -- rooms -------------------------------------------------------------------------------------
    @guarded
    async def create_room(self, room: models.Room) -> tuple[models.Room, bool]:
        keys = [self.k("room"), self.k("room:o"), self.k("seq")]
        old = await self._create_room(keys=keys, args=[room.name, room.SerializeToString()])
        if old is not None:
            return models.Room.FromString(old), False
        return room, True

    @guarded
    async def get_room(self, name: str) -> models.Room | None:
        raw = _raw_opt(await self.redis.hget(self.k("room"), name))
        return None if raw is None else models.Room.FromString(raw)

    @guarded
    async def update_room(self, room: models.Room) -> None:
        await self._update_if_exists(keys=[self.k("room")], args=[room.name, room.SerializeToString()])

    @guarded
    async def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        raw = await self._list_ordered(self.k("room"), self.k("room:o"), names)
        return [models.Room.FromString(r) for r in raw]

    @guarded
    async def delete_room(self, name: str) -> models.Room | None:
        old = await self._delete_room(keys=[], args=[self.prefix, name])
        return None if old is None else models.Room.FromString(old)

    # -- participants ------------------------------------------------------------------------------
    @guarded
    async def add_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        keys = [self.k("part", room), self.k("part", room) + ":o", self.k("seq")]
        await self._put_ordered(keys=keys, args=[participant.identity, participant.SerializeToString()])

    @guarded
    async def remove_participant(self, room: str, identity: str) -> models.ParticipantInfo | None:
        keys = [self.k("part", room), self.k("part", room) + ":o"]
        old = await self._remove_ordered(keys=keys, args=[identity])
        return None if old is None else models.ParticipantInfo.FromString(old)

    @guarded
    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        raw = await self._list_ordered(self.k("part", room), self.k("part", room) + ":o")
        return [models.ParticipantInfo.FromString(r) for r in raw]

    # -- dispatches --------------------------------------------------------------------------------
    @guarded
    async def add_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        keys = [self.k("disp"), self.k("disp:r", dispatch.room), self.k("seq")]
        await self._put_ordered(keys=keys, args=[dispatch.id, dispatch.SerializeToString()])

    @guarded
    async def get_dispatch(self, dispatch_id: str) -> agent_dispatch.AgentDispatch | None:
        raw = _raw_opt(await self.redis.hget(self.k("disp"), dispatch_id))
        return None if raw is None else agent_dispatch.AgentDispatch.FromString(raw)

    @guarded
    async def update_dispatch(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        await self._update_if_exists(keys=[self.k("disp")], args=[dispatch.id, dispatch.SerializeToString()])

    @guarded
    async def list_dispatches(self, room: str) -> list[agent_dispatch.AgentDispatch]:
        raw = await self._list_ordered(self.k("disp"), self.k("disp:r", room))
        return [agent_dispatch.AgentDispatch.FromString(r) for r in raw]

    # -- jobs --------------------------------------------------------------------------------------
    def new_job_write(self, job: agent.Job) -> tuple[list[str], list[str | bytes]]:
        """KEYS and ARGV that store a new job the way `_PUT_ORDERED` does (record, dispatch order,
        meta): `add_job`, and cluster placement's one-step script (cluster_state.PLACE_NEW)."""
        keys = [self.k("job"), self.k("job:d", job.dispatch_id), self.k("seq"), self.k("job:meta")]
        return keys, [job.id, job.SerializeToString(), _meta(job)]

    @guarded
    async def add_job(self, job: agent.Job) -> None:
        keys, args = self.new_job_write(job)
        await self._put_ordered(keys=keys, args=args)

    @guarded
    async def get_job(self, job_id: str) -> agent.Job | None:
        raw = _raw_opt(await self.redis.hget(self.k("job"), job_id))
        return None if raw is None else agent.Job.FromString(raw)

    @guarded
    async def update_job(self, job: agent.Job) -> None:
        keys = [self.k("job"), self.k("job:meta")]
        await self._update_if_exists(keys=keys, args=[job.id, job.SerializeToString(), _meta(job)])

    @guarded
    async def jobs_of_dispatch(self, dispatch_id: str) -> list[agent.Job]:
        raw = await self._jobs_of(keys=[self.k("job:d") + ":", self.k("job")], args=[dispatch_id])
        return [agent.Job.FromString(r) for r in raw]

    @guarded
    async def jobs_of_room(self, room: str) -> list[agent.Job]:
        ids = _names(await self.redis.zrange(self.k("disp:r", room), 0, -1))
        if not ids:
            return []
        raw = await self._jobs_of(keys=[self.k("job:d") + ":", self.k("job")], args=ids)
        return [agent.Job.FromString(r) for r in raw]

    @guarded
    async def claim_job(self, job: agent.Job, expected_worker: str = "") -> bool:
        args: list[Any] = [job.id, expected_worker, job.state.worker_id, job.SerializeToString(), _meta(job)]
        won = await self._claim(keys=[self.k("job"), self.k("job:meta")], args=args + self._ended)
        return bool(won)

    @guarded
    async def jobs_held_by(self, worker_ids: Sequence[str]) -> list[str]:
        """Ids of jobs not ended whose owner is one of `worker_ids` (a scan: for node loss only)."""
        owners, ended = set(worker_ids), {s.encode() for s in self._ended}
        held: list[str] = []
        async for job_id, meta in self.redis.hscan_iter(self.k("job:meta"), count=1000):
            status, _, owner = _raw(meta).partition(b"|")
            if status not in ended and owner.decode() in owners:
                held.append(_raw(job_id).decode())
        return held

    # -- idempotent requests -----------------------------------------------------------------------
    @guarded
    async def reserve_request(self, key: str, ttl: float) -> Replay:
        rkey = self.k("req", key)
        for _ in range(3):  # the reservation may lapse between SET NX and GET
            if await self.redis.set(rkey, b"P", nx=True, px=max(1, int(ttl * 1000))):
                return Replay(ReplayState.NEW)
            raw = _raw_opt(await self.redis.get(rkey))
            if raw is not None:
                if raw[:1] == b"D":
                    return Replay(ReplayState.DONE, raw[1:])
                return Replay(ReplayState.PENDING)
        return Replay(ReplayState.PENDING)

    @guarded
    async def finish_request(self, key: str, reply: bytes, ttl: float) -> None:
        await self.redis.set(self.k("req", key), b"D" + reply, px=max(1, int(ttl * 1000)))

    @guarded
    async def abandon_request(self, key: str) -> None:
        await self.redis.delete(self.k("req", key))
