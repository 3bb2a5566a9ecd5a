"""Protocol layer: frames, ids, tokens, load rule, clock, errors. Imports nothing else of ours."""

from . import hs256
from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .codec import MAX_FRAME_BYTES, Encoding, decode_server_message, decode_worker_message, encode
from .errors import (
    AgentDispatchError,
    AuthError,
    ConfigError,
    ProtocolError,
    ServerError,
    TwirpError,
    WorkerError,
)
from .ids import new_id
from .load import sanitize_load
from .tasks import TaskSet
from .tokens import AGENT_NAME_ATTRIBUTE, JobTokenRequest, KeyPair, KeyRing, bearer_token, mint_job_token

__all__ = [
    "AGENT_NAME_ATTRIBUTE",
    "MAX_FRAME_BYTES",
    "SYSTEM_CLOCK",
    "AgentDispatchError",
    "AuthError",
    "Clock",
    "ConfigError",
    "Encoding",
    "JobTokenRequest",
    "KeyPair",
    "KeyRing",
    "ProtocolError",
    "ServerError",
    "SystemClock",
    "TaskSet",
    "TwirpError",
    "WorkerError",
    "bearer_token",
    "decode_server_message",
    "decode_worker_message",
    "encode",
    "hs256",
    "mint_job_token",
    "new_id",
    "sanitize_load",
]
