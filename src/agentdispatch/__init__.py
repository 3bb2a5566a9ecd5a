"""agentdispatch: a LiveKit-compatible agent dispatch server and worker runtime."""

__version__ = "0.1.0"
