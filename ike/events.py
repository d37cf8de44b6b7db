"""Events the core emits, drained with ``next_event()``. Frozen dataclasses named in the past tense.

Key material is ``repr=False``: an event can be logged without leaking secrets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .core_config import Identity, TrafficSelector

__all__ = [
    "IkeEvent", "IkeSaEstablished", "IkeSaRekeyed", "IkeSaTerminated", "IkeKeysDerived", "ChildSaEstablished",
    "ChildSaRekeyed", "ChildSaDeleted", "AuthenticationFailed", "ChildSaFailed",
]


@dataclass(frozen=True)
class IkeEvent:
    """Base: ``ike_id`` is the connection's stable id (survives IKE_SA rekeys), ``peer`` the PeerConfig name."""

    ike_id: int
    peer: str


@dataclass(frozen=True)
class IkeSaEstablished(IkeEvent):
    spi_i: int
    spi_r: int
    initiator: bool
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    local_id: Identity
    remote_id: Identity
    proposal: str  # strongSwan syntax, e.g. "aes128gcm16-prfsha256-ecp256"
    auth_method: str  # "psk", "rsa", "ecdsa", "signature(rsa-pkcs1-sha256)", ...
    nat_local: bool  # we are behind a NAT (or pretend to be)
    nat_remote: bool
    nat_fake: bool = False  # nat_local only because PeerConfig.encap forces UDP encapsulation (no NAT seen)


@dataclass(frozen=True)
class IkeSaRekeyed(IkeEvent):
    old_spi_i: int
    old_spi_r: int
    spi_i: int
    spi_r: int
    proposal: str


@dataclass(frozen=True)
class IkeSaTerminated(IkeEvent):
    """The IKE_SA is gone (with all its CHILD_SAs, each reported by ChildSaDeleted first)."""

    spi_i: int
    spi_r: int
    reason: str  # "deleted by peer", "deleted", "retransmit timeout", "authentication failed: ...", ...
    notify: int | None = None  # the error notify sent or received, if any


@dataclass(frozen=True)
class AuthenticationFailed(IkeEvent):
    """The peer did not authenticate (or refused us). ``reason`` is for the log (e.g. the pki RejectReason)."""

    remote_addr: tuple[str, int]
    reason: str
    local_side: bool  # True: we rejected the peer; False: the peer rejected us


@dataclass(frozen=True)
class IkeKeysDerived(IkeEvent):
    """Only when ``CoreConfig.key_log``: what Wireshark's ikev2_decryption_table needs.

    ``encr``/``integ`` are IKEv2 transform IDs (integ 0 for AEADs), ``encr_key_bits`` the key size;
    ``encr_name`` the strongSwan token ("aes128gcm16", "aes256", "chacha20poly1305"), ``integ_name``
    ("sha256", "" for AEAD). SK_e* include the AEAD salt (key || salt), as RFC 5282 derives them.
    """

    spi_i: int
    spi_r: int
    encr: int
    encr_key_bits: int
    integ: int
    encr_name: str
    integ_name: str
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)


@dataclass(frozen=True)
class ChildSaEstablished(IkeEvent):
    """Everything the data plane needs to install both ESP SAs.

    ``suite`` is an esp suite token ("aes128gcm16", "aes256-sha256"); ``enc_key_*`` are KEYMAT for the cipher
    (key || salt), ``integ_key_*`` empty for AEADs. ``*_in`` is the SA we receive on (our SPI), ``*_out`` the
    one we send with (the peer's SPI). Addresses are the outer IKE addresses; with ``encap`` ESP goes in UDP
    between ``local_addr`` and ``remote_addr`` (ports included, 4500 normally). ``replaces`` is the inbound SPI
    of the CHILD_SA this one rekeys (make-before-break: install it, a ChildSaRekeyed follows).
    """

    child: str
    spi_in: int
    spi_out: int
    suite: str
    esn: bool
    mode: str  # "tunnel" | "transport"
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    encap: bool
    initiator: bool  # we initiated the exchange that created it
    rekey_time: float  # seconds from now (soft, with jitter applied); 0 = none
    life_time: float  # seconds (hard); 0 = none
    rekey_bytes: int
    life_bytes: int
    rekey_packets: int
    life_packets: int
    replaces: int | None = None
    enc_key_in: bytes = field(default=b"", repr=False)
    enc_key_out: bytes = field(default=b"", repr=False)
    integ_key_in: bytes = field(default=b"", repr=False)
    integ_key_out: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ChildSaRekeyed(IkeEvent):
    """The new CHILD_SA (already announced by ChildSaEstablished) takes over outbound traffic; the old one keeps
    accepting inbound packets until its ChildSaDeleted."""

    child: str
    old_spi_in: int
    old_spi_out: int
    spi_in: int
    spi_out: int


@dataclass(frozen=True)
class ChildSaDeleted(IkeEvent):
    child: str
    spi_in: int
    spi_out: int
    reason: str  # "deleted", "deleted by peer", "rekeyed", "expired", "ike_sa terminated"


@dataclass(frozen=True)
class ChildSaFailed(IkeEvent):
    """A CHILD_SA negotiation failed (the IKE_SA may stay up)."""

    child: str
    reason: str
    notify: int | None = None
