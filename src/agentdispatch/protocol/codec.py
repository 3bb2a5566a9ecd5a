"""Encode and decode agent-protocol frames (binary protobuf or protobuf JSON text)."""

from __future__ import annotations

import enum

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import agent

from .errors import ProtocolError
from .limits import MAX_FRAME_BYTES

__all__ = ["MAX_FRAME_BYTES", "Encoding", "decode_server_message", "decode_worker_message", "encode"]


class Encoding(enum.Enum):
    BINARY = "binary"
    JSON = "json"


def decode_worker_message(data: bytes | str) -> tuple[agent.WorkerMessage, Encoding]:
    """Parse one frame sent by a worker; raise ProtocolError on anything unusable."""
    msg = agent.WorkerMessage()
    if isinstance(data, str):
        try:
            # strict like LiveKit's protojson: unknown fields and enum names are errors
            json_format.Parse(data, msg)
        except json_format.ParseError as exc:
            raise ProtocolError(f"invalid JSON frame: {exc}") from None
        encoding = Encoding.JSON
    else:
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            raise ProtocolError(f"invalid protobuf frame: {exc}") from None
        encoding = Encoding.BINARY
    if msg.WhichOneof("message") is None:
        raise ProtocolError("empty or unknown worker message")
    return msg, encoding


def encode(msg: agent.ServerMessage | agent.WorkerMessage, encoding: Encoding) -> bytes | str:
    if encoding is Encoding.JSON:
        return json_format.MessageToJson(msg, indent=None)
    return msg.SerializeToString()


def decode_server_message(data: bytes | str) -> agent.ServerMessage:
    """Parse one frame sent by a server (used by our worker and the benchmark clients)."""
    msg = agent.ServerMessage()
    try:
        if isinstance(data, str):
            json_format.Parse(data, msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(data)
    except (DecodeError, json_format.ParseError) as exc:
        raise ProtocolError(f"invalid server frame: {exc}") from None
    return msg
