"""The one exception root, with a subclass per layer."""

from __future__ import annotations


class AgentDispatchError(Exception):
    """Root of every error raised on purpose by agentdispatch."""


class ConfigError(AgentDispatchError, ValueError):
    """Invalid options or settings; raised at construction time."""


class ProtocolError(AgentDispatchError):
    """A peer broke the agent protocol (bad frame, wrong order, invalid field)."""


class AuthError(AgentDispatchError):
    """A token is missing, malformed, expired, or lacks the required grant."""


class ServerError(AgentDispatchError):
    """Errors raised inside the dispatch server."""


class TwirpError(ServerError):
    """An error answered to a Twirp client as ``{"code": ..., "msg": ...}``."""

    STATUS = {
        "invalid_argument": 400,
        "malformed": 400,
        "out_of_range": 400,
        "unauthenticated": 401,
        "permission_denied": 403,
        "not_found": 404,
        "bad_route": 404,
        "already_exists": 409,
        "failed_precondition": 412,
        "resource_exhausted": 429,
        "deadline_exceeded": 408,
        "internal": 500,
        "unimplemented": 501,
        "unavailable": 503,
    }

    def __init__(self, code: str, msg: str) -> None:
        if code not in self.STATUS:
            raise ValueError(f"unknown twirp code {code!r}")
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg

    @property
    def status(self) -> int:
        return self.STATUS[self.code]


class WorkerError(AgentDispatchError):
    """Errors raised by the worker runtime."""
