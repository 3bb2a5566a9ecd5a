"""The one load rule shared by server and worker: anything reported maps into [0, 1]."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentdispatch.protocol import sanitize_load


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        (math.nan, 1.0),  # cannot tell -> full
        (math.inf, 1.0),
        (-math.inf, 1.0),
        (-1.0, 0.0),
        (-1e-9, 0.0),
        (2.0, 1.0),
        (1.0000001, 1.0),
        (0.5, 0.5),
        (0.0, 0.0),
        (1.0, 1.0),
    ],
)
def test_sanitize_load(reported: float, expected: float) -> None:
    assert sanitize_load(reported) == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_result_is_always_in_unit_interval(value: float) -> None:
    result = sanitize_load(value)
    assert isinstance(result, float)
    assert 0.0 <= result <= 1.0


@given(st.floats(min_value=0.0, max_value=1.0))
def test_valid_values_pass_unchanged(value: float) -> None:
    assert sanitize_load(value) == value
