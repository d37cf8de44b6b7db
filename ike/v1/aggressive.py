"""IKEv1 aggressive mode (RFC 2409 5, 5.1 signatures, 5.4 pre-shared keys), for both roles of the session.

    AM1  HDR, SA, KE, Ni, IDii [, CR] [, VIDs]
    AM2  HDR, SA, KE, Nr, IDir, HASH_R | CERT+SIG [, CR] [, VIDs] [, NAT-D]
    AM3  HDR*, HASH_I | CERT+SIG [, NAT-D]

Why it is off by default (``V1Config.aggressive``): AM2 carries HASH_R in the clear before the initiator has proved
anything, so anyone who sends AM1 with a plausible identity gets material for an offline dictionary attack on the
pre-shared key. A responder whose configuration does not allow it refuses the opening (V1Responder raises
ParseError: the dispatcher counts and logs the drop; no notify is sent, so nothing tells a prober which peers exist).

AM3 is encrypted, as strongSwan sends it (the RFC's diagram shows it plain; the phase-1 IV is then still
hash(g^xi | g^xr)); a plain AM3 from another implementation is accepted too. The keys, HASH_I/HASH_R and SKEYID are
main mode's (keymat.py), so the key log row and quick mode that follow are the same.

A mixin of V1Session/V1Responder: it uses their state, ``_one``, ``_proof``, ``_peer_signed``, ``_skeyid``,
``_local_id_body``, ``_check_ike_choice`` and ``_phase1_authenticated``; they only dispatch to it.
"""
from __future__ import annotations

import hmac
from typing import Any

from ..dh import create_dh
from ..errors import IkeError, ParseError
from . import auth as v1auth
from . import keymat as km
from .informational import DPD_VID, NoProposalChosen
from .message import (
    Exchange,
    IsakmpHeader,
    Payload,
    PayloadType,
    decode_sa,
    encode_sa,
    pull_message,
    push_message,
)

__all__ = ["AggressiveMixin"]

NONCE_MIN, NONCE_MAX = 8, 256


def _nonce(payloads: list[Payload], one: Any) -> bytes:
    n: bytes = one(payloads, PayloadType.NONCE)
    if not NONCE_MIN <= len(n) <= NONCE_MAX:
        raise ParseError(f"nonce of {len(n)} bytes")
    return n


def _same_identity(a: bytes, b: bytes) -> bool:
    """Phase-1 identities compared by type and data; the protocol/port fields (0/0 or 17/500) are not policy."""
    return len(a) >= 4 and len(b) >= 4 and a[0] == b[0] and a[4:] == b[4:]


class AggressiveMixin:
    """Aggressive mode for the session classes (which provide every attribute used here)."""

    config: Any
    state: str

    # -- initiator
    def _am_initiate(self, sa_b: bytes, now: float) -> None:
        """AM1: everything of MM1 and MM3 and our identity at once (the DH group cannot be negotiated)."""
        s: Any = self
        c = s.config
        s._sai_b = sa_b
        s._dh = create_dh(c.group, s._random)
        s._ni = s._random(32)
        s._idii = s._local_id_body()
        cr = v1auth.certreq_payloads(c.signature) if c.signature is not None else []
        s._send(push_message(s.cky_i, s.cky_r, Exchange.AGGRESSIVE, 0, 0,
                             [Payload(PayloadType.SA, sa_b), Payload(PayloadType.KE, s._dh.public),
                              Payload(PayloadType.NONCE, s._ni), Payload(PayloadType.ID, s._idii)]
                             + cr + [Payload(PayloadType.VID, DPD_VID)] + s.natt.vendor_ids()), now)
        s.state = "am2"

    def _am2(self, h: IsakmpHeader, data: bytes, now: float) -> None:
        """AM2: the responder's choice, keys and proof; verified before anything of ours follows."""
        s: Any = self
        c = s.config
        payloads = pull_message(data)[1]
        s._check_ike_choice(payloads)
        gxr = s._one(payloads, PayloadType.KE)
        nr = _nonce(payloads, s._one)
        idir = s._one(payloads, PayloadType.ID)
        gxy = s._dh.shared(gxr)
        s.note_vendor_ids(payloads)
        s.natt.saw_vendor_ids(payloads)
        s.natt.check_natd(payloads, c.hash, s.cky_i, h.cookie_r, c.local_addr, c.remote_addr)
        keys = km.derive_phase1(c.hash, s._skeyid(s._ni, nr, gxy), gxy, s.cky_i, h.cookie_r, s._dh.public, gxr,
                                c.phase1_algorithm)
        expect = km.hash_r(keys, s._dh.public, gxr, s.cky_i, h.cookie_r, s._sai_b, idir)
        if c.signature is None:
            if not _same_identity(idir, s._remote_id_body()):
                raise ParseError("responder's identity is not the configured remote_id")
            if not hmac.compare_digest(expect, s._one(payloads, PayloadType.HASH)):
                raise ParseError("HASH_R does not verify")
        # authenticated (or, with signatures, about to be judged): this SA is now the responder's
        s.cky_r, s.keys, s._gxr, s._nr = h.cookie_r, keys, gxr, nr
        s._cipher = km.Phase1Cipher(keys)
        if c.signature is not None and not s._peer_signed(payloads, idir, expect, now):
            return
        hi = km.hash_i(keys, s._dh.public, gxr, s.cky_i, s.cky_r, s._sai_b, s._idii)
        natd = s.natt.natd_payloads(c.hash, s.cky_i, s.cky_r, c.local_addr, c.remote_addr)
        s._send(s._cipher.encrypt(s.cky_i, s.cky_r, Exchange.AGGRESSIVE, 0, s._proof(hi) + natd), now)
        s._phase1_authenticated(payloads, now)

    # -- responder
    def _r_am1(self, h: IsakmpHeader, payloads: list[Payload], now: float) -> None:
        """AM1 to AM2. Raises ParseError (nothing sent) unless this peer's configuration allows aggressive mode
        and AM1 is acceptable: the responder is built from AM1, so every peer error must surface as ParseError."""
        try:
            self._r_am1_checked(h, payloads, now)
        except ParseError:
            raise
        except (IkeError, ValueError) as exc:  # e.g. a DH public value out of range
            raise ParseError(f"aggressive mode opening refused: {exc}") from None

    def _r_am1_checked(self, h: IsakmpHeader, payloads: list[Payload], now: float) -> None:
        s: Any = self
        if not any(c.aggressive for c in s._configs):
            raise ParseError("aggressive mode is not enabled for this peer (aggressive = true)")
        if h.message_id != 0 or h.cookie_r != bytes(8) or h.encrypted:
            raise ParseError("not the first message of aggressive mode")
        s._sai_b = s._one(payloads, PayloadType.SA)
        idii = s._one(payloads, PayloadType.ID)
        ident = v1auth.identity_of(idii)  # a DN/FQDN/address a configuration (and a certificate, in AM3) can match
        try:
            # the identity comes first here, so it chooses among the peers at this address with the proposal
            chosen = s._choose_ike(decode_sa(s._sai_b), idii)
        except NoProposalChosen:
            raise  # no peer here takes the cipher, hash, group or authentication: the peer is told so
        except ParseError:
            raise ParseError(f"no peer that allows aggressive mode has remote_id {str(ident)!r:.100} and a matching "
                             "proposal") from None
        c = s.config
        gxi = s._one(payloads, PayloadType.KE)
        ni = _nonce(payloads, s._one)
        s.note_vendor_ids(payloads)
        s.natt.saw_vendor_ids(payloads)
        s.cky_i, s.cky_r = h.cookie_i, s._random(8)
        s._dh = create_dh(c.group, s._random)
        gxy = s._dh.shared(gxi)
        nr = s._random(32)
        s.keys = km.derive_phase1(c.hash, s._skeyid(ni, nr, gxy), gxy, s.cky_i, s.cky_r, gxi, s._dh.public,
                                  c.phase1_algorithm)
        s._gxi, s._ni, s._nr, s._idii = gxi, ni, nr, idii
        s._cipher = km.Phase1Cipher(s.keys)
        idir = s._local_id_body()
        hr = km.hash_r(s.keys, gxi, s._dh.public, s.cky_i, s.cky_r, s._sai_b, idir)
        cr = v1auth.certreq_payloads(c.signature) if c.signature is not None else []
        vids = s.natt.vendor_ids() if s.natt.peer_supports else []
        s._last = push_message(s.cky_i, s.cky_r, Exchange.AGGRESSIVE, 0, 0,
                               [Payload(PayloadType.SA, encode_sa(chosen)), Payload(PayloadType.KE, s._dh.public),
                                Payload(PayloadType.NONCE, nr), Payload(PayloadType.ID, idir)]
                               + s._proof(hr) + cr + [Payload(PayloadType.VID, DPD_VID)] + vids
                               + s.natt.natd_payloads(c.hash, s.cky_i, s.cky_r, c.local_addr, c.remote_addr))
        s._out.append(s._last)
        s._deadline = None  # a responder answers retransmits; it does not retransmit on a timer
        s.state = "r_am3"

    def _r_am3(self, h: IsakmpHeader, data: bytes, now: float) -> None:
        """AM3: the initiator's proof; phase 1 is up once it verifies (nothing is sent back)."""
        s: Any = self
        c = s.config
        payloads = s._cipher.decrypt(data)[1] if h.encrypted else pull_message(data)[1]
        expect = km.hash_i(s.keys, s._gxi, s._dh.public, s.cky_i, s.cky_r, s._sai_b, s._idii)
        if c.signature is None and not hmac.compare_digest(expect, s._one(payloads, PayloadType.HASH)):
            raise ParseError("HASH_I does not verify")
        s.natt.check_natd(payloads, c.hash, s.cky_i, s.cky_r, c.local_addr, c.remote_addr)
        if h.encrypted:
            s._cipher.confirm(data)
        if c.signature is not None and not s._peer_signed(payloads, s._idii, expect, now):
            return
        s._last = None
        s._phase1_authenticated(payloads, now)
