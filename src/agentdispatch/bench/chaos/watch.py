"""The chaos driver's view of job attempts: the records jobs write, and which attempt processes still live.

`AttemptIndex.refresh()` re-reads only attempt files that are new or changed, so it can run every few
hundred milliseconds during a run of thousands of jobs. `notice_deaths()` checks the processes of
attempts that have no end yet: one that is gone without having been killed by the driver is noted with
the time it was first seen gone (an upper bound of its end), so that no attempt is left with an
unknown end.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import psutil

from .record import Attempt, attempt_paths, read_attempt

#: a pid whose process was created this much after the attempt started belongs to someone else
PID_REUSE_SLACK = 1.0


def attempt_process_alive(attempt: Attempt) -> bool:
    """Whether the process that wrote this attempt still runs (a zombie does not run)."""
    try:
        proc = psutil.Process(attempt.pid)
        if proc.create_time() > attempt.start + PID_REUSE_SLACK:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def kill_attempt_process(attempt: Attempt) -> None:
    """SIGKILL the process of an attempt, if it is still that process."""
    try:
        proc = psutil.Process(attempt.pid)
        if proc.create_time() <= attempt.start + PID_REUSE_SLACK:
            proc.kill()
    except psutil.Error:
        pass


class AttemptIndex:
    """Every attempt record in a run directory, kept up to date incrementally."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.attempts: dict[str, Attempt] = {}
        self.first_seen: dict[str, float] = {}
        #: attempt key -> wall time its process was first seen gone (attempts with no end record only)
        self.noticed_dead: dict[str, float] = {}
        self._mtimes: dict[str, float] = {}

    def refresh(self) -> None:
        now = time.time()
        for path, mtime in attempt_paths(str(self.run_dir)):
            if self._mtimes.get(path) == mtime:
                continue
            attempt = read_attempt(path)
            if attempt is None:
                continue
            self._mtimes[path] = mtime
            self.attempts[attempt.key] = attempt
            self.first_seen.setdefault(attempt.key, now)
            if attempt.end is not None:
                self.noticed_dead.pop(attempt.key, None)

    def running(self) -> list[Attempt]:
        """Attempts with no end record whose process has not been seen gone."""
        return [a for a in self.attempts.values() if a.end is None and a.key not in self.noticed_dead]

    def notice_deaths(self) -> None:
        now = time.time()
        for attempt in self.running():
            if not attempt_process_alive(attempt):
                self.noticed_dead[attempt.key] = now

    def survivors(self) -> list[Attempt]:
        """Attempts whose process still runs (call after the fleet stopped: none should)."""
        return [a for a in self.attempts.values() if a.end is None and attempt_process_alive(a)]

    def by_job(self) -> dict[str, list[Attempt]]:
        jobs: dict[str, list[Attempt]] = {}
        for attempt in self.attempts.values():
            jobs.setdefault(attempt.job_id, []).append(attempt)
        for attempts in jobs.values():
            attempts.sort(key=lambda a: a.start)
        return jobs

    def finished_jobs(self) -> Collection[str]:
        return {a.job_id for a in self.attempts.values() if a.end is not None}
