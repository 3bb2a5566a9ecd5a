"""The SIP gateway: a UAS on UDP and TCP (aiosipua) turning each INVITE into a room, a dispatch, a caller.

It runs inside the dispatch server's process and reaches the server only through its public pieces:
the room manager (create room / list, delete dispatch / delete room, as Twirp does), the job listener,
and the presence WebSocket, where the caller joins as a SIP participant. Trunk and dispatch-rule
management is the Twirp `livekit.SIP` service mounted on the server's HTTP port (`routes()`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiortp import PortAllocator
from aiosipua import IncomingCall, SipRequest, SipUAS
from aiosipua.transport import SipTransport

from ..server.app import DispatchServer
from ..server.events import Event, JobEvent, JobEventKind
from ..server.rooms import DispatchSpec, RoomSpec
from ..util import TaskSet
from .auth import DigestGuard
from .call import Call, CallEnv, CallRecord, caller_number, final_response
from .config import GatewayConfig, TrunkPolicy
from .directory import Route, SipDirectory
from .metrics import SipMetrics
from .transport import GatewayTcpTransport, GatewayUdpTransport
from .twirp_sip import SipTwirp

log = logging.getLogger("agentdispatch.sip.gateway")

HISTORY = 10_000  # ended calls kept for statistics()
LINGER = 32.0  # seconds (64 x T1) an ended call stays known to the UAS, for late ACKs and retransmissions


@dataclass(frozen=True)
class GatewayStats:
    active: int
    ringing: int
    ended: int
    by_status: dict[int, int]


def room_spec(route: Route) -> RoomSpec:
    cfg = route.rule.room_config
    agents = tuple(DispatchSpec.from_room_agent(a) for a in cfg.agents)
    return RoomSpec(
        name=route.room,
        empty_timeout=cfg.empty_timeout,
        departure_timeout=cfg.departure_timeout,
        max_participants=cfg.max_participants,
        metadata=cfg.metadata or route.rule.metadata,
        agents=agents,
    )


class SipGateway:
    """`await start()` binds UDP (+TCP) on `config.port`; `aclose()` ends every call and unbinds."""

    def __init__(
        self, server: DispatchServer, config: GatewayConfig, directory: SipDirectory | None = None
    ) -> None:
        self.config = config
        self.directory = directory or SipDirectory()
        self._server = server
        self._ports = PortAllocator(config.rtp_ports)
        self._calls: dict[str, Call] = {}  # by SIP Call-ID
        self._running: dict[str, asyncio.Task[None]] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self.history: deque[CallRecord] = deque(maxlen=HISTORY)
        self._uas: list[SipUAS] = []
        self._env: CallEnv | None = None
        self._tasks = TaskSet("sip-gateway")
        self._twirp = SipTwirp(server.keys, self.directory)
        self._digest = DigestGuard(config.realm)
        self.metrics = SipMetrics(server.ops.metrics.registry)  # served on the server's /metrics
        self.port = config.port
        self._unsubscribe = server.dispatcher.events.subscribe(self._on_event)

    def routes(self) -> list[web.RouteDef]:
        """The Twirp `livekit.SIP` routes; add them to the server's app before it starts."""
        return self._twirp.routes()

    async def _allocate_port(self) -> int:
        port, _ = await self._ports.allocate()
        return port

    # -- lifecycle -------------------------------------------------------------------------------
    def _call_env(self) -> CallEnv:
        keys = self._server.keys.first
        return CallEnv(
            rooms=self._server.rooms,
            make_room_spec=room_spec,
            ws_url=self._server.ws_url,  # known once the server is listening
            api_key=keys.key,
            api_secret=keys.secret,
            host=self.config.host,
            advertise=self.config.advertise,
            allocate_port=self._allocate_port,
            release_port=self._ports.release,
            ringback=self.config.ringback,
        )

    async def start(self) -> None:
        """Bind; the dispatch server must already be listening (calls join rooms over its presence URL)."""
        self._env = self._call_env()
        for attempt in range(20):
            udp = GatewayUdpTransport(local_addr=(self.config.host, self.config.port))
            udp.is_retransmission = self._is_retransmission
            await self._start_uas(udp)
            self.port = udp.local_addr[1]  # the port actually bound (config.port may be 0)
            if not self.config.tcp:
                break
            try:
                await self._start_uas(GatewayTcpTransport(local_addr=(self.config.host, self.port)))
                break
            except OSError as exc:
                # a free UDP port whose TCP twin is taken: with port 0, try another one
                for uas in self._uas:
                    await uas.stop()
                self._uas.clear()
                if self.config.port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        if self.config.advertise:  # Via and Contact name the public address, with the port really bound
            for uas in self._uas:
                uas.advertised_addr = (self.config.advertise, self.port)
        log.info("SIP gateway listening", extra={"host": self.config.host, "port": self.port})

    async def _start_uas(self, transport: SipTransport) -> None:
        uas = SipUAS(transport, user_agent=self.config.user_agent)
        uas.on_invite = self._on_invite
        uas.on_cancel = self._on_cancel
        uas.on_bye = self._on_bye
        await uas.start()
        self._uas.append(uas)

    async def aclose(self) -> None:
        for call in list(self._calls.values()):
            call.stop()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=10)
        await self._tasks.aclose()
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        self._unsubscribe()
        for uas in self._uas:
            await uas.stop()
        self._uas.clear()

    # -- SIP events (synchronous callbacks from the UAS) -------------------------------------------
    def _is_retransmission(self, request: SipRequest) -> bool:
        call = self._calls.get(request.call_id or "")
        return call is not None and call.is_retransmission(request)

    def _on_invite(self, inv: IncomingCall) -> None:
        if inv.call_id in self._calls:
            return  # a retransmitted INVITE: the call is already under way
        source_ip = inv.source_addr[0] if inv.source_addr else ""
        caller, called = caller_number(inv.caller), caller_number(inv.callee)
        route = self.directory.route(source_ip, caller, called)
        if route is None:
            log.info("call refused: no trunk or dispatch rule", extra={"caller": caller, "called": called})
            final_response(inv, 404, 0)
            self.metrics.ended(404)
            self._forget_later(inv)
            return
        if route.trunk.auth_username and not self._digest.verify(inv, route.trunk):
            self._digest.challenge(inv, route.trunk)  # 407; the caller retries with credentials
            self.metrics.ended(407)
            self._forget_later(inv)
            return
        policy = TrunkPolicy.of(route.trunk, self.config)
        if policy.max_calls and self._trunk_calls(route.trunk.sip_trunk_id) >= policy.max_calls:
            log.info("call refused: trunk at its limit", extra={"trunk_id": route.trunk.sip_trunk_id})
            final_response(inv, policy.limit_status, policy.retry_after)
            self._record_refusal(inv, route, policy.limit_status, "trunk at its concurrent-call limit")
            self._forget_later(inv)
            return
        if self._env is None:
            final_response(inv, 503, self.config.retry_after)
            return
        call = Call(self._env, inv, route, policy)
        self._calls[inv.call_id] = call
        self._running[inv.call_id] = self._tasks.spawn(self._run(call), f"call:{inv.call_id}")

    def _record_refusal(self, inv: IncomingCall, route: Route, status: int, reason: str) -> None:
        rec = CallRecord("", inv.call_id, route.trunk.sip_trunk_id, route.room, final_status=status)
        rec.end_reason = reason
        self.history.append(rec)
        self.metrics.ended(status)

    async def _run(self, call: Call) -> None:
        self.metrics.active.inc()
        try:
            await call.run()
        finally:
            self.metrics.active.dec()
            self._calls.pop(call.record.sip_call_id, None)
            self._running.pop(call.record.sip_call_id, None)
            self.history.append(call.record)
            self.metrics.ended(call.record.final_status)
            if call.record.post_dial_delay is not None:
                self.metrics.post_dial_delay.observe(call.record.post_dial_delay)
            self._forget_later(call.invite)

    def _forget_later(self, inv: IncomingCall) -> None:
        """aiosipua forgets a call on BYE/CANCEL from the caller or the ACK of an error, but not after
        our own BYE or an error nobody ACKs: drop it from the UAS after LINGER so memory stays bounded."""
        old = self._lingering.pop(inv.call_id, None)
        if old is not None:
            old.cancel()
        self._lingering[inv.call_id] = asyncio.get_running_loop().call_later(LINGER, self._forget, inv)

    def _forget(self, inv: IncomingCall) -> None:
        self._lingering.pop(inv.call_id, None)
        for uas in self._uas:
            if uas.get_call(inv.call_id) is inv:
                uas._calls.pop(inv.call_id, None)  # no public way to drop a call

    def _on_cancel(self, request: SipRequest, addr: Any) -> None:
        call = self._calls.get(request.call_id or "")
        if call is not None:
            call.cancelled.set()

    def _on_bye(self, inv: IncomingCall, request: SipRequest) -> None:
        call = self._calls.get(inv.call_id)
        if call is not None:
            call.caller_bye.set()

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, JobEvent) or event.kind is not JobEventKind.ENDED:
            return
        for call in self._calls.values():
            if event.job.dispatch_id in call.record.dispatch_ids:
                call.job_changed(event.job)

    # -- views -----------------------------------------------------------------------------------
    def _trunk_calls(self, trunk_id: str) -> int:
        return sum(1 for c in self._calls.values() if c.record.trunk_id == trunk_id)

    def active_calls(self) -> list[CallRecord]:
        return [c.record for c in self._calls.values()]

    def statistics(self) -> GatewayStats:
        by_status: dict[int, int] = {}
        for rec in self.history:
            by_status[rec.final_status] = by_status.get(rec.final_status, 0) + 1
        ringing = sum(1 for c in self._calls.values() if c.record.final_status == 0)
        return GatewayStats(len(self._calls), ringing, len(self.history), by_status)
