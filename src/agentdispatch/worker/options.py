"""Worker options: one frozen dataclass, validated at construction, resolved once for dev or production.

`WorkerOptions` holds what the user wrote (``None`` = "use the default"). `WorkerOptions.resolve(production)`
applies environment fallbacks and the dev/production defaults in one place (`DEFAULTS`, also the table in
docs/worker.md) and returns `ResolvedOptions`, where every value is concrete.
"""

from __future__ import annotations

import enum
import inspect
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from livekit.protocol import agent, models

from ..protocol.errors import ConfigError
from .load import container_cpu_count
from .refs import FunctionRef, parse_ref, ref_from_callable

if TYPE_CHECKING:
    from .child.context import JobContext, JobProcess
    from .offers import JobRequest

EntrypointFnc = Callable[["JobContext"], Awaitable[None]]
PrewarmFnc = Callable[["JobProcess"], Any]
RequestFnc = Callable[["JobRequest"], Awaitable[None]]
LoadFnc = Callable[..., Any]
MpContext = Literal["forkserver", "spawn"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEV_API_KEY, DEV_API_SECRET, DEV_URL = "devkey", "secret", "ws://localhost:7880"


class ServerType(enum.Enum):
    """Which jobs the worker takes: one per room, per publishing participant, or per participant."""

    ROOM = agent.JobType.JT_ROOM
    PUBLISHER = agent.JobType.JT_PUBLISHER
    PARTICIPANT = agent.JobType.JT_PARTICIPANT

    @property
    def job_type(self) -> int:
        return int(self.value)


@dataclass(frozen=True)
class WorkerPermissions:
    """Permissions the agent participant gets in the job token (sent at registration)."""

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = True
    hidden: bool = False

    def to_proto(self) -> models.ParticipantPermission:
        return models.ParticipantPermission(
            can_publish=self.can_publish,
            can_subscribe=self.can_subscribe,
            can_publish_data=self.can_publish_data,
            can_update_metadata=self.can_update_metadata,
            hidden=self.hidden,
            agent=True,
        )


@dataclass(frozen=True)
class ModeDefault:
    dev: Any
    prod: Any


#: Every default that differs between `dev` and `start` (production). docs/worker.md shows this table.
DEFAULTS: Mapping[str, ModeDefault] = {
    "load_threshold": ModeDefault(math.inf, 0.7),
    "num_idle_processes": ModeDefault(1, None),  # production: min(container CPUs, 4)
    "host": ModeDefault("127.0.0.1", "0.0.0.0"),
    "port": ModeDefault(0, 8081),
    "log_level": ModeDefault("DEBUG", "INFO"),
    "ws_url": ModeDefault(DEV_URL, None),  # production: required (LIVEKIT_URL)
    "api_key": ModeDefault(DEV_API_KEY, None),
    "api_secret": ModeDefault(DEV_API_SECRET, None),
}


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs; see docs/worker.md for each option and its dev/production default."""

    entrypoint_fnc: EntrypointFnc | str
    request_fnc: RequestFnc | None = None
    prewarm_fnc: PrewarmFnc | str | None = None
    load_fnc: LoadFnc | None = None
    load_threshold: float | None = None
    load_timeout: float = 2.0
    max_jobs: int | None = None
    agent_name: str | None = None
    server_type: ServerType = ServerType.ROOM
    permissions: WorkerPermissions = field(default_factory=WorkerPermissions)
    ws_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    worker_token: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    production: bool | None = None
    log_level: str | None = None
    num_idle_processes: int | None = None
    initialize_process_timeout: float = 10.0
    shutdown_process_timeout: float = 10.0
    job_memory_warn_mb: float = 500.0
    job_memory_limit_mb: float = 0.0
    request_timeout: float = 5.0
    drain_timeout: float = 1800.0
    max_retry: int = 16
    multiprocessing_context: MpContext = "forkserver"

    def __post_init__(self) -> None:
        _check_function_ref(self.entrypoint_fnc, "entrypoint_fnc")
        if self.prewarm_fnc is not None:
            _check_function_ref(self.prewarm_fnc, "prewarm_fnc")
        if self.request_fnc is not None and not callable(self.request_fnc):
            raise ConfigError(f"request_fnc must be callable, got {self.request_fnc!r}")
        if self.load_fnc is not None:
            load_fnc_takes_worker(self.load_fnc)
        self._check_numbers()
        if self.log_level is not None and self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not isinstance(self.server_type, ServerType):
            raise ConfigError(f"server_type must be a ServerType, got {self.server_type!r}")
        if not isinstance(self.permissions, WorkerPermissions):
            raise ConfigError(f"permissions must be a WorkerPermissions, got {self.permissions!r}")
        if self.ws_url is not None:
            _check_url(self.ws_url)
        if self.multiprocessing_context not in ("forkserver", "spawn"):
            got = self.multiprocessing_context
            raise ConfigError(f"multiprocessing_context must be 'forkserver' or 'spawn', got {got!r}")

    def _check_numbers(self) -> None:
        for name in (
            "initialize_process_timeout",
            "shutdown_process_timeout",
            "request_timeout",
            "load_timeout",
        ):
            _positive(name, getattr(self, name))
        for name in ("drain_timeout", "job_memory_warn_mb", "job_memory_limit_mb"):
            _non_negative(name, getattr(self, name))
        lt = self.load_threshold
        if lt is not None and not (isinstance(lt, int | float) and (lt == math.inf or 0 < lt <= 1)):
            raise ConfigError(f"load_threshold must be in (0, 1] or math.inf, got {lt!r}")
        _int_at_least("max_jobs", self.max_jobs, 1, optional=True)
        _int_at_least("num_idle_processes", self.num_idle_processes, 0, optional=True)
        _int_at_least("max_retry", self.max_retry, 0)
        _int_at_least("port", self.port, 0, optional=True)
        if self.port is not None and self.port > 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")

    def resolve(self, production: bool = False, env: Mapping[str, str] | None = None) -> ResolvedOptions:
        """Apply env fallbacks and dev/production defaults; ConfigError if something required is missing."""
        environ = os.environ if env is None else env
        prod = self.production if self.production is not None else production
        pick = _Picker(prod)
        url = self.ws_url or environ.get("LIVEKIT_URL") or pick.default("ws_url")
        key = self.api_key or environ.get("LIVEKIT_API_KEY") or pick.default("api_key")
        secret = self.api_secret or environ.get("LIVEKIT_API_SECRET") or pick.default("api_secret")
        missing = [
            n
            for n, v in (
                ("ws_url/LIVEKIT_URL", url),
                ("api_key/LIVEKIT_API_KEY", key),
                ("api_secret/LIVEKIT_API_SECRET", secret),
            )
            if not v
        ]
        if missing:
            raise ConfigError(f"production workers need {', '.join(missing)}")
        _check_url(url)
        url = server_base_url(url)
        idle = pick.value("num_idle_processes", self.num_idle_processes)
        if idle is None:
            idle = min(math.ceil(container_cpu_count()), 4)
        limit = self.job_memory_limit_mb
        warn = (
            min(self.job_memory_warn_mb, limit)
            if limit > 0 and self.job_memory_warn_mb > 0
            else self.job_memory_warn_mb
        )
        return ResolvedOptions(
            entrypoint=_to_ref(self.entrypoint_fnc, "entrypoint_fnc"),
            prewarm=None if self.prewarm_fnc is None else _to_ref(self.prewarm_fnc, "prewarm_fnc"),
            request_fnc=self.request_fnc,
            load_fnc=self.load_fnc,
            load_threshold=float(pick.value("load_threshold", self.load_threshold)),
            load_timeout=self.load_timeout,
            max_jobs=self.max_jobs,
            agent_name=self.agent_name
            if self.agent_name is not None
            else environ.get("LIVEKIT_AGENT_NAME", ""),
            job_type=self.server_type.job_type,
            permissions=self.permissions,
            ws_url=url,
            api_key=key,
            api_secret=secret,
            worker_token=self.worker_token or "",
            host=pick.value("host", self.host),
            port=pick.value("port", self.port),
            production=prod,
            log_level=str(pick.value("log_level", self.log_level)).upper(),
            num_idle_processes=int(idle),
            initialize_process_timeout=self.initialize_process_timeout,
            shutdown_process_timeout=self.shutdown_process_timeout,
            job_memory_warn_mb=warn,
            job_memory_limit_mb=limit,
            request_timeout=self.request_timeout,
            drain_timeout=self.drain_timeout,
            max_retry=self.max_retry,
            multiprocessing_context=self.multiprocessing_context,
        )


ENDPOINT_SUFFIXES = ("/agent", "/twirp")


def server_base_url(url: str) -> str:
    """The server's base URL: a copied endpoint URL (`ws://host/agent`, `http://host/twirp`) is accepted
    and its endpoint path dropped."""
    base = url.rstrip("/")
    for suffix in ENDPOINT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass(frozen=True)
class ResolvedOptions:
    """WorkerOptions with every default applied; what the runtime reads."""

    entrypoint: FunctionRef
    prewarm: FunctionRef | None
    request_fnc: RequestFnc | None
    load_fnc: LoadFnc | None
    load_threshold: float
    load_timeout: float
    max_jobs: int | None
    agent_name: str
    job_type: int
    permissions: WorkerPermissions
    ws_url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    worker_token: str = field(repr=False)
    host: str
    port: int
    production: bool
    log_level: str
    num_idle_processes: int
    initialize_process_timeout: float
    shutdown_process_timeout: float
    job_memory_warn_mb: float
    job_memory_limit_mb: float
    request_timeout: float
    drain_timeout: float
    max_retry: int
    multiprocessing_context: MpContext

    def summary(self) -> dict[str, Any]:
        """Loggable view (no secrets, no callables)."""
        skip = {"api_key", "api_secret", "worker_token", "request_fnc", "load_fnc", "permissions"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["entrypoint"] = self.entrypoint.describe()
        out["prewarm"] = self.prewarm.describe() if self.prewarm else None
        return out


class _Picker:
    def __init__(self, production: bool) -> None:
        self.production = production

    def default(self, name: str) -> Any:
        d = DEFAULTS[name]
        return d.prod if self.production else d.dev

    def value(self, name: str, given: Any) -> Any:
        return given if given is not None else self.default(name)


def load_fnc_takes_worker(fn: LoadFnc) -> bool:
    """True if load_fnc wants the worker as its argument; ConfigError if it is not callable that way."""
    if not callable(fn):
        raise ConfigError(f"load_fnc must be callable, got {fn!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) > 1:
        raise ConfigError(f"load_fnc must take no argument or the worker, it takes {len(positional)}")
    return len(positional) == 1


def _check_function_ref(value: object, what: str) -> None:
    if isinstance(value, str):
        parse_ref(value, what)
    elif callable(value):
        ref_from_callable(value, what)
    else:
        raise ConfigError(f"{what} must be a function or a 'module:function' string, got {value!r}")


def _to_ref(value: Callable[..., Any] | str, what: str) -> FunctionRef:
    return parse_ref(value, what) if isinstance(value, str) else ref_from_callable(value, what)


def _check_url(url: str) -> None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("ws", "wss", "http", "https"):
        raise ConfigError(f"ws_url must start with ws://, wss://, http:// or https://, got {url!r}")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or value == math.inf:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0 or value == math.inf:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _int_at_least(name: str, value: object, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
