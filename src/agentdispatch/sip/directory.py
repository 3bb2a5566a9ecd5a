"""Inbound trunks and dispatch rules (LiveKit's model), and routing a call to a trunk, a rule and a room.

A trunk admits a call by the called number (`numbers`, empty = any), the caller's number
(`allowed_numbers`) and source address (`allowed_addresses`, IPs or CIDRs). A dispatch rule applies
to the trunks it names (empty = every trunk) and the numbers it lists; the most specific rule wins.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from livekit.protocol import sip

from ..protocol.ids import new_sip_dispatch_rule_id, new_sip_trunk_id
from .config import GatewayConfig, SipConfigError, TrunkPolicy


@dataclass(frozen=True)
class Route:
    trunk: sip.SIPInboundTrunkInfo
    rule: sip.SIPDispatchRuleInfo
    room: str
    room_is_shared: bool  # a direct rule's room: other callers may be in it


def _address_allowed(allowed: list[str], source_ip: str) -> bool:
    if not allowed:
        return True
    try:
        ip = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _number_in(numbers: list[str], number: str) -> bool:
    return not numbers or number in numbers


def room_name(rule: sip.SIPDispatchRuleInfo, caller: str, called: str) -> tuple[str, bool]:
    """The room for this call under `rule`, and whether other calls share it."""
    kind = rule.rule.WhichOneof("rule")
    if kind == "dispatch_rule_direct":
        return rule.rule.dispatch_rule_direct.room_name, True
    if kind == "dispatch_rule_callee":
        callee = rule.rule.dispatch_rule_callee
        name = f"{callee.room_prefix}{called}"
        if callee.randomize:
            return f"{name}_{secrets.token_hex(4)}", False
        return name, True
    individual = rule.rule.dispatch_rule_individual
    name = f"{individual.room_prefix}{caller}"
    if individual.no_randomness:
        return name, True
    return f"{name}_{secrets.token_hex(4)}", False


def validate_rule(rule: sip.SIPDispatchRuleInfo) -> None:
    kind = rule.rule.WhichOneof("rule")
    if kind is None:
        raise SipConfigError("a dispatch rule needs one of dispatch_rule_direct / individual / callee")
    if kind == "dispatch_rule_direct" and not rule.rule.dispatch_rule_direct.room_name:
        raise SipConfigError("dispatch_rule_direct needs a room_name")
    for entry in rule.room_config.agents:
        if len(entry.agent_name) > 128:
            raise SipConfigError("agent_name longer than 128 characters")


def validate_trunk(trunk: sip.SIPInboundTrunkInfo) -> None:
    TrunkPolicy.of(trunk, GatewayConfig())  # status codes in ringing_timeout_status / metadata are usable
    for entry in trunk.allowed_addresses:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SipConfigError(f"allowed_addresses: {entry!r} is not an IP address or CIDR") from None


class SipDirectory:
    """The gateway's trunks and dispatch rules in memory (the Twirp service and a config file fill it)."""

    def __init__(self) -> None:
        self.trunks: dict[str, sip.SIPInboundTrunkInfo] = {}
        self.rules: dict[str, sip.SIPDispatchRuleInfo] = {}

    # -- management ------------------------------------------------------------------------------
    def add_trunk(self, trunk: sip.SIPInboundTrunkInfo) -> sip.SIPInboundTrunkInfo:
        validate_trunk(trunk)
        stored = sip.SIPInboundTrunkInfo()
        stored.CopyFrom(trunk)
        stored.sip_trunk_id = trunk.sip_trunk_id or new_sip_trunk_id()
        if stored.sip_trunk_id in self.trunks:
            raise SipConfigError(f"trunk {stored.sip_trunk_id} already exists")
        stored.created_at.GetCurrentTime()
        self.trunks[stored.sip_trunk_id] = stored
        return stored

    def delete_trunk(self, trunk_id: str) -> sip.SIPInboundTrunkInfo | None:
        return self.trunks.pop(trunk_id, None)

    def add_rule(self, rule: sip.SIPDispatchRuleInfo) -> sip.SIPDispatchRuleInfo:
        validate_rule(rule)
        stored = sip.SIPDispatchRuleInfo()
        stored.CopyFrom(rule)
        stored.sip_dispatch_rule_id = rule.sip_dispatch_rule_id or new_sip_dispatch_rule_id()
        if stored.sip_dispatch_rule_id in self.rules:
            raise SipConfigError(f"dispatch rule {stored.sip_dispatch_rule_id} already exists")
        stored.created_at.GetCurrentTime()
        self.rules[stored.sip_dispatch_rule_id] = stored
        return stored

    def delete_rule(self, rule_id: str) -> sip.SIPDispatchRuleInfo | None:
        return self.rules.pop(rule_id, None)

    # -- routing ---------------------------------------------------------------------------------
    def find_trunk(self, source_ip: str, caller: str, called: str) -> sip.SIPInboundTrunkInfo | None:
        """The trunk that admits this call; one that lists the called number beats a catch-all."""
        best: tuple[int, sip.SIPInboundTrunkInfo] | None = None
        for trunk in self.trunks.values():
            if not (
                _number_in(list(trunk.numbers), called)
                and _number_in(list(trunk.allowed_numbers), caller)
                and _address_allowed(list(trunk.allowed_addresses), source_ip)
            ):
                continue
            score = (2 if trunk.numbers else 0) + (1 if trunk.allowed_addresses else 0)
            if best is None or score > best[0]:
                best = (score, trunk)
        return best[1] if best else None

    def find_rule(self, trunk_id: str, caller: str, called: str) -> sip.SIPDispatchRuleInfo | None:
        best: tuple[int, sip.SIPDispatchRuleInfo] | None = None
        for rule in self.rules.values():
            if rule.trunk_ids and trunk_id not in rule.trunk_ids:
                continue
            callers, numbers = list(rule.inbound_numbers), list(rule.numbers)
            if not (_number_in(callers, caller) and _number_in(numbers, called)):
                continue
            score = (4 if rule.trunk_ids else 0) + (2 if numbers else 0) + (1 if callers else 0)
            if best is None or score > best[0]:
                best = (score, rule)
        return best[1] if best else None

    def route(self, source_ip: str, caller: str, called: str) -> Route | None:
        trunk = self.find_trunk(source_ip, caller, called)
        if trunk is None:
            return None
        rule = self.find_rule(trunk.sip_trunk_id, caller, called)
        if rule is None:
            return None
        room, shared = room_name(rule, caller, called)
        return Route(trunk, rule, room, shared)

    # -- config file -----------------------------------------------------------------------------
    def load_file(self, path: str | Path) -> None:
        """Load `{"trunks": [SIPInboundTrunkInfo...], "dispatch_rules": [SIPDispatchRuleInfo...]}`.

        Entries are protobuf JSON, the field names of livekit-protocol (either case)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SipConfigError(f"cannot read SIP config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise SipConfigError(f"{path}: expected a JSON object with 'trunks' and 'dispatch_rules'")
        try:
            for item in data.get("trunks", []):
                self.add_trunk(json_format.ParseDict(item, sip.SIPInboundTrunkInfo()))
            for item in data.get("dispatch_rules", []):
                self.add_rule(json_format.ParseDict(item, sip.SIPDispatchRuleInfo()))
        except json_format.ParseError as exc:
            raise SipConfigError(f"{path}: {exc}") from None
