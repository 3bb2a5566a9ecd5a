"""Imported last by the forkserver's preload: imports the child main, runs the job start path a few times
(`main.rehearse_in_forkserver`), then moves every object loaded so far out of the garbage collector's
reach (`gc.freeze()`), so forked job processes share all of it and do not copy those pages when GC runs."""

from __future__ import annotations

import gc

from . import main as main

main.rehearse_in_forkserver()
gc.collect()
gc.freeze()
