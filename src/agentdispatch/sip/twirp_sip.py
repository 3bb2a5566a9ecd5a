"""The Twirp `livekit.SIP` service: inbound trunks and dispatch rules (grant `sip.admin`), JSON or protobuf.

Mounted as plain routes `/twirp/livekit.SIP/<Method>` on the server's app; aiohttp resolves a plain
path before the server's `/twirp/{service}/{method}` pattern, so the other services are untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import sip

from ..protocol import AuthError, KeyRing, TwirpError, bearer_token
from .config import SipConfigError
from .directory import SipDirectory

JSON = "application/json"
PROTOBUF = "application/protobuf"
MAX_BODY = 256 * 1024
Handler = Callable[[Any], Awaitable[Message]]


def _error(err: TwirpError) -> web.Response:
    return web.json_response({"code": err.code, "msg": err.msg}, status=err.status)


class SipTwirp:
    def __init__(self, keys: KeyRing, directory: SipDirectory) -> None:
        self._keys = keys
        self._dir = directory
        self._methods: dict[str, tuple[type[Message], Handler]] = {
            "CreateSIPInboundTrunk": (sip.CreateSIPInboundTrunkRequest, self.create_trunk),
            "ListSIPInboundTrunk": (sip.ListSIPInboundTrunkRequest, self.list_trunks),
            "DeleteSIPTrunk": (sip.DeleteSIPTrunkRequest, self.delete_trunk),
            "CreateSIPDispatchRule": (sip.CreateSIPDispatchRuleRequest, self.create_rule),
            "ListSIPDispatchRule": (sip.ListSIPDispatchRuleRequest, self.list_rules),
            "DeleteSIPDispatchRule": (sip.DeleteSIPDispatchRuleRequest, self.delete_rule),
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"/twirp/livekit.SIP/{name}", self.handle) for name in self._methods]

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except TwirpError as err:
            return _error(err)
        except SipConfigError as err:
            return _error(TwirpError("invalid_argument", str(err)))

    async def _handle(self, request: web.Request) -> web.Response:
        request_type, handler = self._methods[request.path.rsplit("/", 1)[1]]
        try:
            claims = self._keys.verify(bearer_token(request.headers, request.query))
        except AuthError as exc:
            raise TwirpError("unauthenticated", str(exc)) from None
        if claims.sip is None or not claims.sip.admin:
            raise TwirpError("permission_denied", "requires the sip.admin grant")
        if request.content_type not in (JSON, PROTOBUF):
            raise TwirpError("bad_route", f"unsupported content type {request.content_type!r}")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise TwirpError("malformed", f"body larger than {MAX_BODY} bytes")
        req = request_type()
        try:
            if request.content_type == JSON:
                json_format.Parse(body.decode() if body else "{}", req, ignore_unknown_fields=True)
            else:
                req.ParseFromString(body)
        except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            raise TwirpError("malformed", f"cannot decode {req.DESCRIPTOR.name}: {exc}") from None
        resp = await handler(req)
        if request.content_type == JSON:
            text = json_format.MessageToJson(resp, indent=None, preserving_proto_field_name=True)
            return web.Response(text=text, content_type=JSON)
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)

    # -- trunks ----------------------------------------------------------------------------------
    async def create_trunk(self, req: sip.CreateSIPInboundTrunkRequest) -> Message:
        trunk = sip.SIPInboundTrunkInfo()
        trunk.CopyFrom(req.trunk)
        trunk.sip_trunk_id = ""  # the server names it
        return self._dir.add_trunk(trunk)

    async def list_trunks(self, req: sip.ListSIPInboundTrunkRequest) -> Message:
        items = [
            t
            for t in self._dir.trunks.values()
            if (not req.trunk_ids or t.sip_trunk_id in req.trunk_ids)
            and (not req.numbers or set(req.numbers) & set(t.numbers))
        ]
        return sip.ListSIPInboundTrunkResponse(items=items)

    async def delete_trunk(self, req: sip.DeleteSIPTrunkRequest) -> Message:
        trunk = self._dir.delete_trunk(req.sip_trunk_id)
        if trunk is None:
            raise TwirpError("not_found", f"SIP trunk {req.sip_trunk_id!r} not found")
        return sip.SIPTrunkInfo(
            sip_trunk_id=trunk.sip_trunk_id,
            kind=sip.SIPTrunkInfo.TrunkKind.TRUNK_INBOUND,
            inbound_addresses=list(trunk.allowed_addresses),
            inbound_numbers=list(trunk.allowed_numbers),
            name=trunk.name,
            metadata=trunk.metadata,
        )

    # -- dispatch rules --------------------------------------------------------------------------
    async def create_rule(self, req: sip.CreateSIPDispatchRuleRequest) -> Message:
        rule = sip.SIPDispatchRuleInfo()
        if req.HasField("dispatch_rule"):
            rule.CopyFrom(req.dispatch_rule)
        else:  # the older flat form of the request
            rule.rule.CopyFrom(req.rule)
            rule.trunk_ids.extend(req.trunk_ids)
            rule.hide_phone_number = req.hide_phone_number
            rule.inbound_numbers.extend(req.inbound_numbers)
            rule.name, rule.metadata = req.name, req.metadata
            rule.attributes.update(req.attributes)
            rule.room_config.CopyFrom(req.room_config)
        rule.sip_dispatch_rule_id = ""
        return self._dir.add_rule(rule)

    async def list_rules(self, req: sip.ListSIPDispatchRuleRequest) -> Message:
        items = [
            r
            for r in self._dir.rules.values()
            if (not req.dispatch_rule_ids or r.sip_dispatch_rule_id in req.dispatch_rule_ids)
            and (not req.trunk_ids or set(req.trunk_ids) & set(r.trunk_ids))
        ]
        return sip.ListSIPDispatchRuleResponse(items=items)

    async def delete_rule(self, req: sip.DeleteSIPDispatchRuleRequest) -> Message:
        rule = self._dir.delete_rule(req.sip_dispatch_rule_id)
        if rule is None:
            raise TwirpError("not_found", f"SIP dispatch rule {req.sip_dispatch_rule_id!r} not found")
        return rule
