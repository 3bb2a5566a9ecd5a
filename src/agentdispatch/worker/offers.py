"""Offers: job slots (the exact `max_jobs` cap) and `JobRequest`, the request_fnc argument.

A slot is reserved synchronously when an offer arrives (so 50 simultaneous offers can never take more
than `max_jobs` slots), and released on reject, request_fnc timeout, assignment timeout, or when the
job's process ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from livekit.protocol import agent

from ..protocol import WorkerError
from ..util import TaskSet
from .facts import JobFacts
from .ipc import AcceptArguments

log = logging.getLogger("agentdispatch.worker.offers")

ASSIGNMENT_TIMEOUT = 7.5  # seconds to wait for JobAssignment after accepting (as livekit-agents)


class SlotTable:
    """Job ids holding a slot: offers being decided or accepted, and running jobs."""

    def __init__(self, max_jobs: int | None) -> None:
        self.max_jobs = max_jobs
        self._held: set[str] = set()

    @property
    def used(self) -> int:
        return len(self._held)

    @property
    def full(self) -> bool:
        return self.max_jobs is not None and len(self._held) >= self.max_jobs

    def reserve(self, job_id: str) -> bool:
        if job_id in self._held:
            return True
        if self.full:
            return False
        self._held.add(job_id)
        return True

    def release(self, job_id: str) -> bool:
        if job_id in self._held:
            self._held.discard(job_id)
            return True
        return False

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held


@dataclass(frozen=True)
class OfferAnswer:
    available: bool
    terminate: bool = False
    accept: AcceptArguments | None = None
    why: str = ""  # for logs: why it was declined

    def to_proto(self, job_id: str) -> agent.AvailabilityResponse:
        resp = agent.AvailabilityResponse(job_id=job_id, available=self.available, terminate=self.terminate)
        if self.accept is not None:
            resp.participant_identity = self.accept.identity
            resp.participant_name = self.accept.name
            resp.participant_metadata = self.accept.metadata
            resp.participant_attributes.update(dict(self.accept.attributes))
        return resp


class JobRequest(JobFacts):
    """An offered job. Call exactly one of `accept()` / `reject()`; a second answer raises WorkerError."""

    def __init__(self, job: agent.Job, resuming: bool = False) -> None:
        self._job = job
        self._resuming = resuming
        self._answer: asyncio.Future[OfferAnswer] = asyncio.get_running_loop().create_future()

    @property
    def id(self) -> str:
        return self._job.id

    publisher = JobFacts.participant

    @property
    def agent_name(self) -> str:
        return self._job.agent_name

    @property
    def resuming(self) -> bool:
        return self._resuming

    @property
    def answered(self) -> bool:
        return self._answer.done()

    async def accept(
        self,
        *,
        name: str = "",
        identity: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Take the job; the agent joins as `identity` (default ``agent-<job id>``)."""
        args = AcceptArguments(identity or f"agent-{self.id}", name, metadata, dict(attributes or {}))
        self._settle(OfferAnswer(True, accept=args), "accept")

    async def reject(self, *, terminate: bool = False) -> None:
        """Decline; `terminate=True` also ends the job instead of letting another worker take it."""
        self._settle(OfferAnswer(False, terminate=terminate, why="rejected by request_fnc"), "reject")

    def _settle(self, answer: OfferAnswer, what: str) -> None:
        if self._answer.done():
            previous = self._answer.result()
            state = "accepted" if previous.available else f"declined ({previous.why})"
            raise WorkerError(f"cannot {what} job {self.id}: it was already {state}")
        self._answer.set_result(answer)

    def _expire(self, why: str) -> None:
        if not self._answer.done():
            self._answer.set_result(OfferAnswer(False, why=why))


RequestFnc = Callable[[JobRequest], Awaitable[None]]


async def decide(
    request: JobRequest, request_fnc: RequestFnc | None, timeout: float, tasks: TaskSet
) -> OfferAnswer:
    """Run request_fnc (default: accept) until it answers, returns, raises, or `timeout` passes."""
    if request_fnc is None:
        await request.accept()
        return request._answer.result()
    task = tasks.spawn(_call(request_fnc, request), f"request_fnc:{request.id}")
    answer = request._answer
    await asyncio.wait({task, answer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not answer.done():
        if task.done():
            log.warning(
                "request_fnc returned without accepting or rejecting; declining the job",
                extra={"job_id": request.id},
            )
            request._expire("request_fnc did not answer")
        else:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)  # let its cleanup run; never wait long for user code
            log.warning(
                "request_fnc did not answer within %gs; declining the job",
                timeout,
                extra={"job_id": request.id},
            )
            request._expire(f"request_fnc timed out after {timeout:g}s")
    return answer.result()


async def _call(request_fnc: RequestFnc, request: JobRequest) -> None:
    try:
        await request_fnc(request)
    except Exception as exc:
        if request.answered:
            log.error(
                "request_fnc raised after answering: %r", exc, exc_info=exc, extra={"job_id": request.id}
            )
        else:
            log.error(
                "request_fnc raised %r; declining the job", exc, exc_info=exc, extra={"job_id": request.id}
            )
            request._expire("request_fnc raised")
