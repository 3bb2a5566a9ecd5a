"""Structured log extras: which attributes of a LogRecord are ours (job_id, worker_id, room, pid, ...)."""

from __future__ import annotations

import logging
from typing import Any

#: every attribute a plain LogRecord carries, plus those formatters add; anything else came in `extra=`
STANDARD_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, in the order they were set."""
    return {k: v for k, v in record.__dict__.items() if k not in STANDARD_RECORD_ATTRS}
