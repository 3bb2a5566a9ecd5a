"""One benchmarked worker as seen from outside: its program, its process tree, its records.

Both workers (ours and livekit-agents) run the same little agent (`agents/ours_agent.py`,
`agents/lk_agent.py`) as a script in production mode (`start`), and both start their job processes
through a multiprocessing **forkserver**. Their process trees therefore have the same shape, and one rule
classifies both:

- ``main``: the worker process itself (connection, load, pool supervision, HTTP);
- ``forkserver``: the template every job process is forked from (holds the preloaded modules);
- ``resource_tracker``: multiprocessing's helper, started with the forkserver;
- ``idle``: a child of the forkserver whose prewarm has run (it wrote ``ready-<pid>.json``), that has not
  run a job and is still alive — a prewarmed process waiting for a job;
- ``starting`` / ``job``: a forkserver child before its prewarm finished / one that took a job;
- ``other``: anything else (e.g. livekit-agents' inference process, when plugins register one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ...testing.serverproc import HarnessError, reap_tree
from .record import IDLE_ENV, JOB_PREFIX, OUT_ENV, READY_PREFIX

#: the agent scripts: data files run by path in the worker processes, never imported by the package
AGENTS = Path(__file__).resolve().parent / "agents"
STOP_TIMEOUT = 15.0
LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class WorkerSpec:
    """Which worker to run: a label (also its agent_name) and the agent script."""

    kind: str
    script: Path
    description: str


OURS = WorkerSpec("ours", AGENTS / "ours_agent.py", "agentdispatch worker runtime")
LIVEKIT = WorkerSpec("lk", AGENTS / "lk_agent.py", "livekit-agents")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    role: str
    cmdline: str


def livekit_agents_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("livekit-agents")
    except PackageNotFoundError:
        return "not installed"


class WorkerProcess:
    """A worker program started by the benchmark; `root` holds its output directory and its log."""

    def __init__(self, spec: WorkerSpec, root: Path, command: list[str], idle: int) -> None:
        self.spec = spec
        self.out_dir = root / f"out-{spec.kind}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"worker-{spec.kind}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "LK_"))}
        env.update({OUT_ENV: str(self.out_dir), IDLE_ENV: str(idle), "PYTHONUNBUFFERED": "1"})
        self.command = command
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)
        self._seen: set[str] = set()
        #: dispatch id -> one record per run of its job, in start order (a job restarted by the server
        #: after its process failed runs again, in another process)
        self._jobs: dict[str, list[dict[str, Any]]] = {}
        self._ready: dict[int, dict[str, Any]] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise HarnessError(
                f"{self.spec.description} worker exited with code {self.proc.returncode}\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return text[-LOG_TAIL_CHARS:]

    # -- records ---------------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Read the record files not read before (each is written once, atomically)."""
        for entry in os.scandir(self.out_dir):
            name = entry.name
            if name in self._seen or not name.endswith(".json"):
                continue
            if name.startswith(JOB_PREFIX):
                record = json.loads(Path(entry.path).read_text())
                runs = self._jobs.setdefault(record["dispatch_id"], [])
                runs.append(record)
                runs.sort(key=lambda r: int(r["mono_ns"]))
            elif name.startswith(READY_PREFIX):
                record = json.loads(Path(entry.path).read_text())
                self._ready[int(record["pid"])] = record
            else:
                continue
            self._seen.add(name)

    def job_record(self, dispatch_id: str) -> dict[str, Any] | None:
        """What the entrypoint of this dispatch's job recorded the first time it ran."""
        if dispatch_id not in self._jobs:
            self._scan()
        runs = self._jobs.get(dispatch_id)
        return runs[0] if runs else None

    def job_runs(self, dispatch_id: str) -> list[dict[str, Any]]:
        """Every run of this dispatch's job so far (more than one: the server restarted it)."""
        self._scan()
        return list(self._jobs.get(dispatch_id, []))

    def ready_records(self) -> dict[int, dict[str, Any]]:
        """pid -> what prewarm recorded."""
        self._scan()
        return dict(self._ready)

    def job_pids(self) -> set[int]:
        self._scan()
        return {int(r["pid"]) for runs in self._jobs.values() for r in runs}

    # -- process tree ----------------------------------------------------------------------------------
    def classify(self) -> list[ProcInfo]:
        """Every live process of the worker's tree, with its role (see the module docstring)."""
        ready = self.ready_records()
        job_pids = self.job_pids()
        found = [ProcInfo(self.pid, "main", _cmdline(self.ps))]
        try:
            children = self.ps.children(recursive=True)
        except psutil.Error:
            return found
        forkservers = set()
        for child in children:
            if "multiprocessing.forkserver" in _cmdline(child) and _parent(child) == self.pid:
                forkservers.add(child.pid)
        for child in children:
            if not _alive(child):
                continue
            cmd = _cmdline(child)
            if child.pid in forkservers:
                role = "forkserver"
            elif "multiprocessing.resource_tracker" in cmd:
                role = "resource_tracker"
            elif _parent(child) in forkservers:
                role = "job" if child.pid in job_pids else "idle" if child.pid in ready else "starting"
            else:
                role = "other"
            found.append(ProcInfo(child.pid, role, cmd))
        return found

    def idle_pids(self) -> list[int]:
        return sorted(p.pid for p in self.classify() if p.role == "idle")

    # -- stop ------------------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """SIGTERM (production mode drains; no job is running), then SIGKILL what is left of the tree."""
        try:
            tree = self.ps.children(recursive=True)
        except psutil.Error:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        reaped = reap_tree(self.proc, tree, STOP_TIMEOUT)
        problems = []
        if reaped.killed_main:
            problems.append(f"{self.spec.kind} worker ignored SIGTERM for {STOP_TIMEOUT:g}s; killed")
        problems += [
            f"process {c} of the {self.spec.kind} worker outlived it; killed" for c in reaped.killed_children
        ]
        return problems


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _parent(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
