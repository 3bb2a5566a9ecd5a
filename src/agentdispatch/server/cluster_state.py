"""Cluster bookkeeping in Redis: node leases, the cluster-wide worker directory, durable hand-offs.

Keys (prefix ``ad:<cluster>:``, shared with RedisStore)::

    node:<id>          string  lease (JSON {url}); lapses `lease_ttl` s after the last heartbeat
    nodes              zset    every node that ever held a lease, score = first seen (ms)
    takeover:<id>      string  who is taking over a dead node (SET NX), so exactly one survivor does
    wsum               hash    worker id -> WorkerSummary JSON (cluster-wide view)
    wsum:n:<node>      set     worker ids that connected to that node (kept until it is taken over)
    wkey:<key>         zset    eligible workers of one worker key ("<node>|<worker>"), score = projected load
                               (+ 1e-6 per job held: equal projections, fewer jobs first)
    hand:<node>        stream  hand-offs to that node (consumer group "nodes"); an entry stays
                               pending until the job it carries is assigned or ended

The pieces here only talk to Redis; server/cluster.py wires them to the dispatcher.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from livekit.protocol import agent
from redis.exceptions import ResponseError

from .events import WorkerSummary
from .session import WorkerKey

GROUP = "nodes"
WS_AVAILABLE = int(agent.WorkerStatus.WS_AVAILABLE)


def key_name(key: WorkerKey) -> str:
    agent_name, namespace, job_type, deployment = key
    return json.dumps([agent_name, namespace, job_type, deployment], separators=(",", ":"))


def worker_keys(s: WorkerSummary) -> tuple[WorkerKey, WorkerKey]:
    return (
        (s.agent_name, s.namespace, s.job_type, s.deployment),
        (s.agent_name, s.namespace, s.job_type, "*"),
    )


#: score added per job a worker holds: below the projection's rounding (1e-4), so it only orders equal
#: projections (the fewer jobs held first, as the node's own LoadIndex does)
HELD_TIE_BREAK = 1e-6


def placement_score(s: WorkerSummary) -> float:
    """The worker's score in the directory: its projected load, ties ordered by the jobs it holds."""
    return s.projected_load + min(s.held, 99) * HELD_TIE_BREAK


def eligible(s: WorkerSummary) -> bool:
    return s.status == WS_AVAILABLE and not s.draining and not s.unresponsive and s.projected_load < 1.0


def as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected Redis reply {type(value).__name__}")


class NodeLeases:
    """Each live node holds `node:<id>` with a TTL and renews it; a lapsed lease means a dead node."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str, lease_ttl: float) -> None:
        self._r = redis
        self._p = prefix
        self.node_id = node_id
        self._ttl_ms = max(1, int(lease_ttl * 1000))

    async def renew(self, url: str = "") -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(f"{self._p}node:{self.node_id}", json.dumps({"url": url}), px=self._ttl_ms)
        pipe.zadd(f"{self._p}nodes", {self.node_id: 0}, nx=True)
        await pipe.execute()

    async def release(self) -> None:
        """A clean shutdown: give the lease up at once so survivors need not wait for it to lapse."""
        await self._r.delete(f"{self._p}node:{self.node_id}")

    async def url_of(self, node_id: str) -> str | None:
        """The URL a live node recorded in its lease; None once the lease is gone."""
        raw = await self._r.get(f"{self._p}node:{node_id}")
        return None if raw is None else str(json.loads(as_text(raw)).get("url", ""))

    async def known(self) -> list[str]:
        return [as_text(n) for n in await self._r.zrange(f"{self._p}nodes", 0, -1)]

    async def alive(self) -> dict[str, bool]:
        nodes = await self.known()
        if not nodes:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(f"{self._p}node:{node}")
        flags = await pipe.execute()
        return {node: bool(flag) for node, flag in zip(nodes, flags, strict=True)}

    async def begin_takeover(self, dead: str, hold: float) -> bool:
        """True for exactly one survivor per dead node (until `hold` s pass without finishing)."""
        got = await self._r.set(f"{self._p}takeover:{dead}", self.node_id, nx=True, px=int(hold * 1000))
        return bool(got)

    async def forget(self, dead: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(f"{self._p}nodes", dead)
        pipe.delete(f"{self._p}takeover:{dead}", f"{self._p}hand:{dead}", f"{self._p}wsum:n:{dead}")
        await pipe.execute()


# KEYS: the zset. ARGV: delta, a random number in [0,1) for the tie-break, excluded worker ids...
# The least loaded eligible member (score < 1) not excluded, ties at random, raised by delta: one step,
# so concurrent placements from several nodes each see the others' choices.
_PICK = """
local rows = redis.call('ZRANGE', KEYS[1], 0, #ARGV + 6, 'WITHSCORES')
local skip = {}
for i = 3, #ARGV do skip[ARGV[i]] = true end
local ties, low = {}, nil
for i = 1, #rows, 2 do
  local member, score = rows[i], tonumber(rows[i + 1])
  local worker = string.sub(member, (string.find(member, '|', 1, true) or 0) + 1)
  if score < 1.0 and not skip[worker] then
    if low == nil then low = score end
    if score == low then ties[#ties + 1] = member end
  end
end
if #ties == 0 then return false end
local chosen = ties[math.floor(tonumber(ARGV[2]) * #ties) + 1]
redis.call('ZINCRBY', KEYS[1], ARGV[1], chosen)
return {chosen, tostring(low)}
"""


# A new job in one step (one round trip): pick its worker as _PICK does (skipping workers of nodes the
# caller knows are dead), store the job as RedisStore.add_job does (_PUT_ORDERED), and append the
# hand-off to the chosen worker's node's stream, or to the caller's own when no worker is eligible.
# The stream key is built here from the prefix (one Redis or Sentinel, not Redis Cluster, as _DELETE_ROOM).
# KEYS: the worker key's zset, then add_job's four keys (job, job:d:<dispatch>, seq, job:meta).
# ARGV: stream prefix, own node, delta, random in [0,1), stream maxlen, job id, record, meta,
#       deadline_ms, resuming ("1"/"0"), dead node count, dead nodes...
# Returns {node, worker ('' = none eligible), stream entry id}.
PLACE_NEW = """
local ndead = tonumber(ARGV[11])
local dead = {}
for i = 12, 11 + ndead do dead[ARGV[i]] = true end
local rows = redis.call('ZRANGE', KEYS[1], 0, ndead + 7, 'WITHSCORES')
local ties, low = {}, nil
for i = 1, #rows, 2 do
  local member, score = rows[i], tonumber(rows[i + 1])
  local bar = string.find(member, '|', 1, true) or 0
  if score < 1.0 and not dead[string.sub(member, 1, bar - 1)] then
    if low == nil then low = score end
    if score == low then ties[#ties + 1] = member end
  end
end
local node, worker = ARGV[2], ''
if #ties > 0 then
  local chosen = ties[math.floor(tonumber(ARGV[4]) * #ties) + 1]
  redis.call('ZINCRBY', KEYS[1], ARGV[3], chosen)
  local bar = string.find(chosen, '|', 1, true)
  node, worker = string.sub(chosen, 1, bar - 1), string.sub(chosen, bar + 1)
end
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7])
if not redis.call('ZSCORE', KEYS[3], ARGV[6]) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[6])
end
redis.call('HSET', KEYS[5], ARGV[6], ARGV[8])
local entry = redis.call('XADD', ARGV[1] .. node, 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'offer', 'job', ARGV[6], 'worker', worker, 'deadline_ms', ARGV[9],
  'resuming', ARGV[10], 'from', ARGV[2])
return {node, worker, entry}
"""


class WorkerDirectory:
    """The cluster-wide worker view placement reads: who is where, and how loaded."""

    def __init__(self, redis: aioredis.Redis, prefix: str, rng: random.Random | None = None) -> None:
        self._r = redis
        self._p = prefix
        self._rng = rng or random.Random()
        self._pick = redis.register_script(_PICK)

    async def publish(self, summaries: Sequence[WorkerSummary]) -> None:
        if not summaries:
            return
        pipe = self._r.pipeline(transaction=False)
        for s in summaries:
            pipe.hset(f"{self._p}wsum", s.worker_id, json.dumps(asdict(s)))
            pipe.sadd(f"{self._p}wsum:n:{s.node_id}", s.worker_id)
            for key in worker_keys(s):
                zkey = f"{self._p}wkey:{key_name(key)}"
                if eligible(s):
                    pipe.zadd(zkey, {_member(s): placement_score(s)})
                else:
                    pipe.zrem(zkey, _member(s))
        await pipe.execute()

    async def remove(self, summaries: Sequence[WorkerSummary], keep_membership: bool = False) -> None:
        """Drop workers from placement. `keep_membership` leaves them in their node's set, so whoever
        takes the node over finds the jobs they still hold (a shutdown: they reconnect elsewhere)."""
        if not summaries:
            return
        pipe = self._r.pipeline(transaction=False)
        for s in summaries:
            pipe.hdel(f"{self._p}wsum", s.worker_id)
            if not keep_membership:
                pipe.srem(f"{self._p}wsum:n:{s.node_id}", s.worker_id)
            for key in worker_keys(s):
                pipe.zrem(f"{self._p}wkey:{key_name(key)}", _member(s))
        await pipe.execute()

    async def get(self, worker_id: str) -> WorkerSummary | None:
        raw = await self._r.hget(f"{self._p}wsum", worker_id)
        return None if raw is None else WorkerSummary(**json.loads(as_text(raw)))

    async def members(self, node_id: str) -> list[str]:
        """Ids of the workers listed under a node (connected, or connected when it shut down)."""
        return sorted(as_text(w) for w in await self._r.smembers(f"{self._p}wsum:n:{node_id}"))

    async def of_node(self, node_id: str) -> list[WorkerSummary]:
        ids = await self.members(node_id)
        if not ids:
            return []
        raws = await self._r.hmget(f"{self._p}wsum", ids)
        return [WorkerSummary(**json.loads(as_text(r))) for r in raws if r is not None]

    async def best(self, key: WorkerKey, exclude: Collection[str] = ()) -> Candidate | None:
        """The least loaded eligible worker of the cluster for `key` (ties at random), in one round trip."""
        zkey = f"{self._p}wkey:{key_name(key)}"
        want = len(exclude) + 8
        rows: Any = await self._r.zrange(zkey, 0, want - 1, withscores=True)
        cands: list[Candidate] = []
        for member, score in rows:
            node_id, _, worker_id = as_text(member).partition("|")
            if float(score) < 1.0 and worker_id not in exclude:
                cands.append(Candidate(worker_id, node_id, float(score)))
        if not cands:
            return None
        low = cands[0].load
        return self._rng.choice([c for c in cands if c.load == low])

    async def pick(self, key: WorkerKey, delta: float, exclude: Collection[str] = ()) -> Candidate | None:
        """`best` and `bump` in one atomic step (a Lua script): what placement uses."""
        zkey = f"{self._p}wkey:{key_name(key)}"
        reply: Any = await self._pick(keys=[zkey], args=[delta, self._rng.random(), *exclude])
        if not reply:
            return None
        node_id, _, worker_id = as_text(reply[0]).partition("|")
        return Candidate(worker_id, node_id, float(as_text(reply[1])))


class Candidate(NamedTuple):
    worker_id: str
    node_id: str
    load: float


def _member(s: WorkerSummary) -> str:
    return f"{s.node_id}|{s.worker_id}"


@dataclass(frozen=True)
class Handoff:
    """One durable message to a node: place `job_id` (preferably on `worker_id`) or terminate it there."""

    kind: str  # "offer" | "terminate"
    job_id: str
    worker_id: str = ""
    #: wall-clock ms at which the job's dispatch deadline passes (0 = the receiver's default)
    deadline_ms: int = 0
    resuming: bool = False
    from_node: str = ""
    entry_id: str = ""  # the stream entry (set on receipt)

    def fields(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "job": self.job_id,
            "worker": self.worker_id,
            "deadline_ms": str(self.deadline_ms),
            "resuming": "1" if self.resuming else "0",
            "from": self.from_node,
        }

    @classmethod
    def parse(cls, entry_id: object, fields: dict[object, object]) -> Handoff:
        f = {as_text(k): as_text(v) for k, v in fields.items()}
        return cls(
            kind=f.get("kind", "offer"),
            job_id=f.get("job", ""),
            worker_id=f.get("worker", ""),
            deadline_ms=int(f.get("deadline_ms", "0") or 0),
            resuming=f.get("resuming") == "1",
            from_node=f.get("from", ""),
            entry_id=as_text(entry_id),
        )


class HandoffStreams:
    """`hand:<node>` streams with one consumer group: send, read (pending first), ack, claim."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str, maxlen: int = 100_000) -> None:
        self._r = redis
        self._p = prefix
        self.node_id = node_id
        self.maxlen = maxlen

    def stream(self, node_id: str) -> str:
        return f"{self._p}hand:{node_id}"

    async def ensure_group(self, node_id: str) -> None:
        try:
            await self._r.xgroup_create(self.stream(node_id), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def send(self, node_id: str, handoff: Handoff) -> str:
        entry = await self._r.xadd(
            self.stream(node_id),
            handoff.fields(),  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
        return as_text(entry)

    async def read(self, block_ms: int, pending: bool = False, count: int = 100) -> list[Handoff]:
        """New entries for this node (blocking up to `block_ms`), or with `pending` the ones this
        consumer read before and never acknowledged (after a restart with the same node id)."""
        start = "0" if pending else ">"
        reply: Any = await self._r.xreadgroup(
            GROUP, self.node_id, {self.stream(self.node_id): start}, count=count,
            block=None if pending else block_ms,
        )  # fmt: skip
        out: list[Handoff] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # a pending entry trimmed away has no fields any more
                    out.append(Handoff.parse(entry_id, fields))
        return out

    async def ack(self, node_id: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._r.xack(self.stream(node_id), GROUP, *entry_ids)

    async def claim(self, dead_node: str, min_idle: float, count: int = 100) -> list[Handoff]:
        """Take over `dead_node`'s hand-offs: pending ones idle `min_idle` s, and never-read ones."""
        stream = self.stream(dead_node)
        out: list[Handoff] = []
        cursor = "0-0"
        while True:
            reply: Any = await self._r.xautoclaim(
                stream, GROUP, self.node_id, int(min_idle * 1000), start_id=cursor, count=count
            )
            cursor = as_text(reply[0])
            out.extend(Handoff.parse(eid, f) for eid, f in reply[1] if f)
            if cursor == "0-0":
                break
        unread: Any = await self._r.xreadgroup(GROUP, self.node_id, {stream: ">"}, count=10_000)
        for _stream, entries in unread or []:
            out.extend(Handoff.parse(eid, f) for eid, f in entries if f)
        return out
