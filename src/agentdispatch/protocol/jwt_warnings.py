"""PyJWT's warning about short HMAC keys, silenced in one place.

PyJWT (behind livekit-api) warns on every token signed or verified with an HMAC key shorter than the
hash; LiveKit's dev secret (`secret`) is short by design. Call this where a process starts (the CLI,
benchmark client processes); the test suite does the same in pyproject's `filterwarnings`.
"""

from __future__ import annotations

import warnings

#: the start of PyJWT's InsecureKeyLengthWarning message
HMAC_WARNING_PREFIX = "The HMAC key is"


def ignore_short_hmac_key_warning() -> None:
    warnings.filterwarnings("ignore", message=HMAC_WARNING_PREFIX)
