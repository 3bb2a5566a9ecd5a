"""The load index: candidates for one worker key ordered by projected load (pure: no I/O, no clock).

A worker's *projected* load is its last reported load plus, for every job offered or assigned
to it since that report, a per-job estimate. The best candidate has the lowest projection;
among equal projections, the one holding fewer jobs (running + on offer); then at random. The
index keeps a heap with lazy deletion, so picking among thousands of workers costs O(log n)
instead of a scan.

A heap entry is `(projected, held, stamp, worker_id)`, one per worker and key while nothing changes
(issue 12, P4: memory per idle worker). `held` matters when workers report the same load whatever they
run (a constant or capacity-only `load_fnc`): without it, a report would make a worker running six jobs
and an empty one a coin toss. The stamp is one int: random high bits (the tie-break) over a
counter (unique, so no two entries compare equal); the worker's current stamp, negated while it is
not eligible, is what marks older entries stale.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection

#: bits of an entry's stamp taken by the update counter (below them: random tie-break bits above)
COUNTER_BITS = 40
TIE_BREAK_BITS = 20

Entry = tuple[float, int, int, str]


class LoadIndex:
    """Candidates for one worker key, ordered by projected load."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._heap: list[Entry] = []
        self._version: dict[str, int] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._version)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._version

    def update(self, worker_id: str, projected: float, eligible: bool, held: int = 0) -> None:
        """Record a worker's new projection and the jobs it holds; an ineligible worker is kept but
        never picked."""
        self._counter += 1
        stamp = self._rng.getrandbits(TIE_BREAK_BITS) << COUNTER_BITS | self._counter
        self._version[worker_id] = stamp if eligible else -stamp
        if eligible:
            heapq.heappush(self._heap, (projected, held, stamp, worker_id))
        self._compact_if_needed()

    def remove(self, worker_id: str) -> None:
        self._version.pop(worker_id, None)

    def best(self, exclude: Collection[str] = (), accept: Callable[[str], bool] | None = None) -> str | None:
        """The eligible worker with the lowest projection, not in `exclude` and passing `accept`."""
        heap = self._heap
        skipped: list[Entry] = []
        found: str | None = None
        while heap:
            entry = heap[0]
            worker_id = entry[3]
            if self._version.get(worker_id) != entry[2]:
                heapq.heappop(heap)  # stale entry
                continue
            if worker_id in exclude or (accept is not None and not accept(worker_id)):
                skipped.append(heapq.heappop(heap))
                continue
            found = worker_id
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def _compact_if_needed(self) -> None:
        if len(self._heap) > 64 and len(self._heap) > 4 * max(1, len(self._version)):
            self._heap = [e for e in self._heap if self._version.get(e[3]) == e[2]]
            heapq.heapify(self._heap)
