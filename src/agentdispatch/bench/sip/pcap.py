"""G.711 RTP for sipp to play (`play_pcap_audio`): PCMU/PCMA packets 20 ms apart, plus RFC 4733 DTMF.

sipp rewrites the addresses and ports when it plays the file, so the headers only need to be well-formed.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import aiortp

FRAME = 160  # samples per 20 ms at 8 kHz


def tone_frames(frames: int, pt: int = 0) -> list[bytes]:
    """G.711 payloads of a tone that changes pitch every frame, so each frame is recognisable."""
    codec = aiortp.get_codec(pt)  # 0 = PCMU, 8 = PCMA
    out = []
    for f in range(frames):
        freq = 300 + 17 * f
        pcm = struct.pack(
            f"<{FRAME}h",
            *(int(9000 * math.sin(2 * math.pi * freq * (f * FRAME + i) / 8000)) for i in range(FRAME)),
        )
        out.append(codec.encode(pcm))
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


DTMF_CODES = {str(d): d for d in range(10)} | {"*": 10, "#": 11}


def dtmf_packets(digits: str) -> list[tuple[int, bytes, int]]:
    """RFC 4733 telephone-event packets (pt 101): per digit 3 updates then 3 end packets, one timestamp."""
    out = []
    for d, digit in enumerate(digits):
        ts_frame = 1000 + d * 20  # well after the audio, one event timestamp per digit
        for step in range(6):
            end = 0x80 if step >= 3 else 0
            duration = min(step + 1, 4) * FRAME
            out.append((101, struct.pack("!BBH", DTMF_CODES[digit], end | 10, duration), ts_frame))
    return out


def write_pcap(
    path: Path, payloads: list[bytes], ssrc: int = 0x1234ABCD, dtmf: str = "", pt: int = 0
) -> None:
    """Ethernet/IPv4/UDP/RTP packets 20 ms apart (sipp rewrites addresses and ports when it plays them)."""
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    packets = [(pt, p, i) for i, p in enumerate(payloads)] + dtmf_packets(dtmf)
    for seq, (pt, payload, ts_frame) in enumerate(packets):
        marker = 0x80 if pt == 101 and seq and packets[seq - 1][2] != ts_frame else 0
        rtp = struct.pack("!BBHII", 0x80, marker | pt, seq, ts_frame * FRAME, ssrc) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq, 0, 64, 17, 0,
                                bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))  # fmt: skip
        ip_header = ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:]
        frame = b"\0" * 12 + b"\x08\x00" + ip_header + udp
        usec = seq * 20_000
        records.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
        records.append(frame)
    path.write_bytes(b"".join(records))
