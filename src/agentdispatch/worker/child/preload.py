"""Imported first by the forkserver's preload (in the forkserver only, never in the worker).

- The forkserver ignores SIGTERM: a signal to the whole process group (systemd, container inits) must not
  take it down while the worker drains; it exits by itself when the worker exits.
- When it exits (its worker is gone: the worker holds the other end of its "alive" pipe), it SIGKILLs
  every process below it first: the job processes and whatever they started, even in a new session.
  Job processes also have a parent-death signal tied to the forkserver (`child.main`), so none outlives
  it even if this cleanup cannot run (the forkserver SIGKILLed too).
- It loads the worker's `__main__` the way each job process would (CPython 3.11's forkserver never
  receives the main path: its preparation data key is `init_main_from_path`/`init_main_from_name`, the
  forkserver looks for `main_path`), and the agent files named by path. Forked job processes then find
  them already imported instead of importing them again each (memory and start time).

The worker passes what to load in the environment variable `PRELOAD_ENV` (JSON), set before it starts the
forkserver.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import sys
import traceback
from multiprocessing import process, spawn
from typing import Any

import psutil

from ..ipc import PRELOAD_ENV
from ..refs import load_module_from_path

MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _guarded(main: dict[str, Any]) -> bool:
    """Run the main here only if it keeps its program under `if __name__ == "__main__":` (as job processes
    require); a main without the guard would run its program in the forkserver. Job processes then import
    it themselves, as multiprocessing does."""
    path = main.get("init_main_from_path")
    if not isinstance(path, str):
        name = main.get("init_main_from_name")
        if not isinstance(name, str) or name.endswith("__main__"):  # multiprocessing skips those too
            return False
        spec = importlib.util.find_spec(name)
        path = spec.origin if spec is not None else None
    try:
        with open(str(path), encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return False
    return "__main__" in source


def _load(payload: dict[str, Any]) -> None:
    for path in payload.get("sys_path") or []:
        if isinstance(path, str) and path not in sys.path:
            sys.path.append(path)
    main = payload.get("main") or {}
    if isinstance(main, dict) and main and _guarded(main):
        current = process.current_process()
        current._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing's own preload does
        try:
            spawn.prepare({k: v for k, v in main.items() if k in MAIN_KEYS})
        finally:
            del current._inheriting  # type: ignore[attr-defined]
    for path in payload.get("paths") or []:
        if isinstance(path, str):
            load_module_from_path(path)


def _reap_job_trees(forkserver_pid: int) -> None:
    """At the forkserver's exit: SIGKILL every descendant (job processes and what they started)."""
    if os.getpid() != forkserver_pid:  # a forked job process inherits the handler; it exits with os._exit
        return
    try:
        below = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for proc in reversed(below):  # the deepest first
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _preload() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    atexit.register(_reap_job_trees, os.getpid())
    raw = os.environ.pop(PRELOAD_ENV, "")
    if not raw:
        return
    try:
        _load(json.loads(raw))
    except Exception:  # noqa: BLE001 - user code: each job process imports it again and reports the error
        sys.stderr.write("agentdispatch forkserver: preloading the agent failed (job processes retry):\n")
        traceback.print_exc()


_preload()
