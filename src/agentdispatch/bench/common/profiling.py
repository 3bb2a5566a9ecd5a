"""py-spy for the benchmarks: record a process while it is measured, and name where the time went."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...testing.serverproc import HarnessError

Row = dict[str, Any]
TRUNK_SHARE = 0.9
#: a stack ending here is the event loop waiting for I/O, not Python work; under uvloop the loop is C code
#: that py-spy cannot see, so its wait (and its own C work) shows as the runner being the last frame
IDLE_LEAVES = ("EpollSelector.select", "KqueueSelector.select", "select (", "Runner.run (", "run (uvloop")


def _function(frame: str) -> str:
    """`handle (agentdispatch/server/twirp.py:82)` -> `handle (agentdispatch/server/twirp.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own (leaf) samples and by inclusive samples, as shares of all samples.

    Samples where the event loop waits in select() count as idle and are left out of `top_self`.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str], keep: Callable[[str, int], bool] = lambda _n, _c: True) -> list[Row]:
        rows = [(name, n) for name, n in counter.most_common() if keep(name, n)][:top]
        return [{"function": name, "samples": n, "percent": round(100.0 * n / total, 1)} for name, n in rows]

    def below_trunk(_name: str, n: int) -> bool:
        return n < TRUNK_SHARE * total  # frames on (almost) every stack say nothing

    def ours(name: str, n: int) -> bool:
        return "agentdispatch/" in name and below_trunk(name, n)

    return {
        "samples": total,
        "idle_percent": round(100.0 * idle / total, 1) if total else 0.0,
        "top_self": share(own),
        "top_total": share(inclusive, below_trunk),
        "top_total_agentdispatch": share(inclusive, ours),
    }


class PySpyRecorder:
    """`py-spy record --pid <server>` while the measured phase runs (SIGINT makes it write)."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        found = str(exe) if exe.exists() else shutil.which("py-spy")
        if found is None:
            raise HarnessError("py-spy not found: pip install py-spy")
        fmt = "speedscope" if output.suffix == ".json" else "raw" if output.suffix == ".txt" else "flamegraph"
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self._cmd = [
            found,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            fmt,
            "-o",
            str(output),
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach before the measured phase starts

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return
        if proc.returncode not in (0, -signal.SIGINT) and err:
            with contextlib.suppress(OSError):
                sys.stderr.write(err.decode(errors="replace")[-2000:])
