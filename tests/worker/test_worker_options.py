"""WorkerOptions: validation at construction, env fallbacks, one place for dev/production defaults."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent

from agentdispatch import JobContext, ServerType, WorkerOptions, WorkerPermissions
from agentdispatch.protocol import ConfigError
from agentdispatch.worker.options import DEFAULTS
from agentdispatch.worker.refs import FunctionRef, load_ref, parse_ref, ref_from_callable


async def entry(ctx: JobContext) -> None:
    return None


def opts(**kw: Any) -> WorkerOptions:
    return WorkerOptions(entrypoint_fnc=entry, **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"initialize_process_timeout": -1}, "initialize_process_timeout must be a finite number > 0"),
        ({"shutdown_process_timeout": 0}, "shutdown_process_timeout must be a finite number > 0"),
        ({"request_timeout": math.inf}, "request_timeout must be a finite number > 0"),
        ({"load_timeout": math.nan}, "load_timeout must be a finite number > 0"),
        ({"drain_timeout": -5}, "drain_timeout must be a finite number >= 0"),
        ({"job_memory_limit_mb": -1}, "job_memory_limit_mb must be a finite number >= 0"),
        ({"load_threshold": 0}, "load_threshold must be in (0, 1] or math.inf"),
        ({"load_threshold": 1.5}, "load_threshold must be in (0, 1] or math.inf"),
        ({"load_threshold": math.nan}, "load_threshold must be in (0, 1] or math.inf"),
        ({"load_fnc": 0.5}, "load_fnc must be callable"),
        ({"load_fnc": lambda a, b: 0.0}, "load_fnc must take no argument or the worker"),
        ({"request_fnc": "accept"}, "request_fnc must be callable"),
        ({"max_jobs": 0}, "max_jobs must be an integer >= 1"),
        ({"max_jobs": True}, "max_jobs must be an integer >= 1"),
        ({"num_idle_processes": -1}, "num_idle_processes must be an integer >= 0"),
        ({"max_retry": -1}, "max_retry must be an integer >= 0"),
        ({"port": 70000}, "port must be in 0..65535"),
        ({"log_level": "LOUD"}, "log_level must be one of"),
        ({"ws_url": "localhost:7880"}, "ws_url must start with ws://"),
        ({"server_type": "room"}, "server_type must be a ServerType"),
        ({"multiprocessing_context": "fork"}, "multiprocessing_context must be 'forkserver' or 'spawn'"),
    ],
)
def test_invalid_options_are_refused_at_construction(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{message[:30].replace('(', '[(]').replace(')', '[)]')}"):
        opts(**kw)


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("no_colon_here", "must look like 'module:function'"),
        ("agentdispatch_missing_module:fn", "cannot find module 'agentdispatch_missing_module'"),
        ("/nonexistent/agent.py:entrypoint", "file '/nonexistent/agent.py' does not exist"),
        ("json:", "must look like 'module:function'"),
        (lambda ctx: None, "must be a function defined at module level"),
        (42, "must be a function or a 'module:function' string"),
    ],
)
def test_bad_entrypoints_are_refused_with_a_clear_message(entrypoint: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="entrypoint_fnc") as info:
        WorkerOptions(entrypoint_fnc=entrypoint)
    assert message in str(info.value)


def test_closures_cannot_be_prewarm_functions() -> None:
    def local_prewarm(proc: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="prewarm_fnc must be a function defined at module level"):
        opts(prewarm_fnc=local_prewarm)


def test_options_are_frozen() -> None:
    with pytest.raises(AttributeError):
        opts().max_jobs = 3  # type: ignore[misc]


def test_dev_defaults_come_from_one_table() -> None:
    r = opts().resolve(production=False, env={})
    assert r.load_threshold == math.inf == DEFAULTS["load_threshold"].dev
    assert r.num_idle_processes == 1
    assert (r.host, r.port, r.log_level) == ("127.0.0.1", 0, "DEBUG")
    assert (r.ws_url, r.api_key, r.api_secret) == ("ws://localhost:7880", "devkey", "secret")
    assert r.production is False and r.max_jobs is None and r.request_timeout == 5.0


def test_production_defaults_and_env_fallbacks() -> None:
    env = {
        "LIVEKIT_URL": "wss://lk.example",
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "s",
        "LIVEKIT_AGENT_NAME": "from-env",
    }
    r = opts().resolve(production=True, env=env)
    assert (r.ws_url, r.api_key, r.api_secret, r.agent_name) == ("wss://lk.example", "k", "s", "from-env")
    assert r.load_threshold == 0.7
    assert 1 <= r.num_idle_processes <= 4
    assert (r.host, r.port, r.log_level) == ("0.0.0.0", 8081, "INFO")


def test_explicit_values_win_over_env_and_defaults() -> None:
    r = opts(
        ws_url="ws://mine:1", agent_name="", load_threshold=0.5, num_idle_processes=0, port=9000
    ).resolve(
        production=True,
        env={
            "LIVEKIT_URL": "ws://env:2",
            "LIVEKIT_AGENT_NAME": "env",
            "LIVEKIT_API_KEY": "k",
            "LIVEKIT_API_SECRET": "s",
        },
    )
    assert (r.ws_url, r.agent_name, r.load_threshold, r.num_idle_processes, r.port) == (
        "ws://mine:1",
        "",
        0.5,
        0,
        9000,
    )


def test_production_without_credentials_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="ws_url/LIVEKIT_URL, api_key/LIVEKIT_API_KEY, api_secret"):
        opts().resolve(production=True, env={})


def test_the_production_option_overrides_the_command() -> None:
    r = opts(production=True, ws_url="ws://x", api_key="k", api_secret="s").resolve(production=False, env={})
    assert r.production and r.load_threshold == 0.7


def test_memory_warning_never_above_the_limit() -> None:
    r = opts(job_memory_limit_mb=300).resolve(env={})
    assert (r.job_memory_warn_mb, r.job_memory_limit_mb) == (300, 300)


def test_server_type_maps_to_job_type_and_permissions_to_proto() -> None:
    assert [t.job_type for t in ServerType] == [
        agent.JobType.JT_ROOM,
        agent.JobType.JT_PUBLISHER,
        agent.JobType.JT_PARTICIPANT,
    ]
    proto = WorkerPermissions(can_publish=False, hidden=True).to_proto()
    assert (proto.can_publish, proto.can_subscribe, proto.hidden, proto.agent) == (False, True, True, True)


def test_secrets_are_not_in_repr() -> None:
    o = opts(api_key="visible-key-name", api_secret="s3cr3t", worker_token="t0k")
    assert "s3cr3t" not in repr(o) and "t0k" not in repr(o)
    assert "s3cr3t" not in repr(o.resolve(env={}))


def test_function_references_round_trip(tmp_path: Path) -> None:
    ref = ref_from_callable(entry, "entrypoint_fnc")
    assert ref == FunctionRef("entry", module=__name__)
    assert load_ref(ref) is entry
    agent_file = tmp_path / "my_agent.py"
    agent_file.write_text("async def entrypoint(ctx):\n    return 'ran'\n")
    path_ref = parse_ref(f"{agent_file}:entrypoint", "entrypoint_fnc")
    assert path_ref.path == str(agent_file)
    fn = load_ref(path_ref)
    assert fn.__name__ == "entrypoint" and ref_from_callable(fn, "x") == path_ref
