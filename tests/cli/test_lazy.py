"""The CLI loads lazily: `--help` imports no command module, and every lazy table line matches its command."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from agentdispatch.cli.lazy import LazyCommand, LazyGroup
from agentdispatch.cli.main import BENCH_COMMANDS, COMMANDS, bench_group, cli

#: prints the agentdispatch modules (and whether a few heavy libraries) got imported by running argv
PROBE = """
import contextlib, io, json, sys
from agentdispatch.cli.main import main
sys.argv = ["agentdispatch", *json.loads(sys.argv[1])]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit:
        pass
mods = sorted(m for m in sys.modules if m.startswith("agentdispatch"))
libs = ("aiohttp", "livekit.api", "livekit.protocol", "psutil", "rich")
heavy = sorted(m for m in libs if m in sys.modules)
print(json.dumps({"help": out.getvalue(), "ours": mods, "heavy": heavy}))
"""


def probe(*argv: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(argv))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def first_paragraph(command: click.Command) -> str:
    return " ".join((command.help or "").split("\n\n")[0].split())


def test_top_level_help_lists_every_command_and_imports_none_of_them() -> None:
    seen = probe("--help")
    help_text = str(seen["help"])
    for name in [*COMMANDS, "bench"]:
        assert f"  {name} " in help_text, help_text
    assert seen["ours"] == [
        "agentdispatch",
        "agentdispatch.cli",
        "agentdispatch.cli.lazy",
        "agentdispatch.cli.main",
    ]
    assert seen["heavy"] == []


def test_bench_help_lists_every_benchmark_without_importing_one() -> None:
    seen = probe("bench", "--help")
    for name in BENCH_COMMANDS:
        assert f"  {name} " in str(seen["help"])
    assert not [m for m in seen["ours"] if m.startswith("agentdispatch.bench")]  # type: ignore[attr-defined]


def test_worker_help_imports_the_worker_command_but_no_server_bench_or_demo() -> None:
    seen = probe("worker", "--help")
    assert "dev" in str(seen["help"]) and "start" in str(seen["help"])
    ours = seen["ours"]
    assert isinstance(ours, list)
    assert "agentdispatch.cli.worker_cmd" in ours
    for layer in ("server", "bench", "demo", "testing"):
        other = f"agentdispatch.{layer}"
        assert not [m for m in ours if m == other or m.startswith(other + ".")], (other, ours)


@pytest.mark.parametrize(
    ("group", "name", "entry"),
    [(cli, n, e) for n, e in COMMANDS.items()] + [(bench_group, n, e) for n, e in BENCH_COMMANDS.items()],
    ids=[f"cli-{n}" for n in COMMANDS] + [f"bench-{n}" for n in BENCH_COMMANDS],
)
def test_table_line_matches_its_command(group: click.Group, name: str, entry: LazyCommand) -> None:
    command = entry.load()
    assert command.name == name
    assert entry.help == first_paragraph(command), "the help in cli/main.py drifted from the docstring"
    assert isinstance(group, LazyGroup)
    assert group.get_command(click.Context(group), name) is command


def test_a_bad_table_line_is_refused() -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        LazyCommand("agentdispatch.cli.server_cmd", "no attribute")
    with pytest.raises(TypeError, match="not a click command"):
        LazyCommand("agentdispatch.cli.main:COMMANDS", "not a command").load()
