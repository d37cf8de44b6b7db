"""IKEv1 informational exchanges (RFC 2409 5.7): DELETE, notifications, and dead peer detection (RFC 3706).

An informational message travels under the ISAKMP SA with its own random message ID and its own IV (derived
from the last phase-1 CBC block, as a quick mode's), and starts with HASH(1) = prf(SKEYID_a, M-ID | N/D). It is
one-way: nothing answers it except R-U-THERE, answered by R-U-THERE-ACK in an informational of its own.

This mixin is part of the session (ike/v1/session.py); it owns the session's children (the ESP SAs it keyed),
because DELETE, DPD and lifetimes all act on them. Received message IDs are remembered (bounded), so a replayed
informational is dropped and counted, not acted on twice.
"""
from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ParseError
from ..events import ChildSaDeleted, ChildSaEstablished, IkeEvent, IkeSaTerminated
from ..payloads._base import Reader, need
from . import keymat as km
from .message import Exchange, Payload, PayloadType, pull_header, push_chain, push_message

__all__ = [
    "DPD_VID",
    "DeadPeerDetected",
    "Delete",
    "InformationalMixin",
    "InitialContactReceived",
    "NoProposalChosen",
    "Notify",
    "NotifyType",
    "pull_delete",
    "pull_notify",
    "push_delete",
    "push_notify",
    "refusal_in_clear",
]

DOI_IPSEC = 1
PROTO_ISAKMP, PROTO_ESP = 1, 3
#: RFC 3706 2.1: the DPD vendor ID (version 1.0)
DPD_VID = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
#: received informational message IDs remembered for replay detection
MAX_SEEN_MIDS = 256


#: RFC 2408 3.14.1: notify types below this are errors (8192-16383 reserved, 16384 up status)
ERROR_NOTIFY_END = 8192


class NotifyType:
    INVALID_PAYLOAD_TYPE = 1
    NO_PROPOSAL_CHOSEN = 14
    RESPONDER_LIFETIME = 24576  # RFC 2407 4.6.3.1
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578  # RFC 2407 4.6.3.3
    R_U_THERE = 36136  # RFC 3706
    R_U_THERE_ACK = 36137


@dataclass(frozen=True)
class Notify:
    """RFC 2408 3.14: DOI, protocol, SPI, type and data."""
    protocol: int
    type: int
    spi: bytes = b""
    data: bytes = b""
    doi: int = DOI_IPSEC


def push_notify(n: Notify) -> Payload:
    return Payload(PayloadType.N, struct.pack("!IBBH", n.doi, n.protocol, len(n.spi), n.type) + n.spi + n.data)


def pull_notify(body: bytes) -> Notify:
    r = Reader(body)
    doi, proto, spi_size, ntype = r.u32("DOI"), r.u8("protocol"), r.u8("SPI size"), r.u16("notify type")
    spi = r.take(spi_size, "SPI")
    return Notify(proto, ntype, spi, r.take(r.remaining(), "notification data"), doi)


class NoProposalChosen(ParseError):
    """A phase-1 opening offers no transform a configuration here names (another cipher, hash, group or
    authentication; 3DES where none names it): the dispatcher answers NO_PROPOSAL_CHOSEN in clear, keeps nothing."""


def refusal_in_clear(cky_i: bytes, notify: int) -> bytes:
    """An unencrypted informational exchange answering a phase-1 opening we refuse (no keys exist yet), as
    charon sends NO_PROPOSAL_CHOSEN: the initiator learns why at once instead of retransmitting into silence.
    No state is kept for it, and it is smaller than any opening it answers."""
    return push_message(cky_i, bytes(8), Exchange.INFORMATIONAL, 0, 0,
                        [push_notify(Notify(PROTO_ISAKMP, notify, cky_i + bytes(8)))])


@dataclass(frozen=True)
class Delete:
    """RFC 2408 3.15: the SAs of one protocol the sender deleted; for ESP each SPI is the sender's inbound SPI,
    for ISAKMP the one SPI is CKY-I | CKY-R."""
    protocol: int
    spis: tuple[bytes, ...]
    doi: int = DOI_IPSEC


def push_delete(d: Delete) -> Payload:
    size = len(d.spis[0]) if d.spis else 0
    if any(len(s) != size for s in d.spis):
        raise ValueError("the SPIs of one DELETE have one size")
    return Payload(PayloadType.D, struct.pack("!IBBH", d.doi, d.protocol, size, len(d.spis)) + b"".join(d.spis))


def pull_delete(body: bytes) -> Delete:
    r = Reader(body)
    doi, proto, size, count = r.u32("DOI"), r.u8("protocol"), r.u8("SPI size"), r.u16("SPI count")
    need(size > 0 and count > 0, "DELETE without SPIs")
    spis = tuple(r.take(size, "SPI") for _ in range(count))
    need(not r.remaining(), "bytes after the SPIs of a DELETE")
    return Delete(proto, spis, doi)


@dataclass(frozen=True)
class InitialContactReceived(IkeEvent):
    """The peer says it holds no other SA with us (it rebooted): a daemon removes older ISAKMP and ESP SAs with
    this peer, keeping the SA identified here."""
    cookie_i: bytes
    cookie_r: bytes
    remote_addr: tuple[str, int]


@dataclass(frozen=True)
class DeadPeerDetected(IkeEvent):
    """``probes`` R-U-THERE went unanswered; ChildSaDeleted and IkeSaTerminated follow."""
    probes: int


def _spi(x: int) -> bytes:
    return x.to_bytes(4, "big")


class InformationalMixin:
    """DELETE, notifications and DPD for V1Session/V1Responder (which provide the attributes used here)."""

    # provided by the session
    config: object
    ike_id: int
    cky_i: bytes
    cky_r: bytes
    state: str
    dropped: int
    last_error: str
    keys: km.Phase1Keys | None
    _cipher: km.Phase1Cipher | None

    #: states in which phase 1 has not authenticated yet (informational messages are not protected there)
    _PHASE1_STATES = ("idle", "mm2", "mm4", "mm6", "r_mm3", "r_mm5", "am2", "r_am3")

    def _info_init(self) -> None:
        #: the ESP SAs this ISAKMP SA keyed, by our inbound SPI
        self.children: dict[int, ChildSaEstablished] = {}
        #: counted drops of replayed or stale message IDs (also in ``dropped``)
        self.replays = 0
        self._seen_mids: OrderedDict[int, None] = OrderedDict()
        self._dpd_seq = int.from_bytes(self._random(4), "big") & 0x7FFFFFFF or 1  # type: ignore[attr-defined]
        self._dpd_outstanding: int | None = None
        self._dpd_misses = 0
        self._dpd_due: float | None = None
        self._peer_seq: int | None = None
        self.last_notify: Notify | None = None
        self._p1 = False
        #: the peer sent the RFC 3706 vendor ID: only then do we probe it (we always answer R-U-THERE)
        self.peer_dpd = False

    @property
    def phase1_done(self) -> bool:
        """Main mode authenticated (set by the driver API when the session leaves the phase-1 states)."""
        return self._p1

    @property
    def alive(self) -> bool:
        return self.phase1_done and self.state not in ("closed", "dead", "failed", "expired")

    def _cookies(self) -> bytes:
        return self.cky_i + self.cky_r

    def _remember_mid(self, mid: int) -> None:
        if mid in self._seen_mids:
            self.replays += 1
            raise ParseError(f"message id {mid:#010x} was used before (replay)")
        self._seen_mids[mid] = None
        while len(self._seen_mids) > MAX_SEEN_MIDS:
            self._seen_mids.popitem(last=False)

    # -- sending
    def _new_mid(self) -> int:
        while True:
            mid = int.from_bytes(self._random(4), "big")  # type: ignore[attr-defined]
            if mid and mid not in self._seen_mids:
                return mid

    def send_informational(self, payloads: list[Payload]) -> None:
        """One protected informational message carrying ``payloads`` (N and/or D)."""
        assert self.keys is not None and self._cipher is not None
        mid = self._new_mid()
        self._seen_mids[mid] = None  # a peer echoing our message id is a replay too
        h1 = km.info_hash(self.keys, mid, push_chain(payloads)[1])
        self._out.append(self._cipher.encrypt(self.cky_i, self.cky_r, Exchange.INFORMATIONAL, mid,  # type: ignore
                                              [Payload(PayloadType.HASH, h1)] + payloads))
        self._cipher.forget(mid)

    def send_initial_contact(self) -> None:
        """INITIAL-CONTACT (RFC 2407 4.6.3.3): tells the peer to drop SAs it still holds from before our restart.
        Sent after phase 1, in an informational exchange (as strongSwan does when it is not in MM5)."""
        self.send_informational([push_notify(Notify(PROTO_ISAKMP, NotifyType.INITIAL_CONTACT, self._cookies()))])

    def delete_child(self, spi_in: int, now: float, reason: str = "deleted") -> None:
        """Delete one ESP SA: DELETE to the peer (our inbound SPI), then ChildSaDeleted."""
        child = self.children.pop(spi_in, None)
        if child is None:
            raise KeyError(f"no ESP SA with inbound SPI {spi_in:#010x}")
        if self.alive:
            self.send_informational([push_delete(Delete(PROTO_ESP, (_spi(spi_in),)))])
        self._events.append(ChildSaDeleted(self.ike_id, child.peer, child.child, child.spi_in,  # type: ignore
                                           child.spi_out, reason))

    def close(self, now: float) -> None:
        """Tear down: a DELETE for each ESP SA, then for the ISAKMP SA; events for each. Idempotent."""
        if self.state in ("closed", "dead"):
            return
        for spi in list(self.children):
            self.delete_child(spi, now)
        if self.alive:
            self.send_informational([push_delete(Delete(PROTO_ISAKMP, (self._cookies(),)))])
        self._terminate("deleted")
        self.state = "closed"

    def _terminate(self, reason: str, child_reason: str = "ike_sa terminated") -> None:
        for spi in list(self.children):
            c = self.children.pop(spi)
            self._events.append(ChildSaDeleted(self.ike_id, c.peer, c.child, c.spi_in, c.spi_out,  # type: ignore
                                               child_reason))
        self._events.append(IkeSaTerminated(self.ike_id, self.config.name,  # type: ignore[attr-defined]
                                            int.from_bytes(self.cky_i, "big"), int.from_bytes(self.cky_r, "big"),
                                            reason))
        self._deadline = None  # type: ignore[attr-defined]
        self._dpd_due = None

    # -- receiving
    def note_vendor_ids(self, payloads: list[Payload]) -> None:
        """RFC 3706 2.1: probe only a peer that announced DPD with its vendor ID (in MM1-MM4)."""
        self.peer_dpd = self.peer_dpd or any(p.type == PayloadType.VID and p.body == DPD_VID for p in payloads)

    def main_mode_notifies(self, payloads: list[Payload]) -> None:
        """Notifies riding in the authenticated last main-mode message: strongSwan and others put INITIAL-CONTACT
        into MM5 (RFC 2407 4.6.3.3 allows it wherever the SA is protected). Others there are ignored."""
        for p in payloads:
            if p.type == PayloadType.N:
                n = pull_notify(p.body)
                if n.type == NotifyType.INITIAL_CONTACT:
                    self._events.append(InitialContactReceived(self.ike_id, self.config.name,  # type: ignore
                                                               self.cky_i, self.cky_r, self.config.remote_addr))

    def _info_receive(self, data: bytes, now: float) -> None:
        """An informational message: verified, then each N and D payload acted on."""
        h = pull_header(data)
        if not self.phase1_done or not h.encrypted or not h.message_id:
            raise ParseError("unprotected informational message (ignored, RFC 2409 5.7)")
        assert self._cipher is not None and self.keys is not None
        if h.message_id in self._seen_mids:
            self.replays += 1
            raise ParseError(f"informational message id {h.message_id:#010x} seen before (replay)")
        try:
            _, payloads = self._cipher.decrypt(data)
        finally:
            self._cipher.forget(h.message_id)
        if not payloads or payloads[0].type != PayloadType.HASH:
            raise ParseError("informational message does not start with HASH")
        expect = km.info_hash(self.keys, h.message_id, push_chain(payloads[1:])[1])
        if not hmac.compare_digest(expect, payloads[0].body):
            raise ParseError("HASH(1) of an informational message does not verify")
        self._remember_mid(h.message_id)
        self._heard(now)
        notifies = [pull_notify(p.body) for p in payloads[1:] if p.type == PayloadType.N]
        deletes = [pull_delete(p.body) for p in payloads[1:] if p.type == PayloadType.D]
        for n in notifies:
            self._on_notify(n, now)
        for d in deletes:
            self._on_delete(d, now)

    def _heard(self, now: float) -> None:
        """An authenticated message from the peer: it is alive; the next probe waits a full delay again."""
        delay = getattr(self.config, "dpd_delay", 0)
        if delay and self.alive:
            self._dpd_due = now + delay
            self._dpd_misses = 0

    def _on_notify(self, n: Notify, now: float) -> None:
        self.last_notify = n
        if n.type in (NotifyType.R_U_THERE, NotifyType.R_U_THERE_ACK):
            if n.spi != self._cookies() or len(n.data) != 4:
                raise ParseError("DPD notify for another ISAKMP SA or without a sequence number")
            seq = int.from_bytes(n.data, "big")
            if n.type == NotifyType.R_U_THERE:
                if self._peer_seq is not None and seq <= self._peer_seq and self._peer_seq - seq < 1 << 30:
                    self.replays += 1
                    raise ParseError(f"R-U-THERE sequence {seq} not above {self._peer_seq} (replay)")
                self._peer_seq = seq
                self.send_informational([push_notify(Notify(PROTO_ISAKMP, NotifyType.R_U_THERE_ACK,
                                                            self._cookies(), n.data))])
            elif seq == self._dpd_outstanding:
                self._dpd_outstanding = None
            else:
                raise ParseError(f"R-U-THERE-ACK for sequence {seq}, none outstanding with it")
        elif n.type == NotifyType.INITIAL_CONTACT:
            self._events.append(InitialContactReceived(self.ike_id, self.config.name,  # type: ignore
                                                       self.cky_i, self.cky_r, self.config.remote_addr))
        elif n.type == NotifyType.RESPONDER_LIFETIME and n.protocol == PROTO_ISAKMP:
            self._honour_ike_lifetime(n, now)  # type: ignore[attr-defined]
        elif 0 < n.type < ERROR_NOTIFY_END and self.state == "qm2" and not self.children:
            # an error while our first quick mode waits: nothing else answers aggressive mode's AM3 (the
            # responder refuses it this way), and a refused first proposal would otherwise wait out every
            # retransmission
            self._refused_by_peer(n.type, "phase 1 or the first quick mode")  # type: ignore[attr-defined]

    def _on_delete(self, d: Delete, now: float) -> None:
        if d.protocol == PROTO_ISAKMP:
            if d.spis != (self._cookies(),):
                raise ParseError("DELETE for another ISAKMP SA")
            # IKEv1 ESP SAs outlive their ISAKMP SA in principle, but without one nothing can delete or rekey
            # them: like strongSwan, take them down with it (after an ISAKMP rekey they have moved on already)
            self._terminate("deleted by peer")
            self.state = "closed"
            return
        if d.protocol != PROTO_ESP:
            raise ParseError(f"DELETE for protocol {d.protocol}")
        by_out = {c.spi_out: c for c in self.children.values()}
        unknown = []
        for raw in d.spis:
            c = by_out.get(int.from_bytes(raw, "big")) if len(raw) == 4 else None
            if c is None:
                unknown.append(raw.hex())
                continue
            del self.children[c.spi_in]
            self._events.append(ChildSaDeleted(self.ike_id, c.peer, c.child, c.spi_in, c.spi_out,  # type: ignore
                                               "deleted by peer"))
        if unknown:
            self.last_error = f"DELETE for unknown ESP SPIs {', '.join(unknown)}"

    # -- DPD (RFC 3706): probe when the peer has been quiet for dpd_delay; dead after dpd_retries misses
    def _dpd_timer(self, now: float) -> None:
        if self._dpd_due is None or now < self._dpd_due or not self.alive:
            return
        if not self.peer_dpd:
            self._dpd_due = None
            self.last_error = "DPD configured, but the peer did not announce it (no RFC 3706 vendor ID)"
            return
        delay = getattr(self.config, "dpd_delay", 0)
        if self._dpd_outstanding is not None:
            self._dpd_misses += 1
            if self._dpd_misses > getattr(self.config, "dpd_retries", 3):
                self._events.append(DeadPeerDetected(self.ike_id, self.config.name,  # type: ignore
                                                     self._dpd_misses))
                self._terminate("dead peer", "dead peer")
                self.state = "dead"
                return
        self._dpd_seq = (self._dpd_seq + 1) & 0xFFFFFFFF or 1
        self._dpd_outstanding = self._dpd_seq
        self.send_informational([push_notify(Notify(PROTO_ISAKMP, NotifyType.R_U_THERE, self._cookies(),
                                                    _spi(self._dpd_seq)))])
        # unanswered probes are repeated (each with a new sequence number) at a bounded, growing interval
        self._dpd_due = now + min(delay * 2 ** self._dpd_misses, delay * 8)
