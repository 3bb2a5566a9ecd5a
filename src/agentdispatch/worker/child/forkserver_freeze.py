"""Imported last by the forkserver's preload: moves every object loaded so far out of the garbage
collector's reach (`gc.freeze()`), so forked job processes do not copy those pages when GC runs.
Also imports the child main so it is shared by every job process."""

from __future__ import annotations

import gc

from . import main as main

gc.freeze()
