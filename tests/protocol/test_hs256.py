"""Our HS256 tokens are interchangeable with livekit-api's, and forgeries are refused."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import room

from agentdispatch.protocol import AuthError, KeyRing, hs256

KEY, SECRET = "apikey", "a-secret-long-enough-for-hs256-32b!"


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@given(
    identity=st.text(min_size=1, max_size=30),
    room_name=st.text(min_size=1, max_size=30),
    attrs=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)
def test_livekit_minted_tokens_verify_with_the_same_claims(
    identity: str, room_name: str, attrs: dict[str, str]
) -> None:
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity(identity)
        .with_attributes(attrs)
        .with_grants(api.VideoGrants(room_join=True, room=room_name, room_admin=True))
        .to_jwt()
    )
    ours = KeyRing({KEY: SECRET}).verify(token)
    theirs = api.TokenVerifier(KEY, SECRET).verify(token)
    assert ours.identity == theirs.identity == identity
    assert ours.video == theirs.video
    assert ours.attributes == theirs.attributes


def test_room_config_is_parsed() -> None:
    cfg = room.RoomConfiguration(empty_timeout=7)
    cfg.agents.add(agent_name="a1", metadata="m")
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("u")
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .with_room_config(cfg)
        .to_jwt()
    )
    claims = KeyRing({KEY: SECRET}).verify(token)
    assert claims.room_config is not None
    assert claims.room_config.empty_timeout == 7
    assert [a.agent_name for a in claims.room_config.agents] == ["a1"]


def test_our_tokens_verify_with_livekit() -> None:
    now = int(time.time())
    token = hs256.encode(
        {"iss": KEY, "sub": "me", "nbf": now, "exp": now + 60, "video": {"agent": True}}, SECRET
    )
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "me" and claims.video is not None and claims.video.agent is True


def _forge(header: object, payload: object, secret: str = SECRET) -> str:
    signing = f"{_b64(header)}.{_b64(payload)}"
    sig = hs256.b64url_encode(hs256._sign(signing.encode(), secret))
    return f"{signing}.{sig}"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (_forge({"alg": "none"}, {"iss": KEY, "exp": 2**40}), "not HS256"),
        (_forge({"alg": "HS512"}, {"iss": KEY, "exp": 2**40}), "not HS256"),
        (_forge({"alg": "HS256"}, {"iss": KEY}), "exp is required"),
        (_forge({"alg": "HS256"}, {"iss": KEY, "exp": True}), "not a number"),
        (_forge({"alg": "HS256"}, {"iss": KEY, "exp": 1}), "expired"),
        (_forge({"alg": "HS256"}, {"iss": KEY, "exp": 2**40, "nbf": 2**39}), "not yet valid"),
        (_forge({"alg": "HS256"}, {"iss": KEY, "exp": 2**40}, "other-secret"), "signature"),
        (_forge({"alg": "HS256"}, ["not", "an", "object"]), "not an object"),
        (_forge({"alg": "HS256"}, {"iss": "stranger", "exp": 2**40}), "issuer"),
        ("a.b", "three segments"),
        ("!!.??.**", "base64url"),
    ],
)
def test_forged_or_broken_tokens_are_refused(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        KeyRing({KEY: SECRET}).verify(token)


def test_tampered_payload_fails_signature() -> None:
    good = _forge({"alg": "HS256"}, {"iss": KEY, "exp": 2**40, "video": {"roomAdmin": False}})
    header, _, sig = good.split(".")
    tampered = f"{header}.{_b64({'iss': KEY, 'exp': 2**40, 'video': {'roomAdmin': True}})}.{sig}"
    with pytest.raises(AuthError, match="signature"):
        KeyRing({KEY: SECRET}).verify(tampered)
