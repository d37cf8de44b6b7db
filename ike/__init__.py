"""IKEv2 (RFC 7296) for espresso: a sans-I/O protocol core plus an asyncio adapter and a daemon.

The core (``Dispatcher``, ``IkeConnection``) takes bytes, time and commands, and returns bytes and events
(``ChildSaEstablished`` carries the ESP keys). It does not import esp, open sockets or read clocks::

    d = Dispatcher(CoreConfig(peers=(PeerConfig(...),), wall_clock=lambda now: datetime.now(timezone.utc)))
    d.initiate("gw2", now)                          # or wait for the peer to initiate
    d.receive_datagram(data, addr, local_addr, now)  # IKE bytes in (non-ESP marker stripped)
    for dg in d.datagrams_to_send(now): ...         # Datagram(data, addr, local_port, marker) out
    while (event := d.next_event()) is not None: ... # IkeSaEstablished, ChildSaEstablished, ...
    d.handle_timer(now) at d.get_timer()            # retransmits, rekeys, lifetimes, DPD, keepalives

Two endpoints talking in memory: tests/ike/helpers.py (``pair``/``roundtrip``).
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
