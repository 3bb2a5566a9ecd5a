"""Token helpers: bearer extraction, KeyRing verification, and the job token handed to workers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import jwt
import pytest
from livekit import api
from livekit.protocol import models

from agentdispatch.protocol import (
    AGENT_NAME_ATTRIBUTE,
    AuthError,
    JobTokenRequest,
    KeyPair,
    KeyRing,
    bearer_token,
    mint_job_token,
)

KEYS = {"devkey": "secret", "other": "other-secret"}
MakeToken = Callable[..., str]


# -- bearer_token ---------------------------------------------------------------------------------------
def test_bearer_header() -> None:
    assert bearer_token({"Authorization": "Bearer abc.def.ghi"}, {}) == "abc.def.ghi"
    assert bearer_token({"Authorization": "bearer  tok "}, {}) == "tok"


def test_access_token_query_parameter() -> None:
    assert bearer_token({}, {"access_token": "q.tok"}) == "q.tok"


def test_header_wins_over_query() -> None:
    assert bearer_token({"Authorization": "Bearer h"}, {"access_token": "q"}) == "h"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, {}),
        ({}, {"access_token": ""}),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, {}),
        ({"Authorization": "Bearer "}, {}),
        ({"Authorization": "Bearer"}, {}),
    ],
    ids=["none", "empty-query", "basic-scheme", "empty-bearer", "bare-scheme"],
)
def test_missing_or_malformed_authorization(headers: dict[str, str], query: dict[str, str]) -> None:
    with pytest.raises(AuthError):
        bearer_token(headers, query)


# -- KeyRing ----------------------------------------------------------------------------------------
def test_keyring_requires_a_key() -> None:
    with pytest.raises(AuthError):
        KeyRing({})


def test_valid_token_for_each_key(make_token: MakeToken) -> None:
    ring = KeyRing(KEYS)
    for key, secret in KEYS.items():
        claims = ring.verify(make_token(key=key, secret=secret, identity="u1", agent=True))
        assert claims.identity == "u1"
        assert claims.video is not None and claims.video.agent is True
    assert ring.first == KeyPair("devkey", "secret")
    assert ring.secret("other") == "other-secret"


def _unsigned(payload: dict[str, object]) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}."


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: "", "malformed"),
        (lambda t: "not-a-jwt", "malformed"),
        (lambda t: "a.b.c", "malformed"),
        (lambda t: t(ttl=-60), "expired"),
        (lambda t: t(nbf_offset=120), "not yet valid"),
        (lambda t: t(secret="wrong-secret"), "invalid"),
        (lambda t: t(key="nobody", secret="secret"), "not a known API key"),
        (lambda t: t(algorithm="none"), "invalid"),
        (lambda t: t(algorithm="HS512"), "invalid"),
        (lambda t: t(include_exp=False), "invalid"),
        (lambda t: _unsigned({"iss": "devkey", "exp": int(time.time()) + 60}), "invalid"),
        (lambda t: jwt.encode({"exp": int(time.time()) + 60}, "secret", algorithm="HS256"), "not a known"),
        (lambda t: _unsigned({"iss": 5, "exp": int(time.time()) + 60}), "not a known"),
    ],
    ids=[
        "empty",
        "garbage",
        "bad-segments",
        "expired",
        "nbf-future",
        "wrong-secret",
        "unknown-issuer",
        "alg-none",
        "alg-hs512",
        "no-exp",
        "empty-signature",
        "no-issuer",
        "non-string-issuer",
    ],
)
def test_rejected_tokens_raise_auth_error(
    make: Callable[[MakeToken], str], message: str, make_token: MakeToken
) -> None:
    ring = KeyRing(KEYS)
    with pytest.raises(AuthError, match=message):
        ring.verify(make(make_token))


def test_leeway_accepts_small_clock_skew(make_token: MakeToken) -> None:
    # nbf two seconds in the future is within the 5 s leeway
    claims = KeyRing(KEYS).verify(make_token(nbf_offset=2, identity="skewed"))
    assert claims.identity == "skewed"


# -- job tokens ----------------------------------------------------------------------------------------
def _job_request(**overrides: object) -> JobTokenRequest:
    fields: dict[str, object] = {
        "room": "room-1",
        "identity": "agent-AJ_1",
        "name": "Helper",
        "metadata": '{"m": 1}',
        "attributes": {"team": "blue"},
        "agent_name": "support-bot",
        "permissions": models.ParticipantPermission(
            can_publish=False,
            can_subscribe=True,
            can_publish_data=True,
            can_update_metadata=True,
            hidden=True,
        ),
    }
    fields.update(overrides)
    return JobTokenRequest(**fields)  # type: ignore[arg-type]


def test_job_token_grants() -> None:
    token = mint_job_token(KeyPair("devkey", "secret"), _job_request())
    claims = api.TokenVerifier("devkey", "secret").verify(token)
    assert claims.identity == "agent-AJ_1"
    assert claims.name == "Helper"
    assert claims.metadata == '{"m": 1}'
    assert claims.kind == "agent"
    assert claims.attributes == {"team": "blue", AGENT_NAME_ATTRIBUTE: "support-bot"}
    video = claims.video
    assert video is not None
    assert video.room_join is True
    assert video.room == "room-1"
    assert video.agent is True
    assert video.can_publish is False
    assert video.can_subscribe is True
    assert video.can_publish_data is True
    assert video.can_update_own_metadata is True
    assert video.hidden is True


def test_job_token_permissions_mapped_other_way() -> None:
    perms = models.ParticipantPermission(can_publish=True, can_subscribe=False, can_publish_data=False)
    token = mint_job_token(KeyPair("devkey", "secret"), _job_request(permissions=perms))
    video = api.TokenVerifier("devkey", "secret").verify(token).video
    assert video is not None
    assert (video.can_publish, video.can_subscribe, video.can_publish_data) == (True, False, False)
    assert not video.can_update_own_metadata
    assert not video.hidden


def test_job_token_lives_one_hour_and_is_signed_with_the_key() -> None:
    before = int(time.time())
    token = mint_job_token(KeyPair("other", "other-secret"), _job_request())
    payload = jwt.decode(token, "other-secret", algorithms=["HS256"], issuer="other")
    assert payload["iss"] == "other"
    assert abs(payload["exp"] - before - 3600) <= 2
    assert payload["exp"] - payload["nbf"] == 3600
    with pytest.raises(AuthError):
        KeyRing({"devkey": "secret"}).verify(token)  # other key: not accepted elsewhere
    assert KeyRing(KEYS).verify(token).identity == "agent-AJ_1"


def test_agent_name_attribute_overrides_a_forged_one() -> None:
    token = mint_job_token(
        KeyPair("devkey", "secret"), _job_request(attributes={AGENT_NAME_ATTRIBUTE: "forged", "a": "b"})
    )
    claims = api.TokenVerifier("devkey", "secret").verify(token)
    assert claims.attributes == {AGENT_NAME_ATTRIBUTE: "support-bot", "a": "b"}


def test_verified_token_cache_never_outlives_the_token() -> None:
    """KeyRing caches verified tokens; a cached token must still expire on time."""
    ring = KeyRing(KEYS)
    exp = int(time.time()) - 4  # expired, but inside the 5 s leeway for about a second more
    token = jwt.encode({"iss": "devkey", "sub": "late", "exp": exp}, "secret", algorithm="HS256")
    assert ring.verify(token).identity == "late"
    time.sleep(max(0.0, exp + 5.2 - time.time()))  # wall-clock expiry: there is no event to await
    with pytest.raises(AuthError, match="expired"):
        ring.verify(token)
