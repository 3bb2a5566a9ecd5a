"""One URL rule (http(s) -> ws(s), keeping TLS) and one place for id prefixes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentdispatch.protocol import ids
from agentdispatch.protocol.urls import agent_ws_url, http_base, websocket_base


@pytest.mark.parametrize(
    ("given", "agent"),
    [
        ("http://127.0.0.1:7880", "ws://127.0.0.1:7880/agent"),
        ("https://lk.example.com/", "wss://lk.example.com/agent"),
        ("HTTPS://lk.example.com", "wss://lk.example.com/agent"),
        ("ws://127.0.0.1:7880/", "ws://127.0.0.1:7880/agent"),
        ("wss://lk.example.com", "wss://lk.example.com/agent"),
        ("https://lk.example.com/base", "wss://lk.example.com/base/agent"),
    ],
)
def test_agent_url_keeps_tls_and_drops_the_trailing_slash(given: str, agent: str) -> None:
    assert agent_ws_url(given) == agent


@pytest.mark.parametrize(
    ("given", "http"),
    [
        ("ws://127.0.0.1:7880", "http://127.0.0.1:7880"),
        ("wss://lk.example.com/", "https://lk.example.com"),
        ("https://lk.example.com", "https://lk.example.com"),
        ("http://h:1/", "http://h:1"),
    ],
)
def test_http_base_is_the_inverse(given: str, http: str) -> None:
    assert http_base(given) == http
    assert http_base(websocket_base(http)) == http


def test_a_url_without_a_known_scheme_is_left_alone() -> None:
    assert websocket_base("localhost:7880/") == "localhost:7880"
    assert http_base("unix:///tmp/sock") == "unix:///tmp/sock"


@pytest.mark.parametrize(
    ("make", "prefix"),
    [
        (ids.new_worker_id, "AW_"),
        (ids.new_job_id, "AJ_"),
        (ids.new_dispatch_id, "AD_"),
        (ids.new_room_sid, "RM_"),
        (ids.new_participant_sid, "PA_"),
        (ids.new_node_id, "ND_"),
        (ids.new_webhook_event_id, "EV_"),
        (ids.new_sip_call_id, "SCL_"),
        (ids.new_sip_trunk_id, "ST_"),
        (ids.new_sip_dispatch_rule_id, "SDR_"),
    ],
)
def test_each_kind_of_id_has_livekits_prefix_and_is_unique(make: Callable[[], str], prefix: str) -> None:
    made = {make() for _ in range(200)}
    assert len(made) == 200
    bodies = {i[len(prefix) :] for i in made if i.startswith(prefix)}
    assert len(bodies) == 200
    assert all(len(body) == 12 and body.isalnum() for body in bodies)
