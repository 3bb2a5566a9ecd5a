"""Webhook delivery in a child process: the server's loop only encodes each event and writes it to a pipe.

A webhook costs about 0.3 ms of CPU (HTTP request and response, JSON, signature; docs/operations.md, Cost).
`WebhookProcess` keeps that off the dispatch loop: it builds the `WebhookEvent`, serialises it as protobuf
and writes it, length-prefixed, to the stdin of `python -m agentdispatch.server.webhook_proc`, which runs a
`WebhookSender` (queues, lanes, retries, signatures; `webhook_child.py`) and reports its counters as
JSON lines on stdout. The first frame carries the options (with the signing secret: never on the
command line). The child
exits when its stdin closes (the server stopped or died), after flushing for up to `flush_timeout`.
A pipe that is full (the child is behind) buffers in the parent up to `queue_size` events, then drops the
oldest, counted like the child's own drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import struct
import subprocess
import sys
from collections import deque

from ..protocol.errors import ServerError
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from .events import Event
from .metrics import WebhookStats
from .webhooks import WebhookOptions, to_webhook_event, webhook_name

log = logging.getLogger("agentdispatch.server.webhooks")

FRAME = struct.Struct(">I")


def frame(data: bytes) -> bytes:
    """One length-prefixed message on the pipe."""
    return FRAME.pack(len(data)) + data


class WebhookProcess:
    """The server side: same interface as WebhookSender (on_event, statistics, aclose), plus start()."""

    def __init__(self, options: WebhookOptions, clock: Clock = SYSTEM_CLOCK) -> None:
        self._options = options
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._backlog: deque[bytes] = deque()
        self._writer_armed = False
        self._child_stats = WebhookStats(0, 0, 0, 0)
        self._dropped_here = 0
        self._tasks = TaskSet("webhook-process")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child (call from the running event loop, before the first event)."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agentdispatch.server.webhook_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        if self._proc.stdin is None or self._proc.stdout is None:
            raise ServerError("webhook delivery process started without pipes")
        options = {**dataclasses.asdict(self._options), "events": sorted(self._options.events)}
        self._proc.stdin.write(frame(json.dumps(options).encode()))  # the first frame: the options
        self._proc.stdin.flush()
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._tasks.spawn(self._read_stats(), "stats")
        log.info("webhook delivery process started", extra={"pid": self._proc.pid})

    def statistics(self) -> WebhookStats:
        s = self._child_stats
        return WebhookStats(s.delivered, s.failed_attempts, s.dropped + self._dropped_here,
                            s.queued + len(self._backlog))  # fmt: skip

    def on_event(self, event: Event) -> None:
        if self._proc is None or (self._options.events and webhook_name(event) not in self._options.events):
            return
        message = to_webhook_event(event, self._clock)
        if message is None:
            return
        self._backlog.append(frame(message.SerializeToString()))
        if len(self._backlog) > self._options.queue_size:
            self._backlog.popleft()
            self._dropped_here += 1
        if not self._writer_armed:
            self._flush()

    def _flush(self) -> None:
        """Write what the pipe takes now; wait for it to drain (add_writer) when it is full."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        fd = proc.stdin.fileno()
        try:
            while self._backlog:
                frame = self._backlog[0]
                written = os.write(fd, frame)
                if written < len(frame):
                    self._backlog[0] = frame[written:]
                    break
                self._backlog.popleft()
        except BlockingIOError:
            pass
        except (BrokenPipeError, OSError) as exc:
            log.error("webhook delivery process gone: %s", exc, extra={"pid": proc.pid})
            self._dropped_here += len(self._backlog)
            self._backlog.clear()
        loop = asyncio.get_running_loop()
        if self._backlog and not self._writer_armed:
            loop.add_writer(fd, self._flush)
            self._writer_armed = True
        elif not self._backlog and self._writer_armed:
            loop.remove_writer(fd)
            self._writer_armed = False

    async def _read_stats(self) -> None:
        stdout = self._proc.stdout if self._proc is not None else None
        if stdout is None:
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdout)
        while line := await reader.readline():
            with contextlib.suppress(ValueError, TypeError):
                self._child_stats = WebhookStats(**json.loads(line))

    async def aclose(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        if self._writer_armed:
            asyncio.get_running_loop().remove_writer(proc.stdin.fileno())
            self._writer_armed = False
        with contextlib.suppress(OSError):
            os.set_blocking(proc.stdin.fileno(), True)
            for frame in self._backlog:
                proc.stdin.write(frame)
            proc.stdin.close()  # EOF: the child flushes and exits
        self._backlog.clear()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), self._options.flush_timeout + 5)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        await self._tasks.aclose()
