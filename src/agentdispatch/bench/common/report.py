"""Shared by the benchmark reports: table cells, where the targets are written, and the result JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: where the performance targets a printed table checks are written down (the repo's own docs)
TARGETS_DOC = "bench/README.md, Targets"


def fmt_num(value: Any, unit: str = "", digits: int = 3) -> str:
    """A table cell: '-' for missing, yes/NO for booleans, floats to `digits` places."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path
