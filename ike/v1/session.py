"""A sans-I/O IKEv1 session: main mode with a pre-shared key, then one quick mode (ESP, tunnel, optional PFS).

Datagrams and time go in (``receive_datagram``, ``handle_timer``); datagrams (``datagrams_to_send``), one
deadline (``get_timer``) and events (``next_event``) come out, as in the IKEv2 core. Nothing a peer sends raises
out of ``receive_datagram``: malformed or unauthenticated messages are counted in ``dropped`` and ignored.

Main mode authenticates with a pre-shared key or, when ``V1Config.signature`` is set, with certificates
(ike/v1/auth.py); a failed signature authentication ends the exchange (state "failed", an AuthenticationFailed
event, a logged reason and an ISAKMP notify to the peer) rather than being dropped like a forged datagram.

The driver API, informational exchanges, DPD, lifetimes and rekeying are the mixins of informational.py and
rekey.py; the responder role is responder.py.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import struct
from collections import deque
from dataclasses import dataclass

from ..core_config import RandomSource, TrafficSelector
from ..dh import create_dh
from ..errors import ParseError
from ..events import AuthenticationFailed, ChildSaEstablished, IkeEvent
from . import auth as v1auth
from . import keymat as km
from .aggressive import AggressiveMixin
from .informational import DPD_VID, NotifyType, pull_notify
from .message import (
    Attribute,
    Exchange,
    IsakmpHeader,
    Payload,
    PayloadType,
    Proposal,
    SaPayload,
    Transform,
    decode_sa,
    encode_sa,
    pull_header,
    pull_message,
    push_chain,
    push_message,
)
from .natt import NatTraversal
from .rekey import LifecycleMixin, lifetime_attributes

__all__ = ["Phase1Done", "V1Config", "V1Session"]

DOI_IPSEC = 1
SIT_IDENTITY_ONLY = 1
PROTO_ISAKMP, PROTO_ESP = 1, 3
#: RFC 2409 Appendix A / RFC 2407 4.5 attribute numbers and values used here
P1_ENC, P1_HASH, P1_AUTH, P1_GROUP, P1_LIFE_TYPE, P1_LIFE, P1_KEYLEN = 1, 2, 3, 4, 11, 12, 14
AES_CBC, TRIPLE_DES_CBC, LIFE_SECONDS = km.OAKLEY_AES_CBC, km.OAKLEY_3DES_CBC, 1
#: RFC 2407 4.4.4 ESP transform ids: ESP_3DES has no Key Length attribute (its key is 24 bytes of KEYMAT)
ESP_3DES, ESP_AES = 3, 12
P2_LIFE_TYPE, P2_LIFE, P2_GROUP, P2_MODE, P2_AUTH, P2_KEYLEN = 1, 2, 3, 4, 5, 6
MODE_TUNNEL = 1
#: ESP authentication algorithm -> (esp suite suffix, key length)
ESP_AUTH = {2: ("sha1", 20), 5: ("sha256", 32), 6: ("sha384", 48), 7: ("sha512", 64)}
#: RFC 4106 8.1: ESP_AES_GCM_16 (IANA ESP transform 20), Key Length attribute 128/192/256, no authentication
#: algorithm attribute; KEYMAT is the key then a 4-byte salt
ESP_AES_GCM_16 = 20


def esp_suite(transform_id: int, key_bits: int, auth: int) -> tuple[str, int, int]:
    """(esp suite name, KEYMAT bytes for the cipher, for integrity) of a quick-mode ESP transform."""
    if transform_id == ESP_AES_GCM_16:
        return f"aes{key_bits}gcm16", key_bits // 8 + 4, 0
    suffix, alen = ESP_AUTH[auth]
    if transform_id == ESP_3DES:
        return f"3des-{suffix}", 24, alen
    return f"aes{key_bits}-{suffix}", key_bits // 8, alen
HASH_IDS = {v: k for k, v in km.HASHES.items()}
ID_IPV4, ID_FQDN, ID_IPV4_SUBNET = 1, 2, 4

log = logging.getLogger("ike.v1")


@dataclass(frozen=True)
class V1Config:
    """One IKEv1 connection. ``local_id``/``remote_id`` are FQDNs or IPv4 addresses (as swanctl writes them);
    with ``signature`` also ``user@host`` or a DN, matched against the peer's certificate. ``signature`` set:
    main mode authenticates with certificates (``psk`` is then unused). ``enc_alg``/``esp_transform`` are AES
    unless a configuration names 3DES (then the key-bit fields are not sent: 3DES has one key length)."""
    name: str
    psk: bytes
    local_id: str
    remote_id: str
    local_ts: str
    remote_ts: str
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    enc_key_bits: int = 128
    enc_alg: int = AES_CBC  # or TRIPLE_DES_CBC (OAKLEY 5)
    hash: str = "sha256"
    group: int = 14
    esp_key_bits: int = 128
    esp_auth: int = 5  # 0 with an AEAD transform (no authentication algorithm attribute)
    esp_transform: int = ESP_AES  # or ESP_AES_GCM_16, ESP_3DES
    pfs_group: int | None = 14
    ike_lifetime: int = 10800
    esp_lifetime: int = 3600
    retransmit_timeout: float = 1.0
    signature: v1auth.SignatureAuth | None = None
    #: kilobyte lifetimes (0: none); seconds above. ESP SAs are rekeyed at rekey.REKEY_FRACTION of either
    ike_life_kb: int = 0
    esp_life_kb: int = 0
    #: RFC 3706 DPD: probe after this many quiet seconds (0: off); dead after dpd_retries unanswered probes
    dpd_delay: float = 0.0
    dpd_retries: int = 3
    #: send INITIAL-CONTACT after main mode (we hold no older SA with this peer)
    initial_contact: bool = False
    #: RFC 3947 NAT traversal: announce it (``natt``) and pretend to be behind a NAT (``encap``, charon's option)
    natt: bool = True
    encap: bool = False
    #: open with aggressive mode (initiator) / accept it (responder); off: it exposes the PSK's hash (aggressive.py)
    aggressive: bool = False

    @property
    def phase1_algorithm(self) -> km.Phase1Algorithm:
        """The ISAKMP SA's cipher; raises ValueError for an algorithm or key length the core does not run."""
        return km.Phase1Algorithm(self.enc_alg, 24 if self.enc_alg == TRIPLE_DES_CBC else self.enc_key_bits // 8)

    @property
    def p1_key_length(self) -> int | None:
        """The phase-1 Key Length attribute: AES's bits; none for 3DES (RFC 2409 Appendix A: fixed length)."""
        return None if self.enc_alg == TRIPLE_DES_CBC else self.enc_key_bits

    @property
    def esp_key_length(self) -> int | None:
        """The quick-mode Key Length attribute: AES's bits; none for ESP_3DES (RFC 2407 4.5)."""
        return None if self.esp_transform == ESP_3DES else self.esp_key_bits

    def ike_transform_wanted(self) -> dict[int, int | None]:
        """The phase-1 attributes a chosen (or proposed) transform must carry, as we offer them."""
        return {P1_ENC: self.enc_alg, P1_KEYLEN: self.p1_key_length, P1_HASH: HASH_IDS[self.hash],
                P1_AUTH: self.auth_method, P1_GROUP: self.group}

    def esp_transform_matches(self, p: Proposal, t: Transform) -> bool:
        """An ESP proposal and transform as we offer them (cipher, key length, integrity, PFS group)."""
        return (p.protocol == PROTO_ESP and len(p.spi) == 4 and t.transform_id == self.esp_transform
                and t.get(P2_KEYLEN) == self.esp_key_length and t.get(P2_AUTH) == (self.esp_auth or None)
                and t.get(P2_GROUP) == self.pfs_group)

    @property
    def auth_method(self) -> int:
        """The ISAKMP authentication method both sides must propose: PSK (1), RSA (3), ECDSA (9-11)."""
        return v1auth.AUTH_PSK if self.signature is None else v1auth.auth_method(self.signature.private_key)


@dataclass(frozen=True)
class Phase1Done(IkeEvent):
    """The ISAKMP SA is up (main mode authenticated)."""
    cookie_i: bytes
    cookie_r: bytes


def _id_body(value: str) -> bytes:
    try:
        return struct.pack("!BBH", ID_IPV4, 0, 0) + ipaddress.IPv4Address(value).packed
    except ValueError:
        return struct.pack("!BBH", ID_FQDN, 0, 0) + value.encode()


def _subnet_id(net: str) -> bytes:
    n = ipaddress.IPv4Network(net)
    return struct.pack("!BBH", ID_IPV4_SUBNET, 0, 0) + n.network_address.packed + n.netmask.packed


def _id_network(body: bytes) -> ipaddress.IPv4Network:
    """The network of a proxy identity: an address (as charon writes a /32) or an address and mask."""
    if len(body) == 8 and body[0] == ID_IPV4:
        return ipaddress.IPv4Network(ipaddress.IPv4Address(body[4:8]))
    if len(body) == 12 and body[0] == ID_IPV4_SUBNET:
        try:
            return ipaddress.IPv4Network((ipaddress.IPv4Address(body[4:8]), str(ipaddress.IPv4Address(body[8:]))))
        except ValueError as exc:
            raise ParseError(f"proxy identity: {exc}") from None
    raise ParseError(f"proxy identity of type {body[0] if body else None} is not supported")


def _ts(net: str) -> tuple[TrafficSelector, ...]:
    return (TrafficSelector.from_cidr(net),)


class V1Session(AggressiveMixin, LifecycleMixin):
    """One ISAKMP SA and its first quick mode, initiator side."""

    def __init__(self, config: V1Config, random: RandomSource, ike_id: int = 1) -> None:
        """``random(n)`` gives cookies, nonces, SPIs and DH secrets; the core reads no entropy itself."""
        self.config = config
        self.ike_id = ike_id
        self._random = random
        self.cky_i = random(8)
        self.cky_r = bytes(8)
        self.state = "idle"
        self.dropped = 0
        self.last_error = ""  # why the last dropped datagram was dropped (for logs and tests)
        self._out: list[bytes] = []
        self._events: deque[IkeEvent] = deque()
        self._last: bytes | None = None
        self._deadline: float | None = None
        self._tries = 0
        self.keys: km.Phase1Keys | None = None
        self._cipher: km.Phase1Cipher | None = None
        self.natt = NatTraversal(config.natt, config.encap, random)
        #: the ESP SA keyed when we answered a quick mode, emitted once HASH(3) verifies; a daemon may install
        #: its inbound half early so that the initiator's first ESP packets are not lost
        self.pending_child: ChildSaEstablished | None = None
        self._lifecycle_init()  # informational exchanges, DPD, lifetimes, rekeying (ike/v1/rekey.py)

    # -- driver API
    def initiate(self, now: float) -> None:
        c = self.config
        attrs = (Attribute(P1_ENC, c.enc_alg),
                 *([Attribute(P1_KEYLEN, c.p1_key_length)] if c.p1_key_length else []),
                 Attribute(P1_HASH, HASH_IDS[c.hash]), Attribute(P1_AUTH, c.auth_method), Attribute(P1_GROUP, c.group),
                 *lifetime_attributes(c.ike_lifetime, c.ike_life_kb, P1_LIFE_TYPE, P1_LIFE))
        sa = SaPayload(DOI_IPSEC, SIT_IDENTITY_ONLY, (Proposal(1, PROTO_ISAKMP, b"", (Transform(1, 1, attrs),)),))
        if c.aggressive:
            self._am_initiate(encode_sa(sa), now)
            return
        self._sai_b = encode_sa(sa)
        self._send(push_message(self.cky_i, self.cky_r, Exchange.MAIN, 0, 0,
                                [Payload(PayloadType.SA, self._sai_b), Payload(PayloadType.VID, DPD_VID)]
                                + self.natt.vendor_ids()), now)
        self.state = "mm2"

    def _new_initiator(self) -> V1Session:
        return V1Session(self.config, self._random, self.ike_id)

    # -- internals
    def _send(self, data: bytes, now: float) -> None:
        self._out.append(data)
        self._last, self._tries = data, 0
        self._deadline = now + self.config.retransmit_timeout

    def _receive(self, data: bytes, now: float) -> None:
        h = pull_header(data)
        if h.cookie_i != self.cky_i or (self.state not in ("mm2", "am2") and h.cookie_r != self.cky_r):
            raise ParseError("cookies of another ISAKMP SA")
        if self.state == "mm2" and h.exchange == Exchange.MAIN and not h.encrypted:
            self._mm2(h.cookie_r, pull_message(data)[1], now)
        elif self.state == "am2" and h.exchange == Exchange.AGGRESSIVE and not h.encrypted and not h.message_id:
            self._am2(h, data, now)
        elif self.state == "mm4" and h.exchange == Exchange.MAIN and not h.encrypted:
            self._mm4(pull_message(data)[1], now)
        elif self.state == "mm6" and h.exchange == Exchange.MAIN and h.encrypted and h.message_id == 0:
            self._mm6(data, now)
        elif self.state == "mm6" and h.exchange == Exchange.INFORMATIONAL and h.encrypted and h.message_id:
            self._peer_refused(data)
        elif self.state in ("mm2", "am2") and h.exchange == Exchange.INFORMATIONAL and not h.encrypted:
            self._refused_in_clear(data)
        elif not self._quick_mode_received(h, data, now):
            raise ParseError(f"exchange {h.exchange} not expected in state {self.state}")

    def _quick_mode_received(self, h: IsakmpHeader, data: bytes, now: float) -> bool:
        """A quick-mode message once phase 1 is up, in either main-mode role (each side may start one: ours
        answered in ``qm2``, the peer's opened and finished in ``r_qm1``/``r_qm3``). False: not one expected now."""
        if h.exchange != Exchange.QUICK or not h.message_id:
            return False
        if self.state == "qm2" and h.message_id == self._qm_mid:
            self._qm2(data, now)
        elif self.state == "r_qm3" and h.message_id == self._qm_mid:
            self._r_qm3(data, now)
        elif not h.encrypted:
            return False
        elif self.state == "r_qm3":  # another quick mode while this one's QM3 is outstanding: it was lost
            self._abandon_qm3()
            self._r_qm1(data, h.message_id, now)
        elif self.state in ("established", "r_qm1"):
            self._r_qm1(data, h.message_id, now)
        else:
            return False
        return True

    def _abandon_qm3(self) -> None:
        """The peer starts another quick mode while we wait for the last one's QM3: that QM3 was lost (nothing
        retransmits it), and waiting on would refuse every later quick mode. The SA a rekey installed at QM2 stays
        (the peer has it if it sent QM3; its DELETE of the old SA moves traffic over); a first SA not yet recorded
        is dropped."""
        assert self._cipher is not None
        self._done_mids.append(self._qm_mid)
        self._cipher.forget(self._qm_mid)
        self.pending_child = None
        self.state = "established"

    @staticmethod
    def _one(payloads: list[Payload], ptype: int) -> bytes:
        found = [p.body for p in payloads if p.type == ptype]
        if len(found) != 1:
            raise ParseError(f"{len(found)} payloads of type {ptype} where one is required")
        return found[0]

    def _check_ike_choice(self, payloads: list[Payload]) -> None:
        """The responder's SA must be the one transform we offered."""
        sa = decode_sa(self._one(payloads, PayloadType.SA))
        if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
            raise ParseError("responder must choose exactly one transform")
        t = sa.proposals[0].transforms[0]
        if any(t.get(k) != v for k, v in self.config.ike_transform_wanted().items()):
            raise ParseError("responder chose a transform that was not offered")

    def _mm2(self, cky_r: bytes, payloads: list[Payload], now: float) -> None:
        self._check_ike_choice(payloads)
        c = self.config
        self.cky_r = cky_r
        self.natt.saw_vendor_ids(payloads)
        self._dh = create_dh(c.group, self._random)
        self._ni = self._random(32)
        cr = v1auth.certreq_payloads(c.signature) if c.signature is not None else []
        natd = self.natt.natd_payloads(c.hash, self.cky_i, cky_r, c.local_addr, c.remote_addr)
        self._send(push_message(self.cky_i, cky_r, Exchange.MAIN, 0, 0,
                                [Payload(PayloadType.KE, self._dh.public), Payload(PayloadType.NONCE, self._ni)]
                                + cr + natd), now)
        self.state = "mm4"

    def _mm4(self, payloads: list[Payload], now: float) -> None:
        c = self.config
        gxr = self._one(payloads, PayloadType.KE)
        nr = self._one(payloads, PayloadType.NONCE)
        if not 8 <= len(nr) <= 256:
            raise ParseError(f"nonce of {len(nr)} bytes")
        gxy = self._dh.shared(gxr)
        self.natt.check_natd(payloads, c.hash, self.cky_i, self.cky_r, c.local_addr, c.remote_addr)
        skeyid = self._skeyid(self._ni, nr, gxy)
        self.keys = km.derive_phase1(c.hash, skeyid, gxy, self.cky_i, self.cky_r, self._dh.public, gxr,
                                     c.phase1_algorithm)
        self._gxr, self._nr = gxr, nr
        self._cipher = km.Phase1Cipher(self.keys)
        idii = self._local_id_body()
        h = km.hash_i(self.keys, self._dh.public, gxr, self.cky_i, self.cky_r, self._sai_b, idii)
        self._send(self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.MAIN, 0,
                                        [Payload(PayloadType.ID, idii)] + self._proof(h)), now)
        self.state = "mm6"

    def _mm6(self, data: bytes, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        _, payloads = self._cipher.decrypt(data)
        idir = self._one(payloads, PayloadType.ID)
        expect = km.hash_r(self.keys, self._dh.public, self._gxr, self.cky_i, self.cky_r, self._sai_b, idir)
        if self.config.signature is not None:
            self._cipher.confirm(data)  # the notify of a failure chains from this message, as the peer's does
            if not self._peer_signed(payloads, idir, expect, now):
                return
        else:
            if idir != _id_body(self.config.remote_id):
                raise ParseError("responder's identity is not the configured remote_id")
            if not hmac.compare_digest(expect, self._one(payloads, PayloadType.HASH)):
                raise ParseError("HASH_R does not verify")
            self._cipher.confirm(data)
        self._phase1_authenticated(payloads, now)

    def _phase1_authenticated(self, payloads: list[Payload], now: float) -> None:
        """Main or aggressive mode verified the peer: quick mode follows (or nothing, for an ISAKMP rekey)."""
        self._events.append(Phase1Done(self.ike_id, self.config.name, self.cky_i, self.cky_r))
        if self.quick_after_main:
            self._quick_mode(now)
        else:  # an ISAKMP rekey: the ESP SAs stay where they are
            self.state, self._deadline = "established", None

    # -- authentication (PSK or signatures; the signature rules are in auth.py)
    def _skeyid(self, ni: bytes, nr: bytes, gxy: bytes) -> bytes:
        c = self.config
        if c.signature is not None:
            return km.skeyid_sig(c.hash, ni, nr, gxy)  # RFC 2409 5.1
        return km.skeyid_psk(c.hash, c.psk, ni, nr)

    def _remote_id_body(self) -> bytes:
        """The ID payload body a PSK peer must send (with signatures its certificate is matched instead)."""
        return _id_body(self.config.remote_id)

    def _local_id_body(self) -> bytes:
        c = self.config
        if c.signature is None:
            return _id_body(c.local_id)
        return v1auth.id_body(c.local_id, c.signature.certificate)

    def _proof(self, digest: bytes) -> list[Payload]:
        """What follows our ID in main mode message 5/6: HASH, or CERTs and SIG over the same hash."""
        sig = self.config.signature
        if sig is None:
            return [Payload(PayloadType.HASH, digest)]
        signature = v1auth.sign(sig.private_key, digest, self._random)
        return v1auth.cert_payloads(sig) + [Payload(PayloadType.SIG, signature)]

    def _peer_signed(self, payloads: list[Payload], id_payload: bytes, digest: bytes, now: float) -> bool:
        """Check the peer's certificate and SIG; on failure end the exchange and tell the peer why."""
        c = self.config
        assert c.signature is not None and self._cipher is not None and self.keys is not None
        try:
            v1auth.verify_peer(c.signature, c.auth_method, payloads, id_payload, digest, c.remote_id, now)
        except v1auth.V1AuthError as exc:
            log.warning("IKEv1 %s[%d] with %s: authentication of the peer failed: %s", c.name, self.ike_id,
                        c.remote_addr[0], exc.reason)
            self.last_error = exc.reason
            self._events.append(AuthenticationFailed(self.ike_id, c.name, c.remote_addr, exc.reason, True))
            mid = int.from_bytes(self._random(4), "big") or 1
            self._out.append(v1auth.notify_datagram(self._cipher, self.keys, self.cky_i, self.cky_r, exc.notify,
                                                    mid))
            self.state, self._deadline, self._last = "failed", None, None
            return False
        return True

    def _peer_refused(self, data: bytes) -> None:
        """An authenticated informational exchange while main mode waits: the peer refused us."""
        assert self._cipher is not None and self.keys is not None
        notify = v1auth.read_notify(self._cipher, self.keys, data)
        if notify is None:
            raise ParseError("informational exchange that does not authenticate")
        self._refused_by_peer(notify, "main mode")

    def _refused_by_peer(self, notify: int, what: str) -> None:
        """The peer's authenticated error notify ends what we set up: an authentication error is reported as
        AuthenticationFailed (the peer's side), any error ends the SA with it as the reason."""
        c = self.config
        why = f"peer sent {v1auth.NOTIFY_NAMES.get(notify, str(notify))}"
        log.warning("IKEv1 %s[%d] with %s: %s refused: %s", c.name, self.ike_id, c.remote_addr[0], what, why)
        self.last_error = why
        if notify in v1auth.AUTH_NOTIFIES:
            self._events.append(AuthenticationFailed(self.ike_id, c.name, c.remote_addr, why, False))
        self.state, self._deadline, self._last = "failed", None, None

    def _refused_in_clear(self, data: bytes) -> None:
        """The responder's NO_PROPOSAL_CHOSEN before any keys exist (it cannot be authenticated: only one who saw
        our cookie can send it, and such a peer could drop our datagrams as well). Anything else is dropped."""
        notifies = [p.body for p in pull_message(data)[1] if p.type == PayloadType.N]
        if len(notifies) != 1 or pull_notify(notifies[0]).type != NotifyType.NO_PROPOSAL_CHOSEN:
            raise ParseError("unencrypted informational exchange other than NO_PROPOSAL_CHOSEN")
        c = self.config
        why = "peer sent NO_PROPOSAL_CHOSEN: it is not configured for our phase-1 proposal"
        log.warning("IKEv1 %s[%d] with %s: %s", c.name, self.ike_id, c.remote_addr[0], why)
        self.last_error = why
        self.state, self._deadline, self._last = "failed", None, None

    def _quick_mode(self, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        c = self.config
        self._qm_mid = int.from_bytes(self._random(4), "big") or 1
        self._spi_in = self._random(4)
        attrs = [*self.esp_lifetime_attributes(), Attribute(P2_MODE, self.natt.encap_mode or MODE_TUNNEL),
                 *([Attribute(P2_AUTH, c.esp_auth)] if c.esp_auth else []),
                 *([Attribute(P2_KEYLEN, c.esp_key_length)] if c.esp_key_length else [])]
        if c.pfs_group:
            attrs.append(Attribute(P2_GROUP, c.pfs_group))
        sa = SaPayload(DOI_IPSEC, SIT_IDENTITY_ONLY,
                       (Proposal(1, PROTO_ESP, self._spi_in, (Transform(1, c.esp_transform, tuple(attrs)),)),))
        self._qni = self._random(32)
        body = [Payload(PayloadType.SA, encode_sa(sa)), Payload(PayloadType.NONCE, self._qni)]
        self._qdh = create_dh(c.pfs_group, self._random) if c.pfs_group else None
        if self._qdh:
            body.append(Payload(PayloadType.KE, self._qdh.public))
        self._idci, self._idcr = _subnet_id(c.local_ts), _subnet_id(c.remote_ts)
        body += [Payload(PayloadType.ID, self._idci), Payload(PayloadType.ID, self._idcr)]
        h1 = km.qm_hash1(self.keys, self._qm_mid, push_chain(body)[1])
        self._send(self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.QUICK, self._qm_mid,
                                        [Payload(PayloadType.HASH, h1)] + body), now)
        self.state = "qm2"

    def _qm2(self, data: bytes, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        c = self.config
        _, payloads = self._cipher.decrypt(data)
        if not payloads or payloads[0].type != PayloadType.HASH:
            raise ParseError("quick mode message does not start with HASH")
        expect = km.qm_hash2(self.keys, self._qm_mid, self._qni, push_chain(payloads[1:])[1])
        if not hmac.compare_digest(expect, payloads[0].body):
            raise ParseError("HASH(2) does not verify")
        sa = decode_sa(self._one(payloads, PayloadType.SA))
        if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
            raise ParseError("responder must choose exactly one transform")
        p = sa.proposals[0]
        t = p.transforms[0]
        if not c.esp_transform_matches(p, t):
            raise ParseError("responder chose an ESP transform that was not offered")
        ids = [q.body for q in payloads if q.type == PayloadType.ID]
        if ids and [_id_network(i) for i in ids] != [ipaddress.IPv4Network(c.local_ts),
                                                      ipaddress.IPv4Network(c.remote_ts)]:
            raise ParseError("responder changed the proxy identities")
        nr = self._one(payloads, PayloadType.NONCE)
        self.initiator_lifetime(payloads)
        gxy = b""
        if self._qdh:
            gxy = self._qdh.shared(self._one(payloads, PayloadType.KE))
        self._cipher.confirm(data)
        h3 = km.qm_hash3(self.keys, self._qm_mid, self._qni, nr)
        self._send(self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.QUICK, self._qm_mid,
                                        [Payload(PayloadType.HASH, h3)]), now)
        self._deadline = None  # the last message is not retransmitted unless the peer repeats QM2
        self._cipher.forget(self._qm_mid)
        suite, elen, alen = esp_suite(c.esp_transform, c.esp_key_bits, c.esp_auth)
        k_in = km.qm_keymat(self.keys, PROTO_ESP, self._spi_in, self._qni, nr, elen + alen, gxy)
        k_out = km.qm_keymat(self.keys, PROTO_ESP, p.spi, self._qni, nr, elen + alen, gxy)
        self._child_up(ChildSaEstablished(
            self.ike_id, c.name, child=c.name, spi_in=int.from_bytes(self._spi_in, "big"),
            spi_out=int.from_bytes(p.spi, "big"), suite=suite, esn=False, mode="tunnel",
            local_ts=_ts(c.local_ts), remote_ts=_ts(c.remote_ts), local_addr=c.local_addr,
            remote_addr=c.remote_addr, encap=self.natt.floated, initiator=True, rekey_time=0, life_time=c.esp_lifetime,
            rekey_bytes=0, life_bytes=0, rekey_packets=0, life_packets=0,
            enc_key_in=k_in[:elen], enc_key_out=k_out[:elen], integ_key_in=k_in[elen:], integ_key_out=k_out[elen:]),
            now)
        self.state = "established"

    # -- the peer's quick mode (both roles: charon rekeys an ESP SA it initiated, or one whose lifetime it has
    #    shorter, with a quick mode of its own even when it was the main-mode responder)
    def _r_qm1(self, data: bytes, mid: int, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        c = self.config
        _, payloads = self._cipher.decrypt(data)
        if not payloads or payloads[0].type != PayloadType.HASH:
            raise ParseError("quick mode message does not start with HASH")
        if not hmac.compare_digest(km.qm_hash1(self.keys, mid, push_chain(payloads[1:])[1]), payloads[0].body):
            raise ParseError("HASH(1) does not verify")
        sa = decode_sa(self._one(payloads, PayloadType.SA))
        chosen: tuple[Proposal, Transform] | None = None
        for p in sa.proposals:
            for t in p.transforms:
                if c.esp_transform_matches(p, t):
                    chosen = chosen or (p, t)
        if chosen is None:
            raise ParseError("no proposed ESP transform matches the configuration")
        ids = [q.body for q in payloads if q.type == PayloadType.ID]
        if len(ids) != 2 or [_id_network(i) for i in ids] != [ipaddress.IPv4Network(c.remote_ts),
                                                                ipaddress.IPv4Network(c.local_ts)]:
            raise ParseError("proxy identities do not match the configured traffic selectors")
        ni = self._one(payloads, PayloadType.NONCE)
        gxy = b""
        ke: list[Payload] = []
        if c.pfs_group:
            qdh = create_dh(c.pfs_group, self._random)
            gxy = qdh.shared(self._one(payloads, PayloadType.KE))
            ke = [Payload(PayloadType.KE, qdh.public)]
        self._cipher.confirm(data)
        p, t = chosen
        self._qm_mid, self._qni, self._qnr, self._qgxy, self._spi_out = mid, ni, self._random(32), gxy, p.spi
        self._spi_in = self._random(4)
        body = [Payload(PayloadType.SA, encode_sa(SaPayload(sa.doi, sa.situation,
                                                            (Proposal(p.number, p.protocol, self._spi_in, (t,)),)))),
                Payload(PayloadType.NONCE, self._qnr)] + ke + [Payload(PayloadType.ID, i) for i in ids]
        body += self.responder_lifetime(t, p.spi)
        h2 = km.qm_hash2(self.keys, mid, ni, push_chain(body)[1])
        self._last = self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.QUICK, mid,
                                          [Payload(PayloadType.HASH, h2)] + body)
        self._out.append(self._last)
        suite, elen, alen = esp_suite(c.esp_transform, c.esp_key_bits, c.esp_auth)
        k_in = km.qm_keymat(self.keys, PROTO_ESP, self._spi_in, self._qni, self._qnr, elen + alen, self._qgxy)
        k_out = km.qm_keymat(self.keys, PROTO_ESP, self._spi_out, self._qni, self._qnr, elen + alen, self._qgxy)
        self.pending_child = ChildSaEstablished(
            self.ike_id, c.name, child=c.name, spi_in=int.from_bytes(self._spi_in, "big"),
            spi_out=int.from_bytes(self._spi_out, "big"), suite=suite, esn=False,
            mode="tunnel", local_ts=_ts(c.local_ts), remote_ts=_ts(c.remote_ts), local_addr=c.local_addr,
            remote_addr=c.remote_addr, encap=self.natt.floated, initiator=False, rekey_time=0, life_time=c.esp_lifetime,
            rekey_bytes=0, life_bytes=0, rekey_packets=0, life_packets=0,
            enc_key_in=k_in[:elen], enc_key_out=k_out[:elen], integ_key_in=k_in[elen:], integ_key_out=k_out[elen:])
        self.state = "r_qm3"
        self._child_up(self.pending_child, now, early=True)  # a rekey's inbound half: ready before QM3

    def _r_qm3(self, data: bytes, now: float) -> None:
        assert self._cipher is not None and self.keys is not None
        _, payloads = self._cipher.decrypt(data)
        expect = km.qm_hash3(self.keys, self._qm_mid, self._qni, self._qnr)
        if not payloads or payloads[0].type != PayloadType.HASH or \
                not hmac.compare_digest(expect, payloads[0].body):
            raise ParseError("HASH(3) does not verify")
        self._cipher.forget(self._qm_mid)
        assert self.pending_child is not None
        self._child_up(self.pending_child, now)
        self.pending_child = None
        self._last = None
        self.state = "established"
