"""The chaos benchmark's fleet: real worker processes, SIGKILLed on purpose, and the server with its log.

Each worker is `agentdispatch worker start chaos_agent.py ...` (production mode) with its output in the
run directory. Killing is done with SIGKILL and measured: the wall time just before the signal, and the
moment each killed process (the worker's whole tree for a worker kill, the job process for a job kill)
was seen gone — a zombie counts as gone, it runs no code. Those moments bound when a killed job attempt
stopped running, which the double-run check needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ...protocol.urls import websocket_base
from ...testing.serverproc import (
    HarnessError,
    ServerProcess,
    ServerProcessSettings,
    agentdispatch_command,
    free_port,
    wait_healthy,
)

#: run by path in each worker process (a data file, not a module of the package)
AGENT_FILE = Path(__file__).resolve().parent / "agents" / "chaos_agent.py"
DEATH_POLL_INTERVAL = 0.002
DEATH_WATCH_TIMEOUT = 10.0


class LoggedServerProcess(ServerProcess):
    """`ServerProcess` with the server's stdout and stderr appended to a file (its INFO log explains a run).

    The redirection is done by `sh -c 'exec ...'`, so the pid is the server's own and signals reach it.
    """

    def __init__(self, settings: ServerProcessSettings, log_path: Path) -> None:
        super().__init__(settings)
        self.log_path = log_path

    @property
    def command(self) -> list[str]:
        return ["/bin/sh", "-c", 'exec "$@" >>"$0" 2>&1', str(self.log_path), *super().command]


@dataclass(frozen=True)
class FleetSettings:
    server_url: str
    run_dir: Path
    max_jobs: int
    log_level: str = "INFO"
    register_timeout: float = 30.0
    drain_timeout: float = 10.0
    agent_file: Path = AGENT_FILE
    api_key: str = "devkey"
    api_secret: str = "secret"


@dataclass
class WorkerProc:
    index: int
    popen: subprocess.Popen[bytes]
    http_url: str
    started_at: float
    registered_at: float | None = None
    killed_at: float | None = None
    exit_code: int | None = None
    start_failed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.popen.poll() is None


@dataclass(frozen=True)
class Death:
    """A process that went down because the driver SIGKILLed it (kind "job") or its worker ("worker")."""

    pid: int
    kind: str
    killed_at: float
    #: when the process was seen gone; None = still alive after DEATH_WATCH_TIMEOUT (it survived)
    died_at: float | None
    worker_index: int


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def watch_deaths(
    procs: list[psutil.Process], timeout: float = DEATH_WATCH_TIMEOUT
) -> dict[int, float | None]:
    """Poll until each process is gone; pid -> wall time it was seen gone (None if it outlived timeout)."""
    deaths: dict[int, float | None] = {}
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for proc in pending:
            if _gone(proc):
                deaths[proc.pid] = time.time()
            else:
                still.append(proc)
        pending = still
        if pending:
            time.sleep(DEATH_POLL_INTERVAL)
    for proc in pending:
        deaths[proc.pid] = None
    return deaths


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class Fleet:
    """Starts, kills and replaces worker processes; remembers every kill."""

    def __init__(self, settings: FleetSettings, log: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.log = log
        self.workers: list[WorkerProc] = []
        self.deaths: list[Death] = []
        self._registrations: set[asyncio.Task[WorkerProc]] = set()

    def command(self, port: int) -> list[str]:
        s = self.settings
        ws_url = websocket_base(s.server_url)
        return [
            *agentdispatch_command(),
            "worker",
            "start",
            str(s.agent_file),
            *("--url", ws_url, "--api-key", s.api_key, "--api-secret", s.api_secret),
            *("--max-jobs", str(s.max_jobs), "--log-level", s.log_level),
            *("--host", "127.0.0.1", "--port", str(port), "--drain-timeout", str(s.drain_timeout)),
        ]

    def start_worker(self) -> WorkerProc:
        index = len(self.workers)
        port = free_port()
        log_path = self.settings.run_dir / f"worker-{index}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                self.command(port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        worker = WorkerProc(index, popen, f"http://127.0.0.1:{port}", time.time())
        self.workers.append(worker)
        return worker

    async def start_registered(self, attempts: int = 3) -> WorkerProc:
        """Start a worker and wait until its `GET /` answers 200 (it registered with the server).

        A worker that exits at once (its HTTP port was taken between picking and binding) is retried.
        """
        for attempt in range(1, attempts + 1):
            worker = self.start_worker()
            try:
                await asyncio.to_thread(
                    wait_healthy, worker.http_url, self.settings.register_timeout, worker.popen
                )
            except HarnessError:
                if worker.popen.poll() is None or attempt == attempts:
                    raise
                worker.start_failed = True
                continue
            worker.registered_at = time.time()
            return worker
        raise HarnessError("unreachable")

    async def start_workers(self, count: int) -> None:
        await asyncio.gather(*(self.start_registered() for _ in range(count)))

    def replace_in_background(self) -> None:
        """Start a replacement worker; its registration is awaited by `settle()`."""
        task = asyncio.get_running_loop().create_task(self.start_registered(), name="replacement-worker")
        self._registrations.add(task)
        task.add_done_callback(self._registrations.discard)

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive]

    def assigned_jobs(self, worker: WorkerProc) -> list[str]:
        """Ids of the jobs the worker holds (running or waiting for a process), from its `GET /worker`."""
        try:
            with urllib.request.urlopen(worker.http_url + "/worker", timeout=2.0) as resp:
                info = json.load(resp)
            return sorted(str(job["id"]) for job in info.get("jobs", []))
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def job_pids(self, worker: WorkerProc) -> set[int]:
        return {p.pid for p in descendants(worker.pid)}

    async def kill_worker(self, worker: WorkerProc) -> list[Death]:
        """SIGKILL one worker; wait until it and every process under it are gone."""
        tree = [psutil.Process(worker.pid), *descendants(worker.pid)]
        worker.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        seen = await asyncio.to_thread(watch_deaths, tree)
        worker.exit_code = await asyncio.to_thread(worker.popen.wait)
        deaths = [Death(pid, "worker", worker.killed_at, at, worker.index) for pid, at in seen.items()]
        self.deaths.extend(deaths)
        return deaths

    async def kill_job(self, pid: int, worker: WorkerProc) -> Death | None:
        """SIGKILL one job process (psutil checks the pid was not reused); None if it was already gone."""
        try:
            proc = psutil.Process(pid)
            killed_at = time.time()
            proc.kill()
        except psutil.NoSuchProcess:
            return None
        seen = await asyncio.to_thread(watch_deaths, [proc])
        death = Death(pid, "job", killed_at, seen[pid], worker.index)
        self.deaths.append(death)
        return death

    async def settle(self) -> None:
        """Wait for replacement workers still registering."""
        if self._registrations:
            await asyncio.gather(*self._registrations, return_exceptions=True)

    async def stop_all(self) -> None:
        """SIGTERM every live worker (production mode drains), SIGKILL what is left after the drain."""
        await self.settle()
        live = self.live()
        for worker in live:
            with contextlib.suppress(ProcessLookupError):
                worker.popen.send_signal(signal.SIGTERM)
        timeout = self.settings.drain_timeout + 10.0
        for worker in live:
            try:
                worker.exit_code = await asyncio.to_thread(worker.popen.wait, timeout)
            except subprocess.TimeoutExpired:
                dump = await asyncio.to_thread(self._dump_hung, worker)
                self.log(f"worker {worker.index} (pid {worker.pid}) did not stop; SIGKILL (stacks: {dump})")
                worker.popen.kill()
                worker.exit_code = await asyncio.to_thread(worker.popen.wait)

    def _dump_hung(self, worker: WorkerProc) -> Path:
        """What a worker that ignores its SIGTERM is doing: its process tree and `py-spy dump` of each
        process (when py-spy is installed), into worker-<n>-hung.txt."""
        path = self.settings.run_dir / f"worker-{worker.index}-hung.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        lines = []
        for proc in [psutil.Process(worker.pid), *descendants(worker.pid)]:
            try:
                lines.append(
                    f"== pid {proc.pid} ppid {proc.ppid()} {proc.status()} {' '.join(proc.cmdline())[:200]}"
                )
            except psutil.Error as exc:
                lines.append(f"== pid {proc.pid}: {exc}")
                continue
            if os.path.exists(spy):
                try:
                    res = subprocess.run(
                        [spy, "dump", "--pid", str(proc.pid)], capture_output=True, timeout=20
                    )
                    lines.append(res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace"))
                except (OSError, subprocess.TimeoutExpired) as exc:
                    lines.append(f"py-spy dump failed: {exc}")
        path.write_text("\n".join(lines))
        return path

    def summary(self) -> dict[str, object]:
        unexpected = []
        for w in self.workers:
            code = w.exit_code if w.exit_code is not None else w.popen.poll()
            if w.killed_at is None and not w.start_failed and code not in (0, None):
                unexpected.append({"index": w.index, "pid": w.pid, "exit_code": code})
        return {
            "pids": [w.pid for w in self.workers],
            "processes_started": len(self.workers),
            "killed": sum(1 for w in self.workers if w.killed_at is not None),
            "start_retries": sum(1 for w in self.workers if w.start_failed),
            "never_registered": sum(
                1 for w in self.workers if w.registered_at is None and not w.start_failed
            ),
            "unexpected_exits": unexpected,
        }
