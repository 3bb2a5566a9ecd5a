"""Server URLs: one rule for turning a LiveKit URL into its WebSocket or HTTP form.

Users give either form (`ws://`, `wss://`, `http://`, `https://`); a WebSocket client needs `ws`/`wss`
and an HTTP client `http`/`https`. TLS is kept: `https` <-> `wss`, `http` <-> `ws`. Other schemes and
bare hosts are returned unchanged (options validate schemes; this module only rewrites).
"""

from __future__ import annotations

_TO_WS = {"http://": "ws://", "https://": "wss://"}
_TO_HTTP = {"ws://": "http://", "wss://": "https://"}

#: path of the agent-protocol WebSocket on a LiveKit-compatible server
AGENT_PATH = "/agent"


def _swap_scheme(url: str, table: dict[str, str]) -> str:
    base = url.rstrip("/")
    for old, new in table.items():
        if base[: len(old)].lower() == old:
            return new + base[len(old) :]
    return base


def websocket_base(url: str) -> str:
    """`url` without a trailing slash, with http(s) turned into ws(s)."""
    return _swap_scheme(url, _TO_WS)


def http_base(url: str) -> str:
    """`url` without a trailing slash, with ws(s) turned into http(s)."""
    return _swap_scheme(url, _TO_HTTP)


def agent_ws_url(url: str) -> str:
    """The agent-protocol endpoint of the server at `url`: `wss://host/agent` for `https://host`."""
    return websocket_base(url) + AGENT_PATH
