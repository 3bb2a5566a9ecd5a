"""Server settings, as one frozen dataclass validated at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..protocol import ConfigError
from ..protocol.limits import MAX_FRAME_BYTES

DEV_KEYS: Mapping[str, str] = {"devkey": "secret"}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the dispatch server needs to know; see docs/server.md for each field."""

    keys: Mapping[str, str] = field(default_factory=lambda: dict(DEV_KEYS))
    host: str = "127.0.0.1"
    port: int = 7880
    #: seconds a worker has to answer an AvailabilityRequest before the next worker is tried
    offer_timeout: float = 5.0
    #: seconds a job may wait for a worker (queued or being offered) before it ends FAILED
    dispatch_deadline: float = 30.0
    #: maximum number of jobs waiting for a worker on this node; over it CreateDispatch is refused
    queue_limit: int = 10_000
    #: seconds a new connection has to send `register`
    register_timeout: float = 10.0
    #: load added to a worker's projection for each job assigned since its last report
    per_job_load: float = 0.1
    #: LiveKit's room defaults (seconds)
    empty_timeout: int = 300
    departure_timeout: int = 20
    #: URL put in JobAssignment; empty lets the worker use its own URL
    public_url: str = ""
    node_id: str = ""
    region: str = ""
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: seconds the server keeps a lost worker's running jobs before re-dispatching them
    reconnect_grace: float = 10.0
    #: how often one job may be restarted (worker lost or job failed) before it ends FAILED
    max_restarts: int = 3
    #: ping interval assumed for workers that do not announce one (liveness = 3x this)
    default_ping_interval: float = 30.0
    #: redis:// URL of the shared store (cluster mode); empty keeps everything in this process
    redis_url: str = ""
    #: bytes the jobs waiting for a worker may hold (job records incl. metadata); over it: resource_exhausted
    queue_bytes_limit: int = 256 * 1024 * 1024
    #: bytes queued to one worker above which it gets no new offers; at 4x it is disconnected as not reading
    worker_outbox_bytes: int = 8 * 1024 * 1024
    #: seconds a worker's socket may take to accept one frame before it is disconnected
    worker_send_timeout: float = 10.0
    #: a worker that has sent status reports and then sends none for this long is not offered jobs (0 = off)
    status_stale_after: float = 15.0
    #: longest pause in offers to a worker that left offers unanswered (the pause doubles per timeout)
    max_offer_backoff: float = 60.0
    #: seconds a client has to send a request's headers (first request, or next one on a kept-alive socket)
    header_timeout: float = 10.0
    #: seconds a client has to send a request body once the headers are in
    body_timeout: float = 30.0
    #: open connections served at once; further ones get 503 at once (0 = derived from the open-file limit)
    max_connections: int = 0
    #: after a start, for this long a job a reconnecting worker reports and this node does not know is
    #: adopted (the node restarted and lost its records); later such a job is answered with JobTermination
    adopt_window: float = 60.0
    #: seconds shutdown may take in all (workers told to go away, rooms closed, sockets closed)
    shutdown_timeout: float = 5.0
    #: URLs that receive LiveKit-format webhooks (docs/operations.md); empty: no webhooks
    webhook_urls: tuple[str, ...] = ()
    #: API key whose secret signs webhooks (default: the first key)
    webhook_key: str = ""
    #: webhook event names to send (docs/operations.md); empty: all of them
    webhook_events: tuple[str, ...] = ()
    #: shared secret accepted by the admin API and dashboard besides roomAdmin tokens
    admin_token: str = ""
    #: admin API and dashboard open without a token to requests from loopback (--dev)
    admin_open_on_loopback: bool = False

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("at least one API key/secret pair is required")
        for key, secret in self.keys.items():
            if not key or not secret:
                raise ConfigError("API keys and secrets must be non-empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in (
            "offer_timeout",
            "dispatch_deadline",
            "register_timeout",
            "default_ping_interval",
            "worker_send_timeout",
            "header_timeout",
            "body_timeout",
            "shutdown_timeout",
            "max_offer_backoff",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if self.reconnect_grace < 0:
            raise ConfigError(f"reconnect_grace must be >= 0, got {self.reconnect_grace!r}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {self.max_restarts}")
        for name in ("queue_bytes_limit", "worker_outbox_bytes"):
            if getattr(self, name) < 64 * 1024:
                raise ConfigError(f"{name} must be >= 65536 bytes, got {getattr(self, name)}")
        if self.status_stale_after < 0 or self.max_connections < 0 or self.adopt_window < 0:
            raise ConfigError("status_stale_after and max_connections must be >= 0")
        if self.queue_limit < 1:
            raise ConfigError(f"queue_limit must be >= 1, got {self.queue_limit}")
        if not 0 < self.per_job_load <= 1:
            raise ConfigError(f"per_job_load must be in (0, 1], got {self.per_job_load!r}")
        if self.webhook_key and self.webhook_key not in self.keys:
            raise ConfigError(f"webhook_key {self.webhook_key!r} is not one of the API keys")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis_url must be a redis://, rediss:// or unix:// URL: {self.redis_url!r}")
        if self.empty_timeout < 0 or self.departure_timeout < 0:
            raise ConfigError("room timeouts must be >= 0")
