"""One inbound call from INVITE to the end: ring while the dispatch waits, answer when the agent is there.

INVITE ─► 100 Trying (at once) ─► room + dispatch ─► 180 Ringing ─► caller joins as a SIP participant
    ├─ an agent joins the room            ─► 200 OK (SDP, PCMU/PCMA) ─► audio both ways
    ├─ ringing timeout / dispatch failed  ─► final code (503 + Retry-After by default); dispatch deleted
    └─ CANCEL                             ─► 487 (sent by the UAS); dispatch deleted
answered:
    ├─ caller BYE                          ─► job terminated, room closed
    └─ agents leave / lk.sip.hangup / room closed / max duration ─► BYE to the caller
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiosipua import IncomingCall, SipRequest
from aiosipua.rtp_bridge import CallSession
from aiosipua.sdp_negotiate import SdpNegotiationError
from livekit import api
from livekit.protocol import agent, agent_dispatch, models

from ..protocol import TwirpError
from ..protocol.ids import new_sip_call_id
from ..server.rooms import RoomSpec
from .config import FINAL_CODES, TrunkPolicy
from .directory import Route
from .early_media import play_ringback, session_progress
from .leg import RoomLeg

log = logging.getLogger("agentdispatch.sip.call")

ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED)


class Rooms(Protocol):
    """The slice of the server's room manager a call uses (its public Twirp-level operations)."""

    async def create_room(self, spec: RoomSpec) -> tuple[models.Room, bool]: ...

    async def list_dispatches(
        self, room: str, dispatch_id: str = ""
    ) -> list[agent_dispatch.AgentDispatch]: ...

    async def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch: ...

    async def delete_room(self, name: str, reason: str = ...) -> None: ...


@dataclass(frozen=True)
class CallEnv:
    """What a call needs from the gateway: rooms, the presence URL, a key to sign with, media settings."""

    rooms: Rooms
    make_room_spec: Callable[[Route], RoomSpec]
    ws_url: str
    api_key: str
    api_secret: str
    host: str
    advertise: str
    allocate_port: Callable[[], Awaitable[int]]
    release_port: Callable[[int], Awaitable[None]]
    ringback: bool = False  # 183 Session Progress + a ringback tone while ringing


class CallState(enum.Enum):
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass
class CallRecord:
    """What happened to a call (kept by the gateway for tests, stats and the bench)."""

    call_id: str  # LiveKit-style SCL_ id (attribute sip.callID)
    sip_call_id: str
    trunk_id: str
    room: str
    state: CallState = CallState.RINGING
    final_status: int = 0  # the final response we sent (200, 487, 503, ...)
    end_reason: str = ""
    dispatch_ids: list[str] = field(default_factory=list)
    rtp_in: int = 0  # audio frames from the caller relayed to the room
    rtp_out: int = 0  # audio frames from the agent sent to the caller
    post_dial_delay: float | None = None  # seconds from the INVITE to our 200 OK


def caller_number(uri: str) -> str:
    """The user part of a SIP URI: `sip:+15551234@host;x=y` → `+15551234`."""
    text = uri.strip().strip("<>")
    if ":" in text:
        text = text.split(":", 1)[1]
    return text.split("@", 1)[0].split(";", 1)[0]


def final_response(inv: IncomingCall, status: int, retry_after: int) -> None:
    """A final error response to the INVITE, with Retry-After where it tells a carrier when to retry."""
    resp = inv.dialog.create_response(inv.invite, status, FINAL_CODES.get(status, "Error"))
    if status in (480, 486, 503) and retry_after > 0:
        resp.headers.set_single("Retry-After", str(retry_after))
    if inv.user_agent:
        resp.headers.set_single("User-Agent", inv.user_agent)
    if inv.transport is not None:
        inv.transport.send_reply(resp)
    inv.dialog.terminate()


class Call:
    def __init__(self, env: CallEnv, inv: IncomingCall, route: Route, policy: TrunkPolicy) -> None:
        self._env = env
        self._inv = inv
        self._route = route
        self._policy = policy
        self.caller = caller_number(inv.caller)
        self.called = caller_number(inv.callee)
        self.record = CallRecord(new_sip_call_id(), inv.call_id, route.trunk.sip_trunk_id, route.room)
        self.cancelled = asyncio.Event()
        self.caller_bye = asyncio.Event()
        self.job_ended = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.job_error = ""
        self._created_room = False
        self._ringing_sent = False
        self._ringback: asyncio.Future[None] | None = None
        self._invited_at = asyncio.get_running_loop().time()
        self._leg: RoomLeg | None = None
        self._media: CallSession | None = None
        self._port = 0

    @property
    def invite(self) -> IncomingCall:
        return self._inv

    @property
    def log_fields(self) -> dict[str, str]:
        rec = self.record
        return {"room": rec.room, "sip_call_id": rec.sip_call_id, "call_id": rec.call_id}

    # -- events from the gateway -----------------------------------------------------------------
    def job_changed(self, job: agent.Job) -> None:
        if job.state.status in ENDED:
            self.job_error = job.state.error or agent.JobStatus.Name(job.state.status)
            self.job_ended.set()

    # -- the call --------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if await self._ring():
                await self._talk()
        finally:
            self.record.state = CallState.ENDED
            await self._cleanup()
            log.info(
                "call ended",
                extra={
                    **self.log_fields,
                    "status": self.record.final_status,
                    "reason": self.record.end_reason,
                },
            )

    def _reject(self, status: int, reason: str) -> None:
        final_response(self._inv, status, self._policy.retry_after)
        self.record.final_status = status
        self.record.end_reason = reason

    async def _ring(self) -> bool:
        offer = self._inv.sdp_offer
        if offer is None:
            self._reject(488, "no SDP offer")
            return False
        try:
            self._port = await self._env.allocate_port()
        except RuntimeError as exc:  # aiortp's PortAllocator: the RTP port range is used up
            log.warning("call refused: %s", exc, extra=self.log_fields)
            self._reject(503, "no free RTP port")
            return False
        try:
            self._media = CallSession(
                local_ip=self._env.host,
                rtp_port=self._port,
                offer=offer,
                advertised_ip=self._env.advertise or None,
            )
        except (ValueError, SdpNegotiationError) as exc:
            self._reject(488, f"SDP not acceptable: {exc}")
            return False
        try:
            await self._open_room()
        except (TwirpError, ConnectionError) as exc:
            log.warning("call refused: room or dispatch failed: %s", exc, extra=self.log_fields)
            self._reject(self._policy.final_status, f"room/dispatch failed: {exc}")
            return False
        if self.cancelled.is_set():  # CANCEL while the room was being made: the UAS sent 487
            self.record.final_status, self.record.end_reason = 487, "caller cancelled before ringing"
            return False
        self._inv.ringing()
        self._ringing_sent = True
        if self._env.ringback:
            try:
                await self._media.start()
            except OSError as exc:
                self._reject(503, f"RTP bind failed: {exc}")
                return False
            session_progress(self._inv, self._media)
            self._ringback = asyncio.ensure_future(play_ringback(self._media))
        try:
            return await self._wait_for_agent()
        finally:
            if self._ringback is not None:
                self._ringback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ringback

    async def _open_room(self) -> None:
        room, created = await self._env.rooms.create_room(self._env.make_room_spec(self._route))
        self._created_room = created
        if created:
            self.record.dispatch_ids = [d.id for d in await self._env.rooms.list_dispatches(room.name)]
        self._leg = RoomLeg(self._env.ws_url, self._participant_token(), room.name)
        await self._leg.open()

    def _participant_token(self) -> str:
        rule, trunk = self._route.rule, self._route.trunk
        attributes = {
            "sip.callID": self.record.call_id,
            "sip.callIDFull": self._inv.call_id,
            "sip.trunkID": trunk.sip_trunk_id,
            "sip.ruleID": rule.sip_dispatch_rule_id,
            "sip.callStatus": "ringing",
            **dict(rule.attributes),
        }
        if not rule.hide_phone_number:
            attributes["sip.phoneNumber"] = self.caller
            attributes["sip.trunkPhoneNumber"] = self.called
        identity = f"sip_{self.caller}" if not rule.hide_phone_number else f"sip_{self.record.call_id}"
        grants = api.VideoGrants(room_join=True, room=self._route.room, can_publish=True, can_subscribe=True)
        token = (
            api.AccessToken(self._env.api_key, self._env.api_secret)
            .with_identity(identity)
            .with_name(f"Phone {self.caller}" if not rule.hide_phone_number else "Phone")
            .with_kind("sip")
            .with_metadata(rule.metadata)
            .with_attributes(attributes)
            .with_grants(grants)
        )
        return token.to_jwt()

    async def _wait_for_agent(self) -> bool:
        assert self._leg is not None
        outcome = await first_of(
            {  # in order of preference when several happened at once: a CANCEL beats an answer
                "cancel": self.cancelled.wait(),
                "shutdown": self.shutdown.wait(),
                "agent": self._leg.agent_present.wait(),
                "job_ended": self.job_ended.wait(),
                "room_closed": self._leg.closed.wait(),
            },
            timeout=self._policy.ringing_timeout,
        )
        if outcome == "agent":
            return await self._answer()
        if outcome == "cancel":
            self.record.final_status = 487
            self.record.end_reason = "caller cancelled while ringing"
        elif outcome == "job_ended":
            self._reject(self._policy.final_status, f"dispatch failed: {self.job_error}")
        elif outcome in ("room_closed", "shutdown"):
            self._reject(self._policy.final_status, self._leg.close_reason or "gateway shutting down")
        else:
            self._reject(self._policy.final_status, f"no agent within {self._policy.ringing_timeout:g} s")
        log.info("call not answered", extra={**self.log_fields, "outcome": outcome})
        return False

    async def _answer(self) -> bool:
        assert self._media is not None and self._leg is not None
        media, leg, rec = self._media, self._leg, self.record
        if media.rtp_session is None:  # already started for early media
            try:
                await media.start()
            except OSError as exc:  # the RTP port was taken since we allocated it
                log.warning("call refused: RTP bind failed: %s", exc, extra=self.log_fields)
                self._reject(503, "RTP bind failed")
                return False

        def from_caller(pcm: bytes, timestamp: int) -> None:
            rec.rtp_in += 1
            leg.send_audio(pcm)

        def to_caller(pcm: bytes) -> None:
            session = media.rtp_session
            if session is not None:
                rec.rtp_out += 1
                session.send_audio_pcm_auto(pcm)

        media.on_audio = from_caller
        media.on_dtmf = lambda digit, duration: leg.send_dtmf(digit, duration)
        leg.on_audio = to_caller
        self._inv.accept(media.sdp_answer)
        rec.post_dial_delay = asyncio.get_running_loop().time() - self._invited_at
        rec.state = CallState.ACTIVE
        rec.final_status = 200
        log.info("call answered", extra=self.log_fields)
        return True

    async def _talk(self) -> None:
        assert self._leg is not None
        leg = self._leg
        limit = self._policy.max_call_duration or None
        outcome = await first_of(
            {
                "caller_bye": self.caller_bye.wait(),
                "agents_left": leg.agents_gone.wait(),
                "agent_hangup": leg.hangup_requested.wait(),
                "job_ended": self.job_ended.wait(),
                "room_closed": leg.closed.wait(),
                "shutdown": self.shutdown.wait(),
            },
            timeout=limit,
        )
        self.record.end_reason = outcome or "max call duration"
        if outcome != "caller_bye":
            self._inv.hangup()

    async def _cleanup(self) -> None:
        rooms, room = self._env.rooms, self.record.room
        if self._media is not None:
            await self._media.close()
        if self._port:
            await self._env.release_port(self._port)
        if self._leg is not None:
            await self._leg.aclose()
        with contextlib.suppress(TwirpError):
            if self.record.state is not CallState.ACTIVE and self.record.final_status != 200:
                for dispatch_id in self.record.dispatch_ids:
                    await rooms.delete_dispatch(room, dispatch_id)
            if self._created_room and not self._route.room_is_shared:
                await rooms.delete_room(room, "SIP call ended")

    def is_retransmission(self, request: SipRequest) -> bool:
        """The same INVITE again (same branch and CSeq): repeat our last provisional response."""
        via, mine = request.via, self._inv.invite.via
        if not via or not mine or via[0].branch != mine[0].branch:
            return False
        if self.record.state is CallState.RINGING and self._ringing_sent:
            self._inv.ringing()
        elif self.record.state is CallState.RINGING:
            self._inv.trying()
        return True

    def stop(self) -> None:
        """Gateway shutdown: a ringing call gets the final code, an answered one a BYE."""
        self.shutdown.set()


async def first_of(waits: dict[str, Awaitable[object]], timeout: float | None) -> str | None:
    """The name of the first awaitable to finish, or None at the timeout; the rest are cancelled."""
    tasks = {asyncio.ensure_future(w): name for name, w in waits.items()}
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:  # a stable preference when several finished together
        if task in done:
            return tasks[task]
    return None
