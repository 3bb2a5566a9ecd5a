"""Small statistics helpers shared by the benchmarks (percentiles, summaries, environment facts)."""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear between closest ranks."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def summarize_ms(seconds: Iterable[float]) -> dict[str, float | int]:
    """n, min, mean, p50, p95, p99, max of durations given in seconds, reported in milliseconds."""
    values = sorted(v * 1000.0 for v in seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(values[0], 4),
        "mean": round(sum(values) / len(values), 4),
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(values[-1], 4),
    }


def ratio(numerator: float | int | None, denominator: float | int | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(float(numerator) / float(denominator), 3)


def source_revision() -> dict[str, Any]:
    """The git commit of the code under test, and whether `src/` has uncommitted changes."""
    root = next((d for d in Path(__file__).resolve().parents if (d / ".git").exists()), None)
    if root is None:  # an installed copy, not a checkout
        return {"git_commit": None, "source_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "source_dirty": None}
    return {"git_commit": commit, "source_dirty": bool(status.strip())}


def environment() -> dict[str, Any]:
    """Facts about the machine and interpreter, written into every result file."""
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count() or 1,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        **source_revision(),
    }
