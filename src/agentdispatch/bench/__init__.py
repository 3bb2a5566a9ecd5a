"""The benchmarks that ship with the product: `agentdispatch bench ...` (results, targets: bench/README.md).

One sub-package per benchmark — `dispatch` (server placement latency and throughput), `worker` (job start
latency and idle process memory, ours vs livekit-agents), `chaos` (workers and job processes killed under
load), `cluster` (several nodes on Redis), `sip` (calls placed with sipp) — plus `common` (statistics,
report cells, py-spy profiling). Agent scripts the benchmarks start
in worker processes live in each benchmark's `agents/` folder: data files run by path, not modules of
the package (one of them imports livekit-agents, which the package never does).
"""
