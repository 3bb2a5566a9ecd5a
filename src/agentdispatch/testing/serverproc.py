"""The real dispatch server as a separate OS process, for tests and benchmarks.

A load generator must not share the server's event loop, so tests and benchmarks start
`agentdispatch server --dev --port <free port>` as a child process, wait until `GET /` answers 200,
and stop it at the end (SIGTERM, then SIGKILL). An optional py-spy recorder can be attached to it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from ..protocol import AgentDispatchError


class HarnessError(AgentDispatchError):
    """A test fixture or benchmark could not run (server did not start, a process died, a wait timed out)."""


@dataclass(frozen=True)
class ServerProcessSettings:
    #: 0 picks a free port on 127.0.0.1
    port: int = 0
    log_level: str = "WARNING"
    startup_timeout: float = 20.0
    #: extra `agentdispatch server` arguments, e.g. ("--dispatch-deadline", "60")
    extra_args: Sequence[str] = ()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Reaped:
    """What had to be forced when a process and its former children were reaped."""

    killed_main: bool
    killed_children: list[str]  # "pid (name)" of each child that outlived its parent


def reap_tree(proc: subprocess.Popen[bytes], tree: list[psutil.Process], timeout: float) -> Reaped:
    """Wait for `proc` (already asked to stop) and the children it had; SIGKILL what outlives `timeout`."""
    killed_main = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        killed_main = True
        proc.kill()
        proc.wait(timeout)
    _gone, alive = psutil.wait_procs(tree, timeout=timeout)
    killed: list[str] = []
    for child in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{child.pid} ({child.name()})")
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return Reaped(killed_main, killed)


def agentdispatch_command() -> list[str]:
    """The `agentdispatch` console script of this interpreter, or `python -m agentdispatch`."""
    script = Path(sys.executable).parent / "agentdispatch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agentdispatch"]


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `GET /` until it answers 200; raise HarnessError on timeout or if the process exits."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"server exited with code {proc.returncode} before answering GET /")
        try:
            with urllib.request.urlopen(url + "/", timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last_error = f"status {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise HarnessError(f"server at {url} not healthy within {timeout:g}s ({last_error})")


class ServerProcess:
    """`agentdispatch server --dev` in a child process; a context manager."""

    def __init__(self, settings: ServerProcessSettings = ServerProcessSettings()) -> None:
        self.settings = settings
        self.port = settings.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HarnessError("server process not started")
        return self._proc.pid

    @property
    def command(self) -> list[str]:
        return [
            *agentdispatch_command(),
            "server",
            "--dev",
            "--port",
            str(self.port),
            "--log-level",
            self.settings.log_level,
            *self.settings.extra_args,
        ]

    #: with an auto-picked port, how often to try a fresh port when the server exits at once
    START_ATTEMPTS = 3

    def start(self) -> None:
        """Start and wait until healthy. With an auto-picked port, a process that exits at once (the
        port was taken between picking and binding) is retried on a fresh port."""
        attempts = self.START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
            self._proc = proc
            try:
                wait_healthy(self.url, self.settings.startup_timeout, proc)
                return
            except HarnessError:
                exited = proc.poll() is not None
                self.stop()
                if not exited or self.settings.port or attempt == attempts:
                    raise
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (the server drains and closes its sockets), then SIGKILL; the exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
