"""Registered workers, indexed by the key jobs are matched on."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator

from .scheduler import LoadIndex
from .session import WorkerKey, WorkerSession


class WorkerRegistry:
    def __init__(self, per_job_load: float, rng: random.Random | None = None) -> None:
        self._per_job_load = per_job_load
        self._rng = rng or random.Random()
        self._workers: dict[str, WorkerSession] = {}
        self._index: dict[WorkerKey, LoadIndex] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self) -> Iterator[WorkerSession]:
        return iter(list(self._workers.values()))

    def get(self, worker_id: str) -> WorkerSession | None:
        return self._workers.get(worker_id)

    def add(self, session: WorkerSession) -> None:
        self._workers[session.id] = session
        for key in session.registration.worker_keys():
            self._index.setdefault(key, LoadIndex(self._rng))
        self.refresh(session)

    def remove(self, session: WorkerSession) -> None:
        if self._workers.pop(session.id, None) is None:
            return
        for key in session.registration.worker_keys():
            index = self._index.get(key)
            if index is not None:
                index.remove(session.id)
                if not len(index):
                    del self._index[key]

    def refresh(self, session: WorkerSession) -> None:
        """Re-rank a worker after its load, offers, or status changed."""
        if session.id not in self._workers:
            return
        projected = session.load.projected(self._per_job_load)
        eligible = session.eligible
        for key in session.registration.worker_keys():
            self._index[key].update(session.id, projected, eligible)

    def best(self, key: WorkerKey, exclude: Collection[str] = ()) -> WorkerSession | None:
        index = self._index.get(key)
        if index is None:
            return None
        worker_id = index.best(exclude)
        return None if worker_id is None else self._workers[worker_id]

    def has_key(self, key: WorkerKey) -> bool:
        return key in self._index

    def job_types(self, agent_name: str, namespace: str, deployment: str) -> set[int]:
        """Job types for which a worker with this name is registered (any status)."""
        dep = deployment or "*"
        return {k[2] for k in self._index if k[0] == agent_name and k[1] == namespace and k[3] == dep}
