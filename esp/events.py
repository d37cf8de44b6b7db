"""What the data plane tells the key manager (the IKE daemon), as strongSwan's libipsec tells charon.

Only two things go up: an SA ran out of lifetime (soft: negotiate a replacement; hard: it is gone), and
traffic hit a PROTECT policy that has no SA yet (acquire: negotiate one on demand). Events are frozen
dataclasses, named in the past tense where they report something that happened.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DataplaneEvent", "ExpiryReason", "SaAcquire", "SaExpired"]


class ExpiryReason(enum.Enum):
    """Why an SA expired: RFC 4301 byte/packet lifetimes, or the 32/64-bit sequence space ran out."""

    BYTES = "bytes"
    PACKETS = "packets"
    LIFETIME = "lifetime"  # the core reported expiry without saying which limit
    SEQUENCE = "sequence"  # outbound sequence numbers exhausted (RFC 4303 3.3.3): always hard


@dataclass(frozen=True)
class SaExpired:
    """An SA reached its soft (rekey now) or hard (unusable from now) limit.

    Signalled once per SA and level. ``direction`` is "in" or "out"; ``policy`` the name of the policy the
    SA serves, if any, so the daemon can find its CHILD_SA without a table of its own.
    """

    spi: int
    hard: bool
    direction: str = "out"
    reason: ExpiryReason = ExpiryReason.LIFETIME
    policy: str | None = None


@dataclass(frozen=True)
class SaAcquire:
    """Traffic matched PROTECT policy ``policy`` but no outbound SA is installed for it (RFC 4301 5.1, the
    kernel's XFRM acquire). Rate limited per policy; the packet itself was dropped (verdict NO_SA)."""

    policy: str
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


DataplaneEvent = SaExpired | SaAcquire
