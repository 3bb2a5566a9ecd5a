"""Replay protection for Twirp calls: the same request id within the TTL gets the first answer.

Keys come from the `Idempotency-Key` header, or LiveKit's per-call `X-Livekit-Request-Id` (which its
client keeps when it retries a call). Concurrent duplicates wait for the first call to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from google.protobuf.message import Message

from ..util import SYSTEM_CLOCK, Clock

HEADERS = ("Idempotency-Key", "X-Livekit-Request-Id")
MAX_KEY_LEN = 200


def request_key(method: str, headers: Mapping[str, str]) -> str | None:
    for name in HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return f"{method}|{value[:MAX_KEY_LEN]}"
    return None


class IdempotencyCache:
    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._done: dict[str, tuple[float, Message]] = {}
        self._inflight: dict[str, asyncio.Future[Message]] = {}

    async def run(self, key: str | None, call: Callable[[], Awaitable[Message]]) -> Message:
        if key is None:
            return await call()
        now = self._clock.monotonic()
        hit = self._done.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await call()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(result)
        self._remember(key, now, result)
        return result

    def _remember(self, key: str, now: float, result: Message) -> None:
        while len(self._done) >= self._max:
            self._done.pop(next(iter(self._done)))
        self._done[key] = (now + self._ttl, result)
