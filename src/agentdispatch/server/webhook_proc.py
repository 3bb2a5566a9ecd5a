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
from ..util.aio import wait_for
from .events import Event
from .metrics import WebhookStats
from .webhooks import WebhookOptions, to_webhook_event, webhook_name

log = logging.getLogger("agentdispatch.server.webhooks")

FRAME = struct.Struct(">I")
#: seconds before a child that died is replaced
RESTART_DELAY = 1.0


def frame(data: bytes) -> bytes:
    """One length-prefixed message on the pipe."""
    return FRAME.pack(len(data)) + data


class WebhookProcess:
    """The server side: same interface as WebhookSender (on_event, statistics, aclose), plus start().

    A child that dies is replaced after RESTART_DELAY; the events it held are counted as dropped and
    what waits in the backlog goes to the new one.
    """

    def __init__(self, options: WebhookOptions, clock: Clock = SYSTEM_CLOCK) -> None:
        self._options = options
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._backlog: deque[bytes] = deque()
        self._partial = False  # backlog[0] is the rest of a frame the current child got half of
        self._writer_fd: int | None = None
        self._child_stats = WebhookStats(0, 0, 0, 0)
        self._earlier = WebhookStats(0, 0, 0, 0)  # what children before this one did
        self._dropped_here = 0
        self._closing = False
        self.restarts = 0
        self._tasks = TaskSet("webhook-process")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child (from the running event loop, before the first event)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentdispatch.server.webhook_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        if proc.stdin is None or proc.stdout is None:
            raise ServerError("webhook delivery process started without pipes")
        options = {**dataclasses.asdict(self._options), "events": sorted(self._options.events)}
        proc.stdin.write(frame(json.dumps(options).encode()))  # the first frame: the options
        proc.stdin.flush()
        os.set_blocking(proc.stdin.fileno(), False)
        self._proc = proc
        self._child_stats = WebhookStats(0, 0, 0, 0)
        self._tasks.spawn(self._watch(proc), f"watch:{proc.pid}")
        log.info("webhook delivery process started", extra={"pid": proc.pid})
        self._flush()

    def statistics(self) -> WebhookStats:
        e, c = self._earlier, self._child_stats
        return WebhookStats(
            e.delivered + c.delivered,
            e.failed_attempts + c.failed_attempts,
            e.dropped + c.dropped + self._dropped_here,
            c.queued + len(self._backlog),
        )

    def on_event(self, event: Event) -> None:
        if self._closing or (self._options.events and webhook_name(event) not in self._options.events):
            return
        message = to_webhook_event(event, self._clock)
        if message is None:
            return
        self._backlog.append(frame(message.SerializeToString()))
        if len(self._backlog) > self._options.queue_size:
            self._backlog.popleft()
            self._dropped_here += 1
            if not self._backlog:
                self._partial = False
        if self._writer_fd is None:
            self._flush()

    def _flush(self) -> None:
        """Write what the pipe takes now; wait for it to drain (add_writer) when it is full."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        fd = proc.stdin.fileno()
        try:
            while self._backlog:
                head = self._backlog[0]
                written = os.write(fd, head)
                if written < len(head):
                    self._backlog[0], self._partial = head[written:], True
                    break
                self._backlog.popleft()
                self._partial = False
        except BlockingIOError:
            pass
        except OSError as exc:  # the child is gone: _watch replaces it
            log.error("webhook delivery process not reading: %s", exc, extra={"pid": proc.pid})
            self._disarm()
            return
        if self._backlog and self._writer_fd is None:
            asyncio.get_running_loop().add_writer(fd, self._flush)
            self._writer_fd = fd
        elif not self._backlog:
            self._disarm()

    def _disarm(self) -> None:
        if self._writer_fd is not None:
            asyncio.get_running_loop().remove_writer(self._writer_fd)
            self._writer_fd = None

    async def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the child's counters until it ends; replace it unless we are closing."""
        if proc.stdout is None:
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError, TypeError):
                    self._child_stats = WebhookStats(**json.loads(line))
        finally:
            transport.close()
        if self._closing or self._proc is not proc:
            return
        code = await asyncio.to_thread(proc.wait)
        lost = self._child_stats.queued
        log.error(
            "webhook delivery process exited (code %s); %d queued events lost; restarting",
            code,
            lost,
            extra={"pid": proc.pid},
        )
        self._disarm()
        c, e = self._child_stats, self._earlier
        self._earlier = WebhookStats(
            e.delivered + c.delivered, e.failed_attempts + c.failed_attempts, e.dropped + c.dropped + lost, 0
        )
        self._child_stats = WebhookStats(0, 0, 0, 0)
        self._proc = None
        if self._partial and self._backlog:  # half a frame went to the dead child
            self._backlog.popleft()
            self._partial = False
            self._dropped_here += 1
        await asyncio.sleep(RESTART_DELAY)
        if not self._closing:
            self.restarts += 1
            self.start()

    async def aclose(self) -> None:
        self._closing = True
        proc, self._proc = self._proc, None
        self._disarm()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(proc.stdin.fileno(), True)
                for pending in self._backlog:
                    proc.stdin.write(pending)
                proc.stdin.close()  # EOF: the child flushes and exits
            self._backlog.clear()
            try:
                await wait_for(asyncio.to_thread(proc.wait), self._options.flush_timeout + 5)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        await self._tasks.aclose()
