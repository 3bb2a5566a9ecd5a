"""Identifier generation with LiveKit's prefixes."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

WORKER = "AW_"
JOB = "AJ_"
DISPATCH = "AD_"
ROOM = "RM_"
PARTICIPANT = "PA_"
NODE = "ND_"


def new_id(prefix: str, length: int = 12) -> str:
    """A random id such as ``AJ_x8Kd2mQp0ZaB``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))
