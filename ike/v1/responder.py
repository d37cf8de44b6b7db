"""The responder role of the IKEv1 session (ike/v1/session.py): main mode with a pre-shared key or certificates,
then the peer's quick mode. Built from the initiator's first datagram, so nothing is allocated for a message that does
not parse (the daemon's dispatcher owns half-open limits, as for IKEv2)."""
from __future__ import annotations

import hmac
from collections.abc import Sequence

from ..core_config import Identity, RandomSource
from ..dh import create_dh
from ..errors import ParseError
from ..events import ChildSaEstablished
from ..tasks.ike_auth import identities_match
from . import auth as v1auth
from . import keymat as km
from .informational import DPD_VID, NoProposalChosen
from .message import (
    Exchange,
    Payload,
    PayloadType,
    Proposal,
    SaPayload,
    Transform,
    decode_sa,
    encode_sa,
    pull_header,
    pull_message,
    push_message,
)
from .natt import NatTraversal
from .session import (
    PROTO_ISAKMP,
    Phase1Done,
    V1Config,
    V1Session,
    _id_body,
)

__all__ = ["V1Responder"]


def _same_identity(a: bytes, b: bytes) -> bool:
    """Phase-1 identities compared by type and data; the protocol/port fields (0/0 or 17/500) are not policy."""
    return len(a) >= 4 and len(b) >= 4 and a[0] == b[0] and a[4:] == b[4:]


def names_peer(config: V1Config, id_body: bytes) -> bool:
    """Whether a peer's phase-1 ID payload is the identity ``config`` expects: the exact ID with a pre-shared key,
    the identity (matched as for IKEv2) with certificates, whose check against the certificate comes later."""
    if config.signature is None:
        return _same_identity(id_body, _id_body(config.remote_id))
    try:
        return identities_match(Identity.parse(config.remote_id), v1auth.identity_of(id_body))
    except (ParseError, ValueError):
        return False


class V1Responder(V1Session):
    """One ISAKMP SA that the peer opened, and the quick modes it then runs (one at a time)."""

    initiator = False

    def __init__(self, config: V1Config, random: RandomSource, mm1: bytes, now: float, ike_id: int = 1,
                 alternatives: Sequence[V1Config] = ()) -> None:
        """Raises ParseError when ``mm1`` is not an acceptable main-mode opening.

        ``alternatives``: other configurations for peers at the same address (wildcards), tried in order after
        ``config``, as IKEv2's responder does: the proposal picks among them in the first message, and the
        initiator's identity in main mode's fifth (where certificates, or one key shared by them, allow it).
        ``config`` then names the one chosen."""
        super().__init__(config, random, ike_id)
        self._configs = (config, *alternatives)
        #: the ISAKMP transform accepted (its lifetimes are checked against ours once phase 1 is up)
        self.chosen_ike: Transform | None = None
        h, payloads = pull_message(mm1)
        #: the ESP SA keyed when we answered quick mode, emitted once HASH(3) verifies; a daemon may install
        #: its inbound half early so that the initiator's first ESP packets are not lost
        self.pending_child: ChildSaEstablished | None = None
        if h.exchange == Exchange.AGGRESSIVE:
            self._r_am1(h, payloads, now)  # refused (ParseError) unless config.aggressive
            return
        if h.exchange != Exchange.MAIN or h.message_id != 0 or h.cookie_r != bytes(8):
            raise ParseError("not the first message of main mode")
        self._sai_b = self._one(payloads, PayloadType.SA)
        self.note_vendor_ids(payloads)
        chosen = self._choose_ike(decode_sa(self._sai_b))
        self.cky_i, self.cky_r = h.cookie_i, random(8)
        self.natt.saw_vendor_ids(payloads)
        vids = self.natt.vendor_ids() if self.natt.peer_supports else []
        self._send(push_message(self.cky_i, self.cky_r, Exchange.MAIN, 0, 0,
                                [Payload(PayloadType.SA, encode_sa(chosen)), Payload(PayloadType.VID, DPD_VID)]
                                + vids), now)
        self._deadline = None  # a responder answers retransmits; it does not retransmit on a timer
        self.state = "r_mm3"

    def _choose_ike(self, sa: SaPayload, id_body: bytes | None = None) -> SaPayload:
        """The first configuration (``config``, then the alternatives) one of whose proposed transforms matches;
        in aggressive mode, whose identity the initiator also names (``id_body``, sent in the first message).
        Raises NoProposalChosen when no configuration here accepts any proposed transform (cipher, hash, group,
        authentication: 3DES only where one names it), ParseError when only the identity does not fit."""
        transform_fits = False
        for c in self._configs:
            want = c.ike_transform_wanted()
            for p in sa.proposals:
                for t in p.transforms:
                    if p.protocol != PROTO_ISAKMP or not all(t.get(k) == v for k, v in want.items()):
                        continue
                    if id_body is not None and not (c.aggressive and names_peer(c, id_body)):
                        transform_fits = True
                        continue
                    if c is not self.config:
                        self.config = c
                        self.natt = NatTraversal(c.natt, c.encap, self._random)
                    self.chosen_ike = t
                    return SaPayload(sa.doi, sa.situation, (Proposal(p.number, p.protocol, p.spi, (t,)),))
        if transform_fits:
            raise ParseError("no aggressive-mode peer here has the identity the initiator names")
        raise NoProposalChosen("no proposed ISAKMP transform matches the configuration")

    def _choose_peer(self, id_body: bytes) -> None:
        """Main mode's fifth message names the initiator: several peers may share an address (wildcards), so the
        configuration is final only now. Another may take over only where what phase 1 already fixed is the same
        for it: the transform, and the key SKEYID was made of (certificates: none)."""
        cur = self.config
        if names_peer(cur, id_body):
            return
        for c in self._configs:
            if c is not cur and names_peer(c, id_body) and c.ike_transform_wanted() == cur.ike_transform_wanted() and \
                    (c.signature is not None or c.psk == cur.psk):
                self.config = c
                return

    def _receive(self, data: bytes, now: float) -> None:
        h = pull_header(data)
        if h.cookie_i != self.cky_i or h.cookie_r != self.cky_r:
            raise ParseError("cookies of another ISAKMP SA")
        if self.state == "r_mm3" and h.exchange == Exchange.MAIN and not h.encrypted:
            self._r_mm3(pull_message(data)[1], now)
        elif self.state == "r_am3" and h.exchange == Exchange.AGGRESSIVE and h.message_id == 0:
            self._r_am3(h, data, now)
        elif self.state == "r_mm5" and h.exchange == Exchange.MAIN and h.encrypted and h.message_id == 0:
            self._r_mm5(data, now)
        elif not self._quick_mode_received(h, data, now):
            raise ParseError(f"exchange {h.exchange} not expected in state {self.state}")
        self._last_in = data

    def _r_mm3(self, payloads: list[Payload], now: float) -> None:
        c = self.config
        gxi = self._one(payloads, PayloadType.KE)
        ni = self._one(payloads, PayloadType.NONCE)
        if not 8 <= len(ni) <= 256:
            raise ParseError(f"nonce of {len(ni)} bytes")
        self._dh = create_dh(c.group, self._random)
        gxy = self._dh.shared(gxi)
        self.natt.check_natd(payloads, c.hash, self.cky_i, self.cky_r, c.local_addr, c.remote_addr)
        nr = self._random(32)
        skeyid = self._skeyid(ni, nr, gxy)
        self.keys = km.derive_phase1(c.hash, skeyid, gxy, self.cky_i, self.cky_r, gxi, self._dh.public,
                                     c.phase1_algorithm)
        self._gxi, self._ni, self._nr = gxi, ni, nr
        self._cipher = km.Phase1Cipher(self.keys)
        self._out.append(push_message(self.cky_i, self.cky_r, Exchange.MAIN, 0, 0,
                                      [Payload(PayloadType.KE, self._dh.public), Payload(PayloadType.NONCE, nr)]
                                      + (v1auth.certreq_payloads(c.signature) if c.signature is not None else [])
                                      + self.natt.natd_payloads(c.hash, self.cky_i, self.cky_r, c.local_addr,
                                                                c.remote_addr)))
        self._last = self._out[-1]
        self.state = "r_mm5"

    def _r_mm5(self, data: bytes, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        _, payloads = self._cipher.decrypt(data)
        idii = self._one(payloads, PayloadType.ID)
        self._choose_peer(idii)
        expect = km.hash_i(self.keys, self._gxi, self._dh.public, self.cky_i, self.cky_r, self._sai_b, idii)
        if self.config.signature is not None:
            self._cipher.confirm(data)  # the notify of a failure chains from this message, as the peer's does
            if not self._peer_signed(payloads, idii, expect, now):
                return
        else:
            if not _same_identity(idii, _id_body(self.config.remote_id)):
                raise ParseError("initiator's identity is not the configured remote_id")
            if not hmac.compare_digest(expect, self._one(payloads, PayloadType.HASH)):
                raise ParseError("HASH_I does not verify")
            self._cipher.confirm(data)
        idir = self._local_id_body()
        hr = km.hash_r(self.keys, self._gxi, self._dh.public, self.cky_i, self.cky_r, self._sai_b, idir)
        self._last = self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.MAIN, 0,
                                          [Payload(PayloadType.ID, idir)] + self._proof(hr))
        self._out.append(self._last)
        self._phase1_authenticated(payloads, now)

    def _phase1_authenticated(self, payloads: list[Payload], now: float) -> None:
        """MM5 or AM3 verified: wait for the initiator's quick mode."""
        self._events.append(Phase1Done(self.ike_id, self.config.name, self.cky_i, self.cky_r))
        self.main_mode_notifies(payloads)
        self.state = "r_qm1"
