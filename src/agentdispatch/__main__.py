"""`python -m agentdispatch` is the `agentdispatch` command."""

from .cli.main import main

# guarded: multiprocessing's forkserver and spawn import the main module as `__mp_main__`
if __name__ == "__main__":
    main()
