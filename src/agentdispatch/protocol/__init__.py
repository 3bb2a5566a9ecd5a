"""Protocol layer: frames, ids, tokens, load rule, URLs, limits, errors. Imports nothing else of ours.

Light to import: this file imports no submodule. Each name below is loaded from its submodule on first
use (PEP 562), so `from agentdispatch.protocol import ConfigError` costs only `errors.py`, while
`encode` brings in protobuf and `KeyRing` brings in livekit-api. Prefer importing the submodule
(`from agentdispatch.protocol.errors import ConfigError`) in new code; both forms are supported.
General utilities (clock, task sets) live in `agentdispatch.util`, not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import hs256
    from .codec import Encoding, decode_server_message, decode_worker_message, encode
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
    from .limits import MAX_FRAME_BYTES
    from .load import sanitize_load
    from .tokens import AGENT_NAME_ATTRIBUTE, JobTokenRequest, KeyPair, KeyRing, bearer_token, mint_job_token
    from .urls import agent_ws_url, http_base, websocket_base

#: public name -> submodule that defines it
_EXPORTS = {
    "AGENT_NAME_ATTRIBUTE": "tokens",
    "MAX_FRAME_BYTES": "limits",
    "AgentDispatchError": "errors",
    "AuthError": "errors",
    "ConfigError": "errors",
    "Encoding": "codec",
    "JobTokenRequest": "tokens",
    "KeyPair": "tokens",
    "KeyRing": "tokens",
    "ProtocolError": "errors",
    "ServerError": "errors",
    "TwirpError": "errors",
    "WorkerError": "errors",
    "agent_ws_url": "urls",
    "bearer_token": "tokens",
    "decode_server_message": "codec",
    "decode_worker_message": "codec",
    "encode": "codec",
    "http_base": "urls",
    "mint_job_token": "tokens",
    "new_id": "ids",
    "sanitize_load": "load",
    "websocket_base": "urls",
}

__all__ = [
    "AGENT_NAME_ATTRIBUTE",
    "MAX_FRAME_BYTES",
    "AgentDispatchError",
    "AuthError",
    "ConfigError",
    "Encoding",
    "JobTokenRequest",
    "KeyPair",
    "KeyRing",
    "ProtocolError",
    "ServerError",
    "TwirpError",
    "WorkerError",
    "agent_ws_url",
    "bearer_token",
    "decode_server_message",
    "decode_worker_message",
    "encode",
    "hs256",
    "http_base",
    "mint_job_token",
    "new_id",
    "sanitize_load",
    "websocket_base",
]


def __getattr__(name: str) -> Any:
    if name == "hs256":
        return importlib.import_module(f"{__name__}.hs256")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
