"""What the chaos workers connect to: one server in memory, or N nodes on Redis behind haproxy.

- one node (`--nodes 1`, the default): `agentdispatch server --dev` with the memory store, workers and
  API calls go to it directly;
- N nodes (`--nodes N`, N >= 2): a real `redis-server`, N `agentdispatch server --dev --redis URL`
  processes and a real haproxy in front of them, configured from the shipped
  `deploy/haproxy/haproxy.cfg` (its `server` lines rewritten for N nodes). Workers connect through
  haproxy; the driver sends API calls straight to the live nodes, round-robin, so dispatches enter
  through every node and a call never races the proxy's health check after a node kill.

Each node's output goes to `node-<i>.log` (`server.log` for the single node) in the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...testing.serverproc import HarnessError, ServerProcessSettings, free_port
from ...testing.services import HaproxyProcess, RedisProcess, ensure_installed, wait_port
from .fleet import LoggedServerProcess

#: the shipped load balancer config (a repository file, not package data)
HAPROXY_CFG = Path(__file__).resolve().parents[4] / "deploy" / "haproxy" / "haproxy.cfg"
_SERVER_LINE = re.compile(r"^\s*server\s+node\d+\s.*$", re.MULTILINE)


def haproxy_config(base: str, nodes: int) -> str:
    """The shipped config with one `server nodeK "${AD_NODEK}" check` line per node."""
    lines = "\n".join(f'    server node{k} "${{AD_NODE{k}}}" check' for k in range(1, nodes + 1))
    stripped = _SERVER_LINE.sub("", base).rstrip()
    if "backend nodes" not in stripped:
        raise HarnessError("deploy/haproxy/haproxy.cfg has no `backend nodes` section")
    return f"{stripped}\n{lines}\n"


class LoggedHaproxy(HaproxyProcess):
    """`HaproxyProcess` with haproxy's log and warnings (server DOWN/UP) in a file of the run directory."""

    def __init__(self, config_text: str, port: int, binary: str, env: dict[str, str], log: Path) -> None:
        super().__init__(config_text, port, binary, env)
        self.log_path = log

    def start(self, timeout: float = 20.0) -> None:
        self.check()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_port(self.port, timeout, self.proc)


@dataclass
class NodeKill:
    index: int
    pid: int
    url: str
    killed_at: float
    exit_code: int | None = None


class ChaosServers:
    """Starts and stops the server side of a chaos run; SIGKILLs one node on request."""

    def __init__(self, nodes: int, settings: ServerProcessSettings, run_dir: Path) -> None:
        self.count = nodes
        self.settings = settings
        self.run_dir = run_dir
        self.redis: RedisProcess | None = None
        self.proxy: LoggedHaproxy | None = None
        self.nodes: list[LoggedServerProcess] = []
        self.killed: list[NodeKill] = []
        self.exit_codes: list[int | None] = []
        self._rr = itertools.count()

    @property
    def clustered(self) -> bool:
        return self.count > 1

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything (blocking: call in a thread); on failure stops what had started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if not self.clustered:
            node = LoggedServerProcess(self.settings, self.run_dir / "server.log")
            self.nodes.append(node)
            node.start()
            return
        redis_bin = ensure_installed("redis-server", "redis-server")
        haproxy_bin = ensure_installed("haproxy", "haproxy")
        if redis_bin is None or haproxy_bin is None:
            raise HarnessError("--nodes > 1 needs redis-server and haproxy (apt-get install could not)")
        if not HAPROXY_CFG.exists():
            raise HarnessError(f"--nodes > 1 runs the shipped {HAPROXY_CFG.name}: not found at {HAPROXY_CFG}")
        self.redis = RedisProcess(redis_bin)
        self.redis.start()
        args = (*self.settings.extra_args, "--redis", self.redis.url)
        for i in range(self.count):
            settings = ServerProcessSettings(log_level=self.settings.log_level, extra_args=args)
            node = LoggedServerProcess(settings, self.run_dir / f"node-{i}.log")
            self.nodes.append(node)
            node.start()
        port = free_port()
        env = {"AD_BIND": f"127.0.0.1:{port}"}
        env |= {f"AD_NODE{i + 1}": f"127.0.0.1:{n.port}" for i, n in enumerate(self.nodes)}
        config = haproxy_config(HAPROXY_CFG.read_text(), self.count)
        self.proxy = LoggedHaproxy(config, port, haproxy_bin, env, self.run_dir / "haproxy.log")
        self.proxy.start()

    def stop(self) -> None:
        """SIGTERM every live node (its exit code kept), then haproxy and redis."""
        killed = {k.index: k.exit_code for k in self.killed}
        self.exit_codes = []
        for i, node in enumerate(self.nodes):
            code = node.stop()
            self.exit_codes.append(killed.get(i, code))
        if self.proxy is not None:
            self.proxy.close()
        if self.redis is not None:
            self.redis.close()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def worker_url(self) -> str:
        """Where workers connect: haproxy in a cluster, the server otherwise."""
        if self.proxy is not None:
            return self.proxy.url
        return self.nodes[0].url

    def live(self) -> list[int]:
        dead = {k.index for k in self.killed}
        return [i for i in range(len(self.nodes)) if i not in dead]

    def next_url(self) -> str:
        """The next live node, round-robin."""
        live = self.live()
        return self.nodes[live[next(self._rr) % len(live)]].url

    def index_of(self, url: str) -> int | None:
        return next((i for i, n in enumerate(self.nodes) if n.url == url), None)

    # -- the node kill -----------------------------------------------------------------------------
    def kill(self, index: int) -> NodeKill:
        """SIGKILL one node (never the last live one) and reap it."""
        if index not in self.live() or len(self.live()) < 2:
            raise HarnessError(f"node {index} cannot be killed: live nodes {self.live()}")
        node = self.nodes[index]
        kill = NodeKill(index, node.pid, node.url, time.time())
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
        self.killed.append(kill)
        kill.exit_code = node.stop()
        return kill

    def describe(self) -> dict[str, Any]:
        nodes = [
            {"index": i, "url": n.url, "log": str(n.log_path), "command": n.command}
            for i, n in enumerate(self.nodes)
        ]
        return {
            "nodes": nodes,
            "redis": self.redis.url if self.redis else None,
            "haproxy": self.proxy.url if self.proxy else None,
            "haproxy_config": str(HAPROXY_CFG) if self.proxy else None,
            "haproxy_log": str(self.proxy.log_path) if self.proxy else None,
            "exit_codes": self.exit_codes,
            "killed": [vars(k) for k in self.killed],
        }
