"""The webhook delivery child process (`python -m agentdispatch.server.webhook_child`; see webhook_proc.py).

Reads length-prefixed frames from stdin — first the options as JSON, then one serialised
`WebhookEvent` per frame — hands them to a `WebhookSender`, and writes its counters as one JSON line
every STATS_INTERVAL seconds to stdout. Exits when stdin closes, after flushing for `flush_timeout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any

from livekit.protocol import webhook

from ..util import SYSTEM_CLOCK
from .webhook_proc import FRAME
from .webhooks import WebhookOptions, WebhookSender

STATS_INTERVAL = 0.25


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        header = await reader.readexactly(FRAME.size)
        return await reader.readexactly(FRAME.unpack(header)[0])
    except asyncio.IncompleteReadError:
        return None  # the server closed our stdin


async def run() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    first = await _read_frame(reader)
    if first is None:
        return
    raw: dict[str, Any] = json.loads(first)
    options = WebhookOptions(**{**raw, "urls": tuple(raw["urls"]), "events": frozenset(raw["events"])})
    sender = WebhookSender(options, SYSTEM_CLOCK)
    stats = asyncio.create_task(_report(sender), name="webhook-child:stats")
    try:
        while (data := await _read_frame(reader)) is not None:
            message = webhook.WebhookEvent()
            message.ParseFromString(data)
            sender.send(message)
    finally:
        await sender.aclose()
        stats.cancel()
        _write_stats(sender)


async def _report(sender: WebhookSender) -> None:
    while True:
        _write_stats(sender)
        await asyncio.sleep(STATS_INTERVAL)


def _write_stats(sender: WebhookSender) -> None:
    sys.stdout.write(json.dumps(dataclasses.asdict(sender.statistics())) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run())


if __name__ == "__main__":
    main()
