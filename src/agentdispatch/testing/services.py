"""Real peer services for tests and benchmarks: redis-server and haproxy on loopback ephemeral ports.

A missing binary is installed from Debian (`apt-get install -y`, once per process). Tests call
`require(binary, package)`: when the binary cannot be had, the test FAILS under CI=true and is skipped
otherwise. Every process started here is stopped by its owner (`stop()` / context manager).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .serverproc import HarnessError, free_port

_apt_updated = False


def ensure_installed(binary: str, package: str) -> str | None:
    """The path of `binary`, installing Debian `package` if it is missing; None if that failed."""
    global _apt_updated
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, timeout=600, check=False
    )
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")


#: the real peers the test suite starts: binary -> Debian package
DEBIAN_PEERS: dict[str, str] = {
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "chromium": "chromium",
    "sipp": "sip-tester",
}


def ensure_all_installed(peers: dict[str, str] = DEBIAN_PEERS) -> list[str]:
    """Install every missing peer in one apt-get run (before any test's timeout starts); the binaries
    still missing afterwards (tests that need them fail under CI=true, else skip)."""
    global _apt_updated

    def which(binary: str) -> str | None:
        return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")

    missing = sorted({pkg for binary, pkg in peers.items() if not which(binary)})
    if missing and shutil.which("apt-get") is not None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing Debian packages for the real-peer tests: {' '.join(missing)}", flush=True)
        if not _apt_updated:
            update = ["apt-get", "update", "-q"]
            subprocess.run(update, env=env, capture_output=True, timeout=900, check=False)
            _apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            env=env,
            capture_output=True,
            timeout=1800,
            check=False,
        )
    return [binary for binary in peers if not which(binary)]


def require(binary: str, package: str) -> str:
    """For tests: the binary's path, or fail (CI=true) / skip (otherwise) when it cannot be had."""
    import pytest

    path = ensure_installed(binary, package)
    if path is not None:
        return path
    msg = f"{binary} not available and `apt-get install -y {package}` did not provide it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"process exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    raise HarnessError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


class _Service:
    name = "service"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"ad-{self.name}-"))

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.name} not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisProcess(_Service):
    """`redis-server` on 127.0.0.1; `stop()` then `start()` brings it back on the same port.

    With `appendonly=True` every write is fsynced to the AOF (`appendfsync always`), so a restart
    keeps everything Redis acknowledged; without it a restart starts empty.
    """

    name = "redis"

    def __init__(self, binary: str = "redis-server", port: int = 0, appendonly: bool = False) -> None:
        super().__init__()
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_port(self.port, timeout, self.proc)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self


class HaproxyProcess(_Service):
    """`haproxy -db -f <config>` in the foreground; the config text is written to a temp file."""

    name = "haproxy"

    def __init__(
        self, config_text: str, port: int, binary: str = "haproxy", env: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.binary = binary
        self.port = port
        #: variables the config expands ("${AD_BIND}", ...), on top of this process's environment
        self.env = {**os.environ, **(env or {})}
        self.config_path = self.dir / "haproxy.cfg"
        self.config_path.write_text(config_text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> None:
        """Validate the config with `haproxy -c`; raise HarnessError with haproxy's words if invalid."""
        res = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)],
            capture_output=True,
            timeout=30,
            check=False,
            env=self.env,
        )
        if res.returncode != 0:
            raise HarnessError(f"haproxy config invalid: {res.stdout.decode()}{res.stderr.decode()}")

    def start(self, timeout: float = 20.0) -> None:
        self.check()
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=self.env,
        )
        wait_port(self.port, timeout, self.proc)

    def __enter__(self) -> HaproxyProcess:
        self.start()
        return self


class CpuBurners:
    """N processes spinning on the CPU (a `stress`-like load), each ending by itself after `seconds`.

    For tests that must hold on an overloaded machine: `with CpuBurners(2 * os.cpu_count()): ...`.
    Leaving the block SIGKILLs every burner still running; the time bound covers a test that dies
    without leaving it.
    """

    SPIN = (
        "import sys, time\n"
        "end = time.monotonic() + float(sys.argv[1])\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )

    def __init__(self, count: int, seconds: float = 300.0) -> None:
        if count < 1 or seconds <= 0:
            raise HarnessError("CpuBurners needs count >= 1 and seconds > 0")
        self.count = count
        self.seconds = seconds
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", self.SPIN, str(self.seconds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(10)

    def __enter__(self) -> CpuBurners:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
