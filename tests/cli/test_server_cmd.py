"""`agentdispatch server`: key resolution, bad input, and a real start/stop."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import click
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


def test_port_in_use_is_one_line_naming_the_flag() -> None:
    port = free_port()
    first = subprocess.Popen(
        [*agentdispatch_command(), "server", "--dev", "--port", str(port)], stderr=subprocess.PIPE
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 20, first)
        second = subprocess.run(
            [*agentdispatch_command(), "server", "--dev", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
        assert errors == [
            f"Error: port {port} is already in use on 127.0.0.1: stop the other server or use --port N"
        ]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)


def test_json_log_format_makes_every_line_json() -> None:
    import json

    port = free_port()
    proc = subprocess.Popen(
        [*agentdispatch_command(), "server", "--dev", "--port", str(port), "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_healthy(f"http://127.0.0.1:{port}", 20, proc)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-path")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # raises on any non-JSON line
    messages = [r["msg"] for r in records]
    assert "agentdispatch server ready" in messages and "shutting down" in messages
    assert any(r["msg"] == "request for an unknown path" and r["path"] == "/no-such-path" for r in records)
    ready = next(r for r in records if r["msg"] == "agentdispatch server ready")
    assert ready["livekit_url"] == f"ws://127.0.0.1:{port}" and ready["api_key"] == "devkey"


def test_server_help_names_the_environment_and_explains_every_flag() -> None:
    result = CliRunner().invoke(cli, ["server", "--help"])
    assert result.exit_code == 0
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "REDIS_URL"):
        assert name in result.output
    from agentdispatch.cli.server_cmd import server_command

    missing = [p.name for p in server_command.params if isinstance(p, click.Option) and not p.help]
    assert missing == ["help"] or not missing, f"flags without help: {missing}"
