"""Wire limits shared by both ends of the agent protocol (standard library only)."""

from __future__ import annotations

#: largest agent-protocol WebSocket frame either side accepts (LiveKit's limit)
MAX_FRAME_BYTES = 2 * 1024 * 1024
