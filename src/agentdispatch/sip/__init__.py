"""SIP inbound gateway: phone calls become rooms, dispatches and SIP participants; G.711 audio both ways.

See docs/sip.md. `SipGateway(server, GatewayConfig(...))` runs inside a `DispatchServer`'s process.
"""

from .config import GatewayConfig, SipConfigError, SipError, TrunkPolicy
from .directory import SipDirectory
from .gateway import SipGateway

__all__ = ["GatewayConfig", "SipConfigError", "SipDirectory", "SipError", "SipGateway", "TrunkPolicy"]
