"""Early media while the caller waits: `183 Session Progress` with our SDP, then a ringback tone as RTP.

Off by default (plain `180 Ringing`, the caller's own phone plays ringback); on with `ringback=True` for
carriers and phones that expect network-generated ringback. The tone is the North American one
(440 + 480 Hz, 2 s on, 4 s off).
"""

from __future__ import annotations

import asyncio
import math
import struct

from aiosipua import IncomingCall, serialize_sdp
from aiosipua.rtp_bridge import CallSession

RATE = 8000
FRAME = 160  # 20 ms
ON_FRAMES, OFF_FRAMES = 100, 200  # 2 s tone, 4 s silence


def _ringback_frames() -> list[bytes]:
    frames = []
    for f in range(ON_FRAMES):
        samples = (
            int(4000 * (math.sin(2 * math.pi * 440 * n / RATE) + math.sin(2 * math.pi * 480 * n / RATE)))
            for n in range(f * FRAME, (f + 1) * FRAME)
        )
        frames.append(struct.pack(f"<{FRAME}h", *samples))
    silence = bytes(FRAME * 2)
    return frames + [silence] * OFF_FRAMES


CADENCE = _ringback_frames()


def session_progress(inv: IncomingCall, media: CallSession) -> None:
    """183 Session Progress carrying the SDP answer (the media path opens before the 200)."""
    host, port = inv.advertised_addr or (inv.transport.local_addr if inv.transport else ("0.0.0.0", 5060))
    resp = inv.dialog.create_response(inv.invite, 183, "Session Progress", contact=f"<sip:{host}:{port}>")
    resp.text = serialize_sdp(media.sdp_answer)
    resp.headers.set_single("Content-Type", "application/sdp")
    if inv.user_agent:
        resp.headers.set_single("User-Agent", inv.user_agent)
    if inv.transport is not None:
        inv.transport.send_reply(resp)


async def play_ringback(media: CallSession) -> None:
    """Send the ringback cadence at real-time pace until cancelled."""
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while True:
        session = media.rtp_session
        if session is not None:
            session.send_audio_pcm_auto(CADENCE[i % len(CADENCE)])
        i += 1
        delay = start + i * 0.02 - loop.time()
        await asyncio.sleep(max(delay, 0.0))
