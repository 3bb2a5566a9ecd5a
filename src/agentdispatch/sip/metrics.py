"""SIP gateway metrics on the server's /metrics (its registry): calls by final status, post-dial delay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SipMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls = Counter(
            "agentdispatch_sip_calls", "Inbound calls by the final status sent (200, 487, 503, ...).",
            ["status"], registry=r,
        )  # fmt: skip
        self.post_dial_delay = Histogram(
            "agentdispatch_sip_post_dial_delay_seconds", "INVITE received -> 200 OK sent.",
            buckets=DELAY_BUCKETS, registry=r,
        )  # fmt: skip
        self.active = Gauge("agentdispatch_sip_active_calls", "Calls ringing or answered now.", registry=r)

    def ended(self, status: int) -> None:
        self.calls.labels(str(status or "none")).inc()
