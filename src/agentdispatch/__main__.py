"""`python -m agentdispatch` is the `agentdispatch` command."""

from .cli.main import main

main()
