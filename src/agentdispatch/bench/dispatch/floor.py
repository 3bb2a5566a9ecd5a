"""The receive floor of the idle-fleet benchmark: a server that only counts the bytes it is sent.

What receiving 4,000 small frames/s over 10,000 sockets costs at the least (epoll, recv, one loop
iteration per read), measured in the same run as the dispatch server, so the server's CPU per frame is
read against it. The floor is its own process (`python -m agentdispatch.bench.dispatch.floor`) on the
event loop `agentdispatch server` runs on (uvloop when installed), listening on 127.0.0.1 at an
ephemeral port with the server's listen backlog and its open-file limit raised as the server raises it.
Its protocol adds the length of each read to a counter and does nothing else: no parsing, no writes.

Control is one line at a time over stdin/stdout, no thread: the floor first prints a JSON line (port,
event loop, open-file limit); every line it reads on stdin is answered with one JSON line of counts
(`bytes`, `accepted`, `open`); end of stdin stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ...server.connguard import LISTEN_BACKLOG, raise_open_file_limit
from ...testing.serverproc import HarnessError

STARTUP_TIMEOUT = 30.0
REPLY_TIMEOUT = 10.0


@dataclass
class FloorCount:
    bytes: int = 0
    accepted: int = 0
    open: int = 0


class FloorProtocol(asyncio.Protocol):
    """One accepted connection: every read only adds its length to the shared count."""

    def __init__(self, count: FloorCount) -> None:
        self._count = count

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._count.accepted += 1
        self._count.open += 1

    def data_received(self, data: bytes) -> None:
        self._count.bytes += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._count.open -= 1


class _Control(asyncio.Protocol):
    """stdin: each line asks for the counts; end of input (the parent closed it or died) stops the floor."""

    def __init__(self, count: FloorCount, stopped: asyncio.Future[None]) -> None:
        self._count = count
        self._stopped = stopped
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        self._pending += data
        while b"\n" in self._pending:
            _, self._pending = self._pending.split(b"\n", 1)
            _say({"bytes": self._count.bytes, "accepted": self._count.accepted, "open": self._count.open})

    def eof_received(self) -> bool | None:
        self._stop()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_floor() -> None:
    limit = raise_open_file_limit()
    loop = asyncio.get_running_loop()
    count = FloorCount()
    server = await loop.create_server(
        lambda: FloorProtocol(count), "127.0.0.1", 0, backlog=LISTEN_BACKLOG, reuse_address=True
    )
    stopped: asyncio.Future[None] = loop.create_future()
    await loop.connect_read_pipe(lambda: _Control(count, stopped), sys.stdin)
    port = int(server.sockets[0].getsockname()[1])
    _say({"port": port, "event_loop": f"{type(loop).__module__}.{type(loop).__qualname__}", "nofile": limit})
    try:
        await stopped
    finally:
        server.close()


def main() -> None:
    # the server's own choice of loop (uvloop when installed), by the function the server uses
    from ...cli.server_cmd import run_event_loop

    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(serve_floor())


class FloorProcess:
    """The floor as a child process: `with FloorProcess() as floor:` then `floor.port`, `floor.counts()`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.port = 0
        self.event_loop = ""
        self.nofile = 0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HarnessError("the floor server is not running")
        return self._proc.pid

    def __enter__(self) -> FloorProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agentdispatch.bench.dispatch.floor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        try:
            hello = self._line(STARTUP_TIMEOUT)
        except BaseException:
            self._stop()
            raise
        self.port, self.event_loop, self.nofile = (
            int(hello["port"]),
            str(hello["event_loop"]),
            int(hello["nofile"]),
        )
        return self

    def counts(self) -> dict[str, int]:
        """Bytes received, connections accepted and open, as the floor counts them now."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"\n")
        return {key: int(value) for key, value in self._line(REPLY_TIMEOUT).items()}

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise HarnessError(f"the floor server was silent for {timeout:g} s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise HarnessError(f"the floor server exited ({self._proc.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()


if __name__ == "__main__":
    main()
