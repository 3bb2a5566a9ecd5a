"""Run a worker as a program: signal handling (drain in production), exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from ..protocol import WorkerError
from .options import ResolvedOptions
from .runtime import Tuning, Worker

log = logging.getLogger("agentdispatch.worker")

EXIT_OK, EXIT_FAILED, EXIT_ABORTED = 0, 1, 130


class SignalPolicy:
    """First SIGTERM/SIGINT: drain (production) or stop (dev). Second: kill every job process and exit."""

    def __init__(self, worker: Worker, production: bool) -> None:
        self._worker = worker
        self._production = production
        self.count = 0

    def __call__(self, sig: signal.Signals) -> None:
        self.count += 1
        if self.count > 1:
            log.warning("second %s: exiting now", sig.name)
            self._worker.abort()
        elif self._production:
            log.info("%s received: draining (a second signal exits at once)", sig.name)
            self._worker.begin_drain()
        else:
            log.info("%s received: stopping (a second signal exits at once)", sig.name)
            self._worker.stop()


async def serve(options: ResolvedOptions, tuning: Tuning | None = None) -> int:
    """Run a worker until it is stopped; return the process exit code."""
    worker = Worker(options, tuning)
    loop = asyncio.get_running_loop()
    policy = SignalPolicy(worker, options.production)
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, policy, sig)
            installed.append(sig)
    gc.collect()
    gc.freeze()  # the program's modules and options: a full collection no longer walks them (~10 ms each)
    try:
        await worker.run()
    except WorkerError as exc:
        log.error("worker stopped: %s", exc)
        return EXIT_FAILED
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return EXIT_ABORTED if worker.aborted else EXIT_OK


def run(options: ResolvedOptions) -> int:
    return asyncio.run(serve(options))
