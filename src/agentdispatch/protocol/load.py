"""Load values: one sanitising rule shared by the server and the worker."""

from __future__ import annotations

import math


def sanitize_load(value: float) -> float:
    """Map any reported load into [0, 1].

    NaN and +/-inf mean "we cannot tell": treated as full (1.0). Negative values are 0,
    values above 1 are 1.
    """
    if math.isnan(value) or math.isinf(value):
        return 1.0
    if value < 0.0:
        return 0.0
    if value > 1.0:
        return 1.0
    return float(value)
