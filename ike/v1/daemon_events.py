"""What the daemon's IKEv1 manager reports beyond the events IKEv1 and IKEv2 share (ike.events)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..events import IkeEvent

__all__ = ["V1KeysDerived"]


@dataclass(frozen=True)
class V1KeysDerived(IkeEvent):
    """Only when ``CoreConfig.key_log``: the row of Wireshark's ``ikev1_decryption_table`` (the initiator's
    cookie and the phase-1 encryption key; Wireshark derives the IVs from the exchange it sees)."""

    cookie_i: bytes
    cookie_r: bytes
    enc_key: bytes = field(repr=False)
