"""Replay protection for Twirp calls: the same request id within the TTL gets the first answer.

Keys come from the `Idempotency-Key` header, or LiveKit's per-call `X-Livekit-Request-Id` (which its
client keeps when it retries a call). The keys and answers live in the Store, so on Redis a retry that
lands on another node is answered the same. Concurrent duplicates on one node wait for the first call;
a duplicate running on another node is polled until it finishes (or its reservation lapses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from ..util import SYSTEM_CLOCK, Clock
from .store import MemoryStore, ReplayState, Store

HEADERS = ("Idempotency-Key", "X-Livekit-Request-Id")
MAX_KEY_LEN = 200
#: seconds a call may hold its key before a duplicate elsewhere may run it again (a crashed node)
RESERVATION_TTL = 30.0
POLL_MIN, POLL_MAX = 0.01, 0.25


def request_key(method: str, headers: Mapping[str, str]) -> str | None:
    for name in HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return f"{method}|{value[:MAX_KEY_LEN]}"
    return None


def encode_reply(msg: Message) -> bytes:
    return msg.DESCRIPTOR.full_name.encode() + b"\n" + msg.SerializeToString()


def decode_reply(data: bytes) -> Message:
    name, _, body = data.partition(b"\n")
    desc = descriptor_pool.Default().FindMessageTypeByName(name.decode())
    msg: Message = message_factory.GetMessageClass(desc)()
    msg.ParseFromString(body)
    return msg


class IdempotencyCache:
    def __init__(self, store: Store | None = None, ttl: float = 600.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store: Store = store if store is not None else MemoryStore(clock=clock)
        self._ttl = ttl
        self._inflight: dict[str, asyncio.Future[Message]] = {}

    async def run(self, key: str | None, call: Callable[[], Awaitable[Message]]) -> Message:
        if key is None:
            return await call()
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self._run_once(key, call)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(result)
        return result

    async def _run_once(self, key: str, call: Callable[[], Awaitable[Message]]) -> Message:
        pause = POLL_MIN
        while True:
            replay = await self._store.reserve_request(key, RESERVATION_TTL)
            if replay.state is ReplayState.DONE:
                return decode_reply(replay.reply)
            if replay.state is ReplayState.NEW:
                break
            await asyncio.sleep(pause)  # the first call runs on another node: poll its outcome
            pause = min(pause * 2, POLL_MAX)
        try:
            result = await call()
        except BaseException:
            await self._store.abandon_request(key)
            raise
        await self._store.finish_request(key, encode_reply(result), self._ttl)
        return result
