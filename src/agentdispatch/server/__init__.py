"""The dispatch server."""

from .app import DispatchServer, serve_forever
from .config import DEV_KEYS, ServerConfig
from .store import MemoryStore, Store

__all__ = ["DEV_KEYS", "DispatchServer", "MemoryStore", "ServerConfig", "Store", "serve_forever"]
