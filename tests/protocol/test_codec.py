"""Frame codec: binary protobuf and protobuf JSON, both directions, and what counts as unusable."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import agent, models

from agentdispatch.protocol import (
    Encoding,
    ProtocolError,
    decode_server_message,
    decode_worker_message,
    encode,
)

WORKER_MESSAGES = [
    agent.WorkerMessage(
        register=agent.RegisterWorkerRequest(
            type=agent.JobType.JT_PUBLISHER,
            agent_name="support-bot",
            version="1.2.3",
            ping_interval=7,
            deployment="canary",
            allowed_permissions=models.ParticipantPermission(can_publish=False, hidden=True),
        )
    ),
    agent.WorkerMessage(
        availability=agent.AvailabilityResponse(job_id="AJ_1", available=True, participant_name="x")
    ),
    agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WorkerStatus.WS_FULL, load=0.75)),
    agent.WorkerMessage(
        update_job=agent.UpdateJobStatus(job_id="AJ_1", status=agent.JobStatus.JS_FAILED, error="e")
    ),
    agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1_700_000_000_123)),
    agent.WorkerMessage(simulate_job=agent.SimulateJobRequest(room=models.Room(name="sim"))),
    agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=["AJ_1", "AJ_2"])),
]


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("msg", WORKER_MESSAGES, ids=lambda m: m.WhichOneof("message"))
def test_worker_message_roundtrip(msg: agent.WorkerMessage, encoding: Encoding) -> None:
    data = encode(msg, encoding)
    assert isinstance(data, str if encoding is Encoding.JSON else bytes)
    decoded, seen = decode_worker_message(data)
    assert decoded == msg
    assert seen is encoding


def test_json_frame_is_protobuf_json() -> None:
    msg = agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.5, job_count=3))
    data = encode(msg, Encoding.JSON)
    assert isinstance(data, str)
    assert json.loads(data) == {"updateWorker": {"load": 0.5, "jobCount": 3}}
    # proto field names are accepted too, as LiveKit's JSON parsers do
    decoded, _ = decode_worker_message('{"update_worker": {"load": 0.5, "job_count": 3}}')
    assert decoded == msg


@pytest.mark.parametrize("encoding", list(Encoding))
def test_server_message_roundtrip(encoding: Encoding) -> None:
    job = agent.Job(id="AJ_x", dispatch_id="AD_y", type=agent.JobType.JT_ROOM, room=models.Room(name="r"))
    msgs = [
        agent.ServerMessage(register=agent.RegisterWorkerResponse(worker_id="AW_1")),
        agent.ServerMessage(availability=agent.AvailabilityRequest(job=job, resuming=True)),
        agent.ServerMessage(assignment=agent.JobAssignment(job=job, token="t", url="ws://x")),
        agent.ServerMessage(termination=agent.JobTermination(job_id="AJ_x")),
        agent.ServerMessage(pong=agent.WorkerPong(last_timestamp=5, timestamp=6)),
    ]
    for msg in msgs:
        assert decode_server_message(encode(msg, encoding)) == msg


def test_nan_load_survives_both_encodings() -> None:
    msg = agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=float("nan")))
    for encoding in Encoding:
        decoded, _ = decode_worker_message(encode(msg, encoding))
        assert decoded.update_worker.load != decoded.update_worker.load  # still NaN


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # empty binary message: no oneof set
        b"\x98\x06\x01",  # only an unknown field (number 99)
        "{}",
        '{"somethingNew": {"x": 1}}',  # unknown member: refused, as LiveKit's strict protojson does
        "[]",
    ],
    ids=["empty-binary", "unknown-field-binary", "empty-json", "unknown-json", "json-array"],
)
def test_empty_or_unknown_oneof_is_protocol_error(frame: bytes | str) -> None:
    with pytest.raises(ProtocolError, match=r"empty or unknown|has no field named"):
        decode_worker_message(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff\xff\xff\xff",
        b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # length varint overflow
        b"\x0a\x0a\x0a\x0a",  # truncated nested messages
        "not json at all",
        "{",
        "null",
        "123",
        '{"ping": {"timestamp": "abc"}}',
        '{"ping": {"timestamp": 1e400}}',
        "[" * 100_000,  # deeper than the JSON parser's recursion limit
    ],
)
def test_garbage_is_protocol_error(frame: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_worker_message(frame)


@pytest.mark.parametrize("frame", [b"\xff\xff\xff\xff", "not json", "{", "[" * 100_000])
def test_garbage_server_frame_is_protocol_error(frame: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_server_message(frame)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=256), st.text(max_size=256)))
def test_decoding_anything_yields_a_message_or_protocol_error(frame: bytes | str) -> None:
    try:
        msg, encoding = decode_worker_message(frame)
    except ProtocolError:
        return
    assert msg.WhichOneof("message") is not None
    assert encoding is (Encoding.JSON if isinstance(frame, str) else Encoding.BINARY)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        agent.UpdateWorkerStatus,
        # float32 values near FLT_MAX are printed rounded up in JSON, and protobuf refuses to parse them back
        load=st.floats(width=32, min_value=-(2.0**120), max_value=2.0**120),
        job_count=st.integers(0, 2**32 - 1),
        draining=st.booleans(),
    )
)
def test_update_worker_roundtrip_property(update: agent.UpdateWorkerStatus) -> None:
    msg = agent.WorkerMessage(update_worker=update)
    for encoding in Encoding:
        decoded, _ = decode_worker_message(encode(msg, encoding))
        assert decoded == msg
