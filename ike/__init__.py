"""IKEv2 (RFC 7296) for espresso: a sans-I/O protocol core plus an asyncio adapter and a daemon.

The core (``Dispatcher``, ``IkeConnection``) takes bytes, time and commands, and returns bytes and events
(``ChildSaEstablished`` carries the ESP keys). It does not import esp.
"""
from .core_config import ChildConfig, CoreConfig, Credential, Identity, PeerConfig, TrafficSelector
from .errors import IkeError, ProtocolError
from .events import (AuthenticationFailed, ChildSaDeleted, ChildSaEstablished, ChildSaFailed, ChildSaRekeyed,
                     IkeEvent, IkeKeysDerived, IkeSaEstablished, IkeSaRekeyed, IkeSaTerminated)

__all__ = [
    "ChildConfig", "CoreConfig", "Credential", "Identity", "PeerConfig", "TrafficSelector", "IkeError",
    "ProtocolError", "AuthenticationFailed", "ChildSaDeleted", "ChildSaEstablished", "ChildSaFailed",
    "ChildSaRekeyed", "IkeEvent", "IkeKeysDerived", "IkeSaEstablished", "IkeSaRekeyed", "IkeSaTerminated",
    "Dispatcher", "IkeConnection", "Datagram",
]


def __getattr__(name: str):  # lazy: keeps `import ike.payloads...` cheap and cycle-free
    if name == "Dispatcher":
        from .dispatcher import Dispatcher
        return Dispatcher
    if name in ("IkeConnection", "Datagram"):
        from . import connection
        return getattr(connection, name)
    raise AttributeError(name)
