"""Identifier generation with LiveKit's prefixes."""

from __future__ import annotations

import os
import random
import string

_ALPHABET = string.digits + string.ascii_letters

WORKER = "AW_"
JOB = "AJ_"
DISPATCH = "AD_"
ROOM = "RM_"
PARTICIPANT = "PA_"
NODE = "ND_"


# ids name things, they grant nothing (tokens do): a fast generator seeded from the OS is enough
_RNG = random.Random(os.urandom(32))


def new_id(prefix: str, length: int = 12) -> str:
    """A random id such as ``AJ_x8Kd2mQp0ZaB`` (base62)."""
    return prefix + "".join(_RNG.choices(_ALPHABET, k=length))


def reseed_after_fork() -> None:
    _RNG.seed(os.urandom(32))


os.register_at_fork(after_in_child=reseed_after_fork)
