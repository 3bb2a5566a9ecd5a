"""Identifier generation with LiveKit's prefixes."""

from __future__ import annotations

import os
import string

_ALPHABET = string.digits + string.ascii_letters
_BASE = len(_ALPHABET)

WORKER = "AW_"
JOB = "AJ_"
DISPATCH = "AD_"
ROOM = "RM_"
PARTICIPANT = "PA_"
NODE = "ND_"


def new_id(prefix: str, length: int = 12) -> str:
    """A random id such as ``AJ_x8Kd2mQp0ZaB`` (base62, from the OS random source)."""
    n = int.from_bytes(os.urandom(length), "big")
    chars = []
    for _ in range(length):
        n, r = divmod(n, _BASE)
        chars.append(_ALPHABET[r])
    return prefix + "".join(chars)
