"""`agentdispatch server`: key resolution, bad input, and a real start/stop."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentdispatch.cli.main import cli
from agentdispatch.cli.server_cmd import load_keys_file, resolve_keys
from agentdispatch.testing.serverproc import agentdispatch_command, free_port, wait_healthy


def test_keys_file_parses_pairs_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text("# keys\nk1: s1\n  k2 : s2   # second\n\n")
    assert load_keys_file(f) == {"k1": "s1", "k2": "s2"}


@pytest.mark.parametrize("content", ["", "# only comment\n", "novalue\n", "k:\n", ": s\n"])
def test_bad_keys_file_is_refused_with_line(tmp_path: Path, content: str) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(content)
    result = CliRunner().invoke(cli, ["server", "--keys-file", str(f)])
    assert result.exit_code == 2
    assert "--keys-file" in result.output


def test_no_keys_without_dev_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["server"])
    assert result.exit_code == 2
    assert "LIVEKIT_API_KEY" in result.output


def test_env_keys_win_over_dev_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", "prodkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "prodsecret")
    assert resolve_keys(True, None) == {"prodkey": "prodsecret"}
    monkeypatch.delenv("LIVEKIT_API_KEY")
    assert resolve_keys(True, None) == {"devkey": "secret"}


def test_invalid_setting_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["server", "--dev", "--offer-timeout", "-1"])
    assert result.exit_code == 2
    assert "offer_timeout must be > 0" in result.output


def test_server_starts_answers_and_stops_on_sigterm() -> None:
    port = free_port()
    cmd = [*agentdispatch_command(), "server", "--dev", "--port", str(port), "--log-format", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 20, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            assert resp.read() == b"OK"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    text = out.decode()
    assert '"msg": "dispatch server listening"' in text
    assert "shutting down" in text
