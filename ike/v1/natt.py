"""NAT traversal for IKEv1 (RFC 3947): the vendor ID that announces it, the NAT-D hashes of main mode, and the
verdict the session and the daemon act on (float to the NAT-T port, ESP in UDP, keepalives).

Why a module of its own: main mode's codec and key schedule (session.py, responder.py) only call three hooks
(``vendor_ids``, ``natd_payloads``, ``check_natd``); what the hashes are and what they mean lives here, as
strongSwan keeps it in its isakmp_natd task. RFC 3948's UDP encapsulation itself is the data plane's, reused
from IKEv2.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence

from .message import Payload, PayloadType

__all__ = [
    "ENCAP_UDP_TUNNEL",
    "ENCAP_UDP_TUNNEL_DRAFT",
    "VID_DRAFT_02N",
    "VID_RFC3947",
    "NatTraversal",
    "natd_hash",
]

#: MD5("RFC 3947"): the peer speaks RFC 3947 NAT-T (encapsulation modes 3/4, NAT-D type 20)
VID_RFC3947 = hashlib.md5(b"RFC 3947").digest()
#: draft-ietf-ipsec-nat-t-ike-02\n, which charon also sends; recognised, never announced
VID_DRAFT_02N = hashlib.md5(b"draft-ietf-ipsec-nat-t-ike-02\n").digest()
#: the quick-mode Encapsulation Mode attribute value for UDP-Encapsulated-Tunnel (RFC 3947 3; the drafts: 61443)
ENCAP_UDP_TUNNEL = 3
ENCAP_UDP_TUNNEL_DRAFT = 61443
#: NAT-D payloads one message may carry (the first is the receiver's; the rest are the sender's candidates)
MAX_NATD = 8


def natd_hash(hash_name: str, cky_i: bytes, cky_r: bytes, addr: tuple[str, int]) -> bytes:
    """HASH(CKY-I | CKY-R | IP | Port), with the negotiated phase-1 hash (RFC 3947 3.2)."""
    ip = ipaddress.ip_address(addr[0]).packed
    return hashlib.new(hash_name, cky_i + cky_r + ip + addr[1].to_bytes(2, "big")).digest()


class NatTraversal:
    """The NAT-T state of one ISAKMP SA.

    ``enabled``: announce and use NAT-T at all; ``force``: pretend to be behind a NAT (a random hash for our own
    address, as charon's ``encap = yes``), so that a peer without NAT still floats and encapsulates ESP, which a
    user-space data plane (ours, charon's kernel-libipsec) needs."""

    def __init__(self, enabled: bool = True, force: bool = False,
                 random: Callable[[int], bytes] | None = None) -> None:
        self.enabled = enabled
        self.force = force
        self._random = random
        self.peer_supports = False
        self.nat_local = False   # our address/port is changed on the way (or we pretend so)
        self.nat_remote = False  # the peer's is
        self.checked = False

    def vendor_ids(self) -> list[Payload]:
        return [Payload(PayloadType.VID, VID_RFC3947)] if self.enabled else []

    def saw_vendor_ids(self, payloads: Sequence[Payload]) -> None:
        if self.enabled and any(p.type == PayloadType.VID and p.body == VID_RFC3947 for p in payloads):
            self.peer_supports = True

    def natd_payloads(self, hash_name: str, cky_i: bytes, cky_r: bytes, local: tuple[str, int],
                      remote: tuple[str, int]) -> list[Payload]:
        """Ours for main mode's third/fourth message: the receiver's address first, then ours."""
        if not (self.enabled and self.peer_supports):
            return []
        mine = natd_hash(hash_name, cky_i, cky_r, local)
        if self.force:
            mine = self._random(len(mine)) if self._random is not None else bytes(len(mine))
        return [Payload(PayloadType.NAT_D, natd_hash(hash_name, cky_i, cky_r, remote)),
                Payload(PayloadType.NAT_D, mine)]

    def check_natd(self, payloads: Sequence[Payload], hash_name: str, cky_i: bytes, cky_r: bytes,
                   local: tuple[str, int], remote: tuple[str, int]) -> None:
        """Compare the peer's NAT-D payloads with the addresses this message travelled between."""
        if not (self.enabled and self.peer_supports):
            return
        hashes = [p.body for p in payloads if p.type == PayloadType.NAT_D][:MAX_NATD]
        if not hashes:
            return  # a peer that announced NAT-T but sends no NAT-D: no NAT known
        self.checked = True
        self.nat_local = self.force or not hmac.compare_digest(hashes[0], natd_hash(hash_name, cky_i, cky_r, local))
        theirs = natd_hash(hash_name, cky_i, cky_r, remote)
        self.nat_remote = not any(hmac.compare_digest(h, theirs) for h in hashes[1:])

    @property
    def floated(self) -> bool:
        """NAT-T is in use: IKE moves to the NAT-T port after main mode's fourth message and ESP goes in UDP."""
        return self.enabled and self.peer_supports and (self.nat_local or self.nat_remote)

    @property
    def encap_mode(self) -> int | None:
        """The quick-mode Encapsulation Mode to offer, or None for plain tunnel mode."""
        return ENCAP_UDP_TUNNEL if self.floated else None
