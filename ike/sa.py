"""IKE_SA and CHILD_SA state. Plain data plus small helpers; the exchanges live in tasks/ and exchange.py."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from .core_config import ChildConfig, CoreConfig, Identity, PeerConfig, TrafficSelector
from .events import IkeEvent
from .keymat import ChildKeys, IkeKeys
from .payloads.sa import Proposal
from .protect import Protector

__all__ = ["IkeSaState", "ChildSaState", "IkeSa", "ChildSa"]


class IkeSaState(enum.Enum):
    CREATED = "created"
    CONNECTING = "connecting"
    ESTABLISHED = "established"
    REKEYING = "rekeying"
    DELETING = "deleting"
    DESTROYED = "destroyed"


class ChildSaState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"
    REKEYED = "rekeyed"  # replaced; inbound still accepted until deleted
    DELETING = "deleting"
    DELETED = "deleted"


@dataclass
class ChildSa:
    name: str
    config: ChildConfig
    spi_in: int
    spi_out: int
    proposal: Proposal
    suite: str
    keys: ChildKeys = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    initiator: bool  # initiated the exchange that created it
    created: float
    esn: bool
    state: ChildSaState = ChildSaState.INSTALLED
    mode: str = "tunnel"  # as negotiated (USE_TRANSPORT_MODE)
    rekey_at: float | None = None
    expire_at: float | None = None
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    # rekeying of this SA (RFC 7296 2.8): the replacement we initiated / the peer initiated, with the nonces of
    # each exchange, and the one our outbound traffic moved to
    rekey_ours: "tuple[ChildSa, bytes, bytes] | None" = field(default=None, repr=False)
    rekey_theirs: "tuple[ChildSa, bytes, bytes] | None" = field(default=None, repr=False)
    successor: "ChildSa | None" = field(default=None, repr=False)
    rekeyed_by: "ChildSa | None" = field(default=None, repr=False)  # the peer's (non-colliding) rekey


@dataclass
class IkeSa:
    """Everything known about one IKE_SA. ``emit`` queues an event on the owning connection."""

    ike_id: int
    config: CoreConfig
    peer: PeerConfig
    initiator: bool  # original initiator of this IKE_SA (the I flag)
    spi_i: int
    spi_r: int
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    emit: Callable[[IkeEvent], None]
    state: IkeSaState = IkeSaState.CREATED
    proposal: Proposal | None = None
    keys: IkeKeys | None = field(default=None, repr=False)
    protector: Protector | None = field(default=None, repr=False)
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    init_request: bytes = b""  # raw IKE_SA_INIT messages, for the AUTH signed octets
    init_response: bytes = b""
    nat_local: bool = False
    nat_remote: bool = False
    natt: bool = False  # moved to the NAT-T port
    peer_fragmentation: bool = False
    peer_hashes: tuple[int, ...] | None = None  # SIGNATURE_HASH_ALGORITHMS from the peer
    peer_certreq: tuple[bytes, ...] = ()
    remote_id: Identity | None = None
    local_id: Identity | None = None
    auth_method: str = ""
    children: dict[int, ChildSa] = field(default_factory=dict)  # by spi_in
    established_at: float | None = None
    rekey_at: float | None = None
    last_inbound: float = 0.0
    last_outbound: float = 0.0
    now: float = 0.0  # the time of the driver call being processed (tasks never read a clock)
    scratch: dict[str, Any] = field(default_factory=dict)  # per-exchange data shared by tasks of one exchange

    @property
    def spi_local(self) -> int:
        return self.spi_i if self.initiator else self.spi_r

    def random(self, n: int) -> bytes:
        return self.config.random(n)

    def new_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self.random(4), "big")
            if spi >= 0x100 and spi not in self.children:
                return spi

    def live(self) -> "IkeSa":
        """The IKE_SA that holds the CHILD_SAs now: this one, or its successor after IKE rekeys."""
        sa = self
        for _ in range(16):  # bounded: a chain of rekeys never gets long before old SAs are deleted
            nxt = sa.scratch.get("rekeyed_into")
            if nxt is None:
                break
            nxt.now = max(nxt.now, sa.now)
            sa = nxt
        return sa

    def child_by_out(self, spi_out: int) -> ChildSa | None:
        for c in self.children.values():
            if c.spi_out == spi_out:
                return c
        return None


def retry_delay(sa: IkeSa) -> float:
    """10 to 30 s, random, so that two peers that collided do not collide again."""
    return 10.0 + 20.0 * int.from_bytes(sa.random(2), "big") / 65535
