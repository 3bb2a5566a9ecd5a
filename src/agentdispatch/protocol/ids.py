"""Identifiers with LiveKit's prefixes: the one place a prefix such as ``AJ_`` is written.

Use the helpers (`new_job_id()`, ...) rather than `new_id(<literal>)`, so every id of a kind looks alike.
"""

from __future__ import annotations

import base64
import functools
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
WEBHOOK_EVENT = "EV_"
SIP_CALL = "SCL_"
SIP_TRUNK = "ST_"
SIP_DISPATCH_RULE = "SDR_"


# ids name things, they grant nothing (tokens do): a fast generator seeded from the OS is enough
_RNG = random.Random(os.urandom(32))


#: base64url's two non-alphanumeric digits become letters, so an id stays base62 (a slight bias, no matter)
_TO_BASE62 = bytes.maketrans(b"-_", b"xz")


def new_id(prefix: str, length: int = 12) -> str:
    """A random id such as ``AJ_x8Kd2mQp0ZaB`` (base62)."""
    if length == 12:  # the usual size: 72 random bits, 12 base64url digits at once (~10x random.choices)
        raw = base64.urlsafe_b64encode(_RNG.getrandbits(72).to_bytes(9, "big"))
        return prefix + raw.translate(_TO_BASE62).decode("ascii")
    return prefix + "".join(_RNG.choices(_ALPHABET, k=length))


# one helper per kind of id, so no caller writes a prefix
new_worker_id = functools.partial(new_id, WORKER)
new_job_id = functools.partial(new_id, JOB)
new_dispatch_id = functools.partial(new_id, DISPATCH)
new_room_sid = functools.partial(new_id, ROOM)
new_participant_sid = functools.partial(new_id, PARTICIPANT)
new_node_id = functools.partial(new_id, NODE)
new_webhook_event_id = functools.partial(new_id, WEBHOOK_EVENT)
new_sip_call_id = functools.partial(new_id, SIP_CALL)
new_sip_trunk_id = functools.partial(new_id, SIP_TRUNK)
new_sip_dispatch_rule_id = functools.partial(new_id, SIP_DISPATCH_RULE)


def reseed_after_fork() -> None:
    _RNG.seed(os.urandom(32))


os.register_at_fork(after_in_child=reseed_after_fork)
