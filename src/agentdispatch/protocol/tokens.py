"""Token helpers over livekit-api: bearer extraction, verification, and job tokens."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from livekit import api
from livekit.protocol import models

from .errors import AuthError

AGENT_NAME_ATTRIBUTE = "lk.agent.name"
JOB_TOKEN_TTL = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    key: str
    secret: str


LEEWAY_S = 5.0
CACHE_SIZE = 4096


class KeyRing:
    """API keys the server accepts. Tokens name their key in ``iss``.

    Verified tokens are cached until they expire: API clients mint one token per call and calls in the
    same second carry the same token, so a burst of requests verifies the signature once.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise AuthError("at least one API key is required")
        leeway = datetime.timedelta(seconds=LEEWAY_S)
        self._verifiers = {k: api.TokenVerifier(k, s, leeway=leeway) for k, s in keys.items()}
        self._secrets = dict(keys)
        self._cache: dict[str, tuple[api.access_token.Claims, float, float]] = {}

    def secret(self, key: str) -> str:
        return self._secrets[key]

    @property
    def first(self) -> KeyPair:
        key = next(iter(self._secrets))
        return KeyPair(key, self._secrets[key])

    def verify(self, token: str) -> api.access_token.Claims:
        """Verify signature, expiry, not-before and issuer; return the claims."""
        cached = self._cache.get(token)
        if cached is not None:
            claims, not_before, expires = cached
            if not_before - LEEWAY_S <= time.time() <= expires + LEEWAY_S:
                return claims
            del self._cache[token]
        return self._verify(token)

    def _verify(self, token: str) -> api.access_token.Claims:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self._verifiers:
            raise AuthError("token issuer is not a known API key")
        try:
            claims = self._verifiers[issuer].verify(token)
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = (claims, float(unverified.get("nbf", 0)), float(unverified["exp"]))
        return claims


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


def mint_job_token(keys: KeyPair, req: JobTokenRequest) -> str:
    """The room-join token handed to a worker in a JobAssignment."""
    perms = req.permissions
    grants = api.VideoGrants(
        room_join=True,
        room=req.room,
        agent=True,
        can_publish=perms.can_publish,
        can_subscribe=perms.can_subscribe,
        can_publish_data=perms.can_publish_data,
        can_update_own_metadata=perms.can_update_metadata,
        hidden=perms.hidden,
    )
    attributes = dict(req.attributes)
    attributes[AGENT_NAME_ATTRIBUTE] = req.agent_name
    token = (
        api.AccessToken(keys.key, keys.secret)
        .with_identity(req.identity)
        .with_name(req.name)
        .with_metadata(req.metadata)
        .with_attributes(attributes)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(JOB_TOKEN_TTL)
    )
    return token.to_jwt()
