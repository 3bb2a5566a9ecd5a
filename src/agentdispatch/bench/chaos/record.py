"""What a chaos job writes about itself, and how the chaos driver reads it back.

Shared by `chaos_agent.py` (imported inside the workers' job processes) and the chaos driver. Standard
library only, so a job process pays nothing to import it.

A job learns where to write and how long to run from its dispatch metadata (JSON, see `job_metadata`).
Each job *attempt* (one process running one job) owns one file, ``attempt-<job id>-<pid>.json``, written
atomically (temporary file, then rename): once when the entrypoint starts (``end`` is null), and again
when it finishes (``end`` set). An attempt that was killed keeps ``end`` null: the driver knows when it
killed the process, or when it saw it die.

Times are wall-clock seconds (`time.time()`), one clock for every process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

ATTEMPT_PREFIX = "attempt-"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class JobPlan:
    """What the dispatch metadata tells a chaos job: where to record itself and how long to run."""

    run_dir: str
    duration: float


def job_metadata(run_dir: str, duration: float) -> str:
    return json.dumps({"chaos_dir": run_dir, "duration": round(duration, 4)})


def parse_job_metadata(metadata: str) -> JobPlan:
    """The plan in a chaos dispatch's metadata; ValueError when it is not one."""
    try:
        data = json.loads(metadata)
        return JobPlan(run_dir=str(data["chaos_dir"]), duration=float(data["duration"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not chaos job metadata: {metadata!r} ({exc})") from None


@dataclass(frozen=True)
class Attempt:
    """One process running one job, as the process recorded it."""

    job_id: str
    pid: int
    start: float
    #: when the entrypoint finished; None while running, or forever if the process was killed
    end: float | None
    dispatch_id: str = ""
    room: str = ""
    worker_id: str = ""
    ppid: int = 0

    @property
    def key(self) -> str:
        return attempt_file_name(self.job_id, self.pid)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "pid": self.pid,
            "start": self.start,
            "end": self.end,
            "dispatch_id": self.dispatch_id,
            "room": self.room,
            "worker_id": self.worker_id,
            "ppid": self.ppid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        end = data.get("end")
        return cls(
            job_id=str(data["job_id"]),
            pid=int(data["pid"]),
            start=float(data["start"]),
            end=None if end is None else float(end),
            dispatch_id=str(data.get("dispatch_id", "")),
            room=str(data.get("room", "")),
            worker_id=str(data.get("worker_id", "")),
            ppid=int(data.get("ppid", 0)),
        )


def attempt_file_name(job_id: str, pid: int) -> str:
    return f"{ATTEMPT_PREFIX}{job_id}-{pid}.json"


def write_attempt(run_dir: str, attempt: Attempt) -> None:
    """Write (or rewrite) the attempt's file atomically: a reader never sees half a record."""
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=_TMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(attempt.to_json(), fh)
        os.replace(tmp, os.path.join(run_dir, attempt.key))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_attempt(path: str) -> Attempt | None:
    """The attempt in one file, or None if it vanished or is not an attempt record."""
    try:
        with open(path) as fh:
            return Attempt.from_json(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def attempt_paths(run_dir: str) -> list[tuple[str, float]]:
    """(path, mtime) of every attempt file in the directory."""
    found = []
    with os.scandir(run_dir) as entries:
        for entry in entries:
            if entry.name.startswith(ATTEMPT_PREFIX) and entry.name.endswith(".json"):
                try:
                    found.append((entry.path, entry.stat().st_mtime))
                except FileNotFoundError:
                    continue
    return found
