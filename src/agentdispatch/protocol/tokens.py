"""Tokens: bearer extraction, verification into livekit-api Claims, and job tokens."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from livekit import api
from livekit.protocol import models, room

from . import hs256
from .errors import AuthError

AGENT_NAME_ATTRIBUTE = "lk.agent.name"
JOB_TOKEN_TTL = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    key: str
    secret: str


LEEWAY_S = 5.0
CACHE_SIZE = 4096

_VIDEO_FIELDS = {
    "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_"))): name
    for name in api.VideoGrants.__dataclass_fields__
}


def claims_from_payload(payload: dict[str, Any]) -> api.access_token.Claims:
    """The livekit-api Claims for a verified payload (the parts the server reads)."""
    video = payload.get("video")
    grants = api.VideoGrants()
    if isinstance(video, dict):
        known = {_VIDEO_FIELDS[k]: v for k, v in video.items() if k in _VIDEO_FIELDS}
        grants = api.VideoGrants(**known)
    attributes = payload.get("attributes")
    claims = api.access_token.Claims(
        identity=str(payload.get("sub", "")),
        name=str(payload.get("name", "")),
        kind=str(payload.get("kind", "")),
        metadata=str(payload.get("metadata", "")),
        video=grants,
        attributes={str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, dict) else {},
    )
    sip = payload.get("sip")
    if isinstance(sip, dict):  # the SIP grants (livekit.SIP Twirp service)
        claims.sip = api.SIPGrants(admin=sip.get("admin") is True, call=sip.get("call") is True)
    room_config = payload.get("roomConfig")
    if isinstance(room_config, dict) and room_config:
        try:
            claims.room_config = json_format.ParseDict(
                room_config, room.RoomConfiguration(), ignore_unknown_fields=True
            )
        except json_format.ParseError as exc:
            raise AuthError(f"invalid token: bad roomConfig: {exc}") from None
    return claims


class KeyRing:
    """API keys the server accepts. Tokens name their key in ``iss``.

    Verified tokens are cached until they expire: a client that reuses its token (a worker reconnecting,
    repeated calls within one second for the same room) is verified once.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise AuthError("at least one API key is required")
        self._secrets = dict(keys)
        self._cache: dict[str, tuple[api.access_token.Claims, float, float]] = {}
        self._issuers: dict[str, str] = {}

    def secret(self, key: str) -> str:
        return self._secrets[key]

    @property
    def first(self) -> KeyPair:
        key = next(iter(self._secrets))
        return KeyPair(key, self._secrets[key])

    def verify(self, token: str) -> api.access_token.Claims:
        """Verify signature, expiry, not-before and issuer; return the claims."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            claims, not_before, expires = cached
            if not_before - LEEWAY_S <= now <= expires + LEEWAY_S:
                return claims
            del self._cache[token]
        parsed = hs256.parse(token)
        issuer = parsed.payload.get("iss")
        if not isinstance(issuer, str) or issuer not in self._secrets:
            raise AuthError("token issuer is not a known API key")
        payload = hs256.verify_parsed(parsed, self._secrets[issuer], now, LEEWAY_S)
        claims = claims_from_payload(payload)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = (claims, float(payload.get("nbf") or 0), float(payload["exp"]))
        self._issuers[token] = issuer
        if len(self._issuers) > CACHE_SIZE:
            self._issuers.pop(next(iter(self._issuers)))
        return claims

    def issuer(self, token: str) -> str:
        """The API key a token verified by `verify` names in ``iss`` (without parsing it again)."""
        known = self._issuers.get(token)
        if known is not None:
            return known
        return str(hs256.unverified_payload(token).get("iss", ""))


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The token from ``Authorization: Bearer`` or the ``access_token`` query parameter."""
    auth = headers.get("Authorization", "")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("authorization header must be 'Bearer <token>'")
        return value.strip()
    token = query.get("access_token", "")
    if not token:
        raise AuthError("missing access token")
    return token


@dataclass(frozen=True)
class JobTokenRequest:
    room: str
    identity: str
    name: str
    metadata: str
    attributes: Mapping[str, str]
    agent_name: str
    permissions: models.ParticipantPermission


def mint_job_token(keys: KeyPair, req: JobTokenRequest, now: float | None = None) -> str:
    """The room-join token handed to a worker in a JobAssignment (same claims as livekit-api mints)."""
    perms = req.permissions
    issued = int(time.time() if now is None else now)
    attributes = dict(req.attributes)
    attributes[AGENT_NAME_ATTRIBUTE] = req.agent_name
    payload: dict[str, Any] = {
        "sub": req.identity,
        "iss": keys.key,
        "nbf": issued,
        "exp": issued + int(JOB_TOKEN_TTL.total_seconds()),
        "kind": "agent",
        "attributes": attributes,
        "video": {
            "roomJoin": True,
            "room": req.room,
            "agent": True,
            "canPublish": perms.can_publish,
            "canSubscribe": perms.can_subscribe,
            "canPublishData": perms.can_publish_data,
            "canUpdateOwnMetadata": perms.can_update_metadata,
            "hidden": perms.hidden,
        },
    }
    if req.name:
        payload["name"] = req.name
    if req.metadata:
        payload["metadata"] = req.metadata
    return hs256.encode(payload, keys.secret)
