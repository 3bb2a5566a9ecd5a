"""The protocol package is light: a module loads only what it needs, never livekit-api, aiohttp or PyJWT."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("livekit", "aiohttp", "jwt", "google.protobuf", "asyncio")

PROBE = """
import json, sys
before = set(sys.modules)
exec(sys.argv[1])
new = sorted(set(sys.modules) - before)
print(json.dumps(new))
"""


def modules_loaded_by(statement: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, statement], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import agentdispatch.protocol.errors",
        "from agentdispatch.protocol import ConfigError, sanitize_load, MAX_FRAME_BYTES",
        "from agentdispatch.protocol.urls import agent_ws_url",
        "from agentdispatch.protocol.ids import new_job_id",
        "import agentdispatch.protocol.jwt_warnings",
    ],
)
def test_light_protocol_modules_load_nothing_heavy(statement: str) -> None:
    loaded = modules_loaded_by(statement)
    assert [m for m in loaded if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}] == []
    stdlib = sys.stdlib_module_names
    assert all(m.startswith(("agentdispatch", "__future__")) or m.split(".")[0] in stdlib for m in loaded)


def test_a_heavy_name_loads_its_own_submodule_only_when_asked() -> None:
    loaded = modules_loaded_by("from agentdispatch.protocol import encode")
    assert "agentdispatch.protocol.codec" in loaded
    assert "agentdispatch.protocol.tokens" not in loaded  # livekit-api and PyJWT stay out
