"""Routing a call to a trunk, a dispatch rule and a room, as LiveKit's model describes it."""

from __future__ import annotations

import json

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit.protocol import sip

from agentdispatch.sip import GatewayConfig, SipConfigError, SipDirectory, TrunkPolicy


def rule(**kw: object) -> sip.SIPDispatchRuleInfo:
    return sip.SIPDispatchRuleInfo(**kw)  # type: ignore[arg-type]


def individual(prefix: str = "call-", no_randomness: bool = False) -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(
        dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
            room_prefix=prefix, no_randomness=no_randomness
        )
    )


def test_the_trunk_that_names_the_number_wins_over_a_catch_all() -> None:
    d = SipDirectory()
    catch_all = d.add_trunk(sip.SIPInboundTrunkInfo(name="any"))
    named = d.add_trunk(sip.SIPInboundTrunkInfo(name="named", numbers=["+15550100"]))
    assert d.find_trunk("198.51.100.7", "+1555", "+15550100") == named
    assert d.find_trunk("198.51.100.7", "+1555", "+15550199") == catch_all


def test_allowed_addresses_and_numbers_filter_callers() -> None:
    d = SipDirectory()
    d.add_trunk(sip.SIPInboundTrunkInfo(allowed_addresses=["203.0.113.0/24"], allowed_numbers=["+1555"]))
    assert d.find_trunk("203.0.113.9", "+1555", "+1") is not None
    assert d.find_trunk("203.0.114.9", "+1555", "+1") is None
    assert d.find_trunk("203.0.113.9", "+1666", "+1") is None
    assert d.find_trunk("not-an-ip", "+1555", "+1") is None


def test_room_names_per_rule_kind() -> None:
    d = SipDirectory()
    trunk = d.add_trunk(sip.SIPInboundTrunkInfo())
    d.add_rule(rule(rule=individual(no_randomness=True), numbers=["+1001"]))
    d.add_rule(rule(rule=individual("r-"), numbers=["+1002"]))
    d.add_rule(rule(rule=sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="desk")),
                    numbers=["+1003"]))  # fmt: skip
    d.add_rule(rule(rule=sip.SIPDispatchRule(dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix="to-")),
                    numbers=["+1004"]))  # fmt: skip
    routes = {n: d.route("192.0.2.1", "+1555", n) for n in ("+1001", "+1002", "+1003", "+1004")}
    assert all(r is not None and r.trunk == trunk for r in routes.values())
    assert (routes["+1001"].room, routes["+1001"].room_is_shared) == ("call-+1555", True)  # type: ignore[union-attr]
    room = routes["+1002"].room  # type: ignore[union-attr]
    assert room.startswith("r-+1555_") and len(room) > len("r-+1555_")
    assert (routes["+1003"].room, routes["+1003"].room_is_shared) == ("desk", True)  # type: ignore[union-attr]
    assert routes["+1004"].room == "to-+1004"  # type: ignore[union-attr]


def test_a_rule_naming_the_trunk_beats_a_general_one() -> None:
    d = SipDirectory()
    trunk = d.add_trunk(sip.SIPInboundTrunkInfo())
    d.add_rule(rule(rule=individual("general-"), name="general"))
    d.add_rule(rule(rule=individual("mine-"), name="mine", trunk_ids=[trunk.sip_trunk_id]))
    found = d.find_rule(trunk.sip_trunk_id, "+1555", "+1")
    assert found is not None and found.name == "mine"
    assert d.find_rule("ST_other", "+1555", "+1").name == "general"  # type: ignore[union-attr]


def test_invalid_entries_are_refused() -> None:
    d = SipDirectory()
    with pytest.raises(SipConfigError):
        d.add_rule(rule(name="no kind"))
    with pytest.raises(SipConfigError):
        d.add_rule(rule(rule=sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect())))
    with pytest.raises(SipConfigError):
        d.add_trunk(sip.SIPInboundTrunkInfo(allowed_addresses=["300.1.1.1"]))
    with pytest.raises(SipConfigError):
        d.add_trunk(sip.SIPInboundTrunkInfo(ringing_timeout_status=sip.SIPStatusCode.SIP_STATUS_NOTFOUND))
    with pytest.raises(SipConfigError):
        d.add_trunk(sip.SIPInboundTrunkInfo(metadata='{"limit_status": 200}'))
    with pytest.raises(SipConfigError):
        GatewayConfig(final_status=404)
    with pytest.raises(SipConfigError):
        GatewayConfig(rtp_ports=(30000, 20000))


def test_the_trunk_overrides_the_gateway_defaults() -> None:
    defaults = GatewayConfig(ringing_timeout=30, final_status=503, retry_after=30, max_calls=0)
    trunk = sip.SIPInboundTrunkInfo(
        ringing_timeout=Duration(seconds=12),
        ringing_timeout_status=sip.SIPStatusCode.SIP_STATUS_BUSY_HERE,
        max_call_duration=Duration(seconds=600),
        metadata=json.dumps({"max_calls": 4, "limit_status": 480, "retry_after": 90, "other": "kept"}),
    )
    policy = TrunkPolicy.of(trunk, defaults)
    assert (policy.ringing_timeout, policy.final_status, policy.retry_after) == (12, 486, 90)
    assert (policy.max_calls, policy.limit_status, policy.max_call_duration) == (4, 480, 600)
    plain = TrunkPolicy.of(sip.SIPInboundTrunkInfo(metadata="free text"), defaults)
    assert (plain.ringing_timeout, plain.final_status, plain.max_calls) == (30, 503, 0)
