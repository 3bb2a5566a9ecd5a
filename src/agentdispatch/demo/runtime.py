"""Demo workers as the real worker runtime: registered workers whose jobs run in their own processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..server import DEV_KEYS
from ..testing.serverproc import HarnessError
from ..util.aio import wait_for
from ..worker.options import WorkerOptions
from ..worker.runtime import Worker

ENTRYPOINT = "agentdispatch.demo.agent:entrypoint"
REGISTER_TIMEOUT = 30.0


def constant_load(value: float) -> Callable[[], float]:
    def load() -> float:
        return value

    return load


class RuntimeWorkerSource:
    """Starts `agentdispatch.worker` Workers in this process (job processes are real OS processes)."""

    def __init__(self, idle_processes: int = 1) -> None:
        self._idle = idle_processes
        self._workers: list[Worker] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def start_worker(self, url: str, spec: Any) -> str:
        key, secret = next(iter(DEV_KEYS.items()))
        options = WorkerOptions(
            entrypoint_fnc=ENTRYPOINT,
            agent_name=spec.agent_name,
            ws_url=url,
            api_key=key,
            api_secret=secret,
            host="127.0.0.1",
            port=0,
            num_idle_processes=self._idle,
            load_fnc=constant_load(spec.load),
            load_threshold=0.95,
            initialize_process_timeout=30.0,  # generous: a busy laptop or CI box must not fail the demo
            log_level="WARNING",
        ).resolve(production=False)
        worker = Worker(options)
        task = asyncio.get_running_loop().create_task(worker.run(), name=f"demo-worker:{spec.name}")
        self._workers.append(worker)
        self._tasks.append(task)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTER_TIMEOUT
        while not worker.id:
            if task.done():
                raise HarnessError(f"worker {spec.name} stopped before registering: {task.exception()!r}")
            if loop.time() > deadline:
                raise HarnessError(f"worker {spec.name} did not register within {REGISTER_TIMEOUT:g}s")
            await asyncio.sleep(0.02)
        return worker.id

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(asyncio.shield(task), 15)
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
