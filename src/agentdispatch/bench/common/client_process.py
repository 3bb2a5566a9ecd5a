"""The body every benchmark client process runs: serve the parent's commands until the pipe closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

from ...protocol.jwt_warnings import ignore_short_hmac_key_warning


def run_client_process(serve: Coroutine[Any, Any, None], conn: Connection) -> None:
    """Run `serve` on a fresh loop; the parent going away (EOF, broken pipe, Ctrl-C) is a normal end."""
    ignore_short_hmac_key_warning()
    try:
        asyncio.run(serve)
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.close()
