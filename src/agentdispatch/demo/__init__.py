"""The README demo (`agentdispatch demo`): an in-process server, a few workers, dispatches you can watch.

`runner` tells the story and drives the server, `view` renders the live table, `runtime` supplies real
worker-runtime workers (each job in its own process, running `agent.entrypoint`); `--simulated` uses
`agentdispatch.testing.SimWorker` instead.
"""
