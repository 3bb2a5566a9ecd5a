"""Gateway settings (one frozen, validated dataclass) and the per-trunk call policy."""

from __future__ import annotations

import json
from dataclasses import dataclass

from livekit.protocol import sip

from ..protocol import AgentDispatchError, ConfigError

#: final codes a trunk may choose for "no agent in time" and "over the concurrent-call limit"
FINAL_CODES = {480: "Temporarily Unavailable", 486: "Busy Here", 503: "Service Unavailable", 603: "Decline"}


class SipError(AgentDispatchError):
    """Root of the SIP gateway's errors."""


class SipConfigError(SipError, ConfigError):
    """A gateway setting, trunk or dispatch rule is invalid."""


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens and what a caller hears by default (trunks may override)."""

    host: str = "127.0.0.1"  # SIP and RTP bind address, also written into SDP / Contact
    advertise: str = ""  # address written into SDP, Via and Contact instead of `host` (behind NAT)
    port: int = 5060  # UDP and TCP; 0 picks a free port (tests)
    tcp: bool = True
    rtp_ports: tuple[int, int] = (20000, 30000)  # even RTP ports from this range, RTCP = RTP + 1
    ringing_timeout: float = 30.0  # seconds of 180 Ringing before the final code
    final_status: int = 503  # sent at the ringing timeout or when the dispatch fails
    retry_after: int = 30  # seconds, in Retry-After with 503 / 480 / 486
    max_calls: int = 0  # per trunk, 0 = unlimited; a trunk's metadata may set its own
    limit_status: int = 486  # answered at once when a trunk is at its limit
    max_call_duration: float = 0.0  # seconds; 0 = no limit
    user_agent: str = "agentdispatch-sip"
    ringback: bool = False  # 183 Session Progress with a ringback tone (early media) while ringing
    realm: str = "agentdispatch"  # digest realm for trunks with auth_username and no auth_realm

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SipConfigError(f"port must be 0..65535, got {self.port}")
        lo, hi = self.rtp_ports
        if not (1024 <= lo < hi <= 65535):
            raise SipConfigError(f"rtp_ports must be a range within 1024..65535, got {self.rtp_ports}")
        if not self.ringing_timeout > 0:
            raise SipConfigError(f"ringing_timeout must be > 0 s, got {self.ringing_timeout}")
        for name in ("final_status", "limit_status"):
            code = getattr(self, name)
            if code not in FINAL_CODES:
                raise SipConfigError(f"{name} must be one of {sorted(FINAL_CODES)}, got {code}")
        if self.retry_after < 0 or self.max_calls < 0 or self.max_call_duration < 0:
            raise SipConfigError("retry_after, max_calls and max_call_duration must be >= 0")


@dataclass(frozen=True)
class TrunkPolicy:
    """What one trunk's callers get: the gateway defaults, overridden by the trunk."""

    ringing_timeout: float
    final_status: int
    retry_after: int
    max_calls: int
    limit_status: int
    max_call_duration: float

    @classmethod
    def of(cls, trunk: sip.SIPInboundTrunkInfo, defaults: GatewayConfig) -> TrunkPolicy:
        """`ringing_timeout`, `ringing_timeout_status`, `max_call_duration` are LiveKit trunk fields;
        `max_calls`, `limit_status` and `retry_after` come from the trunk's metadata (a JSON object)."""
        extra = trunk_extras(trunk)
        ringing = defaults.ringing_timeout
        if trunk.HasField("ringing_timeout") and trunk.ringing_timeout.ToTimedelta().total_seconds() > 0:
            ringing = trunk.ringing_timeout.ToTimedelta().total_seconds()
        duration = defaults.max_call_duration
        if trunk.HasField("max_call_duration"):
            duration = trunk.max_call_duration.ToTimedelta().total_seconds()
        final = int(trunk.ringing_timeout_status) or defaults.final_status
        if final not in FINAL_CODES:
            raise SipConfigError(f"trunk {trunk.sip_trunk_id}: ringing_timeout_status {final} not supported")
        limit_status = int(extra.get("limit_status", defaults.limit_status))
        if limit_status not in FINAL_CODES:
            raise SipConfigError(f"trunk {trunk.sip_trunk_id}: limit_status {limit_status} not supported")
        return cls(
            ringing_timeout=ringing,
            final_status=final,
            retry_after=int(extra.get("retry_after", defaults.retry_after)),
            max_calls=int(extra.get("max_calls", defaults.max_calls)),
            limit_status=limit_status,
            max_call_duration=duration,
        )


def trunk_extras(trunk: sip.SIPInboundTrunkInfo) -> dict[str, int]:
    """The gateway's own keys in a trunk's metadata; other metadata is left alone."""
    if not trunk.metadata.strip().startswith("{"):
        return {}
    try:
        data = json.loads(trunk.metadata)
    except ValueError:
        return {}
    out: dict[str, int] = {}
    for key in ("max_calls", "limit_status", "retry_after"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    return out
