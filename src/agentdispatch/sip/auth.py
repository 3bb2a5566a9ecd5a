"""Digest authentication of inbound trunks (RFC 2617 / 7616 MD5, qop=auth): 407 challenge, then verify.

A trunk with `auth_username` admits only INVITEs whose `Proxy-Authorization` (or `Authorization`) answers
a nonce we issued within NONCE_TTL seconds. Nonces are self-validating (an HMAC of their issue time),
so the gateway keeps no per-caller state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiosipua import IncomingCall, parse_auth
from livekit.protocol import sip

NONCE_TTL = 300.0


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class DigestGuard:
    def __init__(self, realm: str) -> None:
        self.realm = realm
        self._key = secrets.token_bytes(32)

    def _nonce(self, issued: int) -> str:
        mac = hmac.new(self._key, str(issued).encode(), hashlib.sha256).hexdigest()[:32]
        return f"{issued:x}.{mac}"

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        stamp, _, _mac = nonce.partition(".")
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        return hmac.compare_digest(self._nonce(issued), nonce) and 0 <= now - issued <= NONCE_TTL

    def challenge(self, inv: IncomingCall, trunk: sip.SIPInboundTrunkInfo) -> None:
        """Answer 407 with a fresh nonce."""
        realm = trunk.auth_realm or self.realm
        resp = inv.dialog.create_response(inv.invite, 407, "Proxy Authentication Required")
        resp.headers.set_single(
            "Proxy-Authenticate",
            f'Digest realm="{realm}", nonce="{self._nonce(int(time.time()))}", algorithm=MD5, qop="auth"',
        )
        if inv.transport is not None:
            inv.transport.send_reply(resp)
        inv.dialog.terminate()

    def verify(self, inv: IncomingCall, trunk: sip.SIPInboundTrunkInfo) -> bool:
        raw = inv.invite.get_header("proxy-authorization") or inv.invite.get_header("authorization")
        if not raw:
            return False
        try:
            creds = parse_auth(raw)
        except ValueError:
            return False
        p = {k.lower(): v for k, v in creds.params.items()}
        realm = trunk.auth_realm or self.realm
        if p.get("username") != trunk.auth_username or p.get("realm") != realm:
            return False
        nonce, uri, response = p.get("nonce", ""), p.get("uri", ""), p.get("response", "")
        if not self._nonce_fresh(nonce, time.time()) or p.get("algorithm", "MD5").upper() != "MD5":
            return False
        ha1 = _md5(f"{trunk.auth_username}:{realm}:{trunk.auth_password}")
        ha2 = _md5(f"{inv.invite.method}:{uri}")
        qop = p.get("qop", "")
        if qop == "auth":
            expected = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        elif not qop:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        else:
            return False
        return hmac.compare_digest(expected, response.lower())
