"""Lifetimes and rekeying of IKEv1 SAs, and the driver API of the session that ties them to time.

Quick mode (RFC 2409 5.5) proposes lifetimes in seconds and kilobytes (RFC 2407 4.5); a responder that wants
shorter ones answers with RESPONDER-LIFETIME (4.6.3.1) and both use the shorter. Before an ESP SA expires its
quick-mode initiator runs a new quick mode under the same ISAKMP SA: make-before-break, so the events come as
ChildSaEstablished(replaces=old) -> ChildSaRekeyed -> ChildSaDeleted(old, "rekeyed") and the data plane installs
the new pair before it removes the old one. The ISAKMP SA is rekeyed by a fresh main mode (a successor session
with new cookies); when it authenticates the ESP SAs move to it, one IkeSaRekeyed says so (the session object and
``ike_id`` stay the same for the driver), and the old ISAKMP SA is deleted ISAKMP_DELETE_DELAY later, once the
peer has moved its ESP SAs too.
"""
from __future__ import annotations

import dataclasses
from collections import deque

from ..errors import IkeError, ParseError
from ..events import ChildSaEstablished, ChildSaRekeyed, IkeEvent, IkeSaRekeyed
from ..payloads._base import Reader
from .informational import (
    PROTO_ESP,
    PROTO_ISAKMP,
    Delete,
    InformationalMixin,
    Notify,
    NotifyType,
    pull_notify,
    push_delete,
    push_notify,
)
from .message import (
    Attribute,
    Exchange,
    Payload,
    PayloadType,
    Transform,
    _pull_attributes,
    pull_header,
    pull_message,
)

__all__ = [
    "ISAKMP_DELETE_DELAY",
    "REKEY_FRACTION",
    "RETRANSMITS",
    "SWITCH_DELAY",
    "LifecycleMixin",
    "lifetime_attributes",
    "negotiate_lifetime",
    "transform_lifetimes",
]

#: an SA is rekeyed when this fraction of its lifetime (seconds or kilobytes) is used
REKEY_FRACTION = 0.9
#: seconds between our QM3 and moving our outbound traffic to the new ESP SA: the peer installs its inbound SA
#: when QM3 arrives (it has no acknowledgement), so packets sent at once on the new SA can beat it and be lost
SWITCH_DELAY = 0.5
#: seconds between a new main mode of ours (an ISAKMP rekey) and the DELETE of the old ISAKMP SA: the peer moves
#: the ESP SAs to the new ISAKMP SA when that one is up (charon 5.9.8 in a job of its own: "detected reauth of
#: existing IKE_SA, adopting 1 children"), and a DELETE that overtakes the move takes them down with the old SA
ISAKMP_DELETE_DELAY = 2.0
#: RFC 2407 4.5 SA Life Type values (quick mode); phase 1 uses the same numbers (RFC 2409 Appendix A)
LIFE_SECONDS, LIFE_KILOBYTES = 1, 2
P2_LIFE_TYPE, P2_LIFE = 1, 2
P1_LIFE_TYPE, P1_LIFE = 11, 12
#: times our last main/quick mode message is repeated before the exchange fails
RETRANSMITS = 3
#: quick-mode message IDs remembered as done (a repeat that is not a retransmission is stale)
MAX_DONE_MIDS = 64


def transform_lifetimes(t: Transform, type_attr: int, value_attr: int) -> tuple[int, int]:
    """(seconds, kilobytes) of a transform, 0 where absent: each Life Type attribute is followed by its
    Life Duration (RFC 2407 4.5)."""
    secs = kb = 0
    kind = None
    for a in t.attributes:
        if a.type == type_attr:
            kind = a.int_value
        elif a.type == value_attr and kind is not None:
            if kind == LIFE_SECONDS:
                secs = a.int_value
            elif kind == LIFE_KILOBYTES:
                kb = a.int_value
            kind = None
    return secs, kb


def _shorter(a: int, b: int) -> int:
    """The shorter of two lifetimes where 0 means none."""
    return min(x for x in (a, b) if x) if (a or b) else 0


def negotiate_lifetime(proposed: tuple[int, int], ours: tuple[int, int]) -> tuple[tuple[int, int], bool]:
    """(lifetimes both use, whether the responder must announce them with RESPONDER-LIFETIME)."""
    agreed = (_shorter(proposed[0], ours[0]), _shorter(proposed[1], ours[1]))
    return agreed, agreed != proposed


def lifetime_attributes(secs: int, kb: int, type_attr: int, value_attr: int) -> tuple[Attribute, ...]:
    out: list[Attribute] = []
    if secs:
        out += [Attribute(type_attr, LIFE_SECONDS), Attribute(value_attr, secs)]
    if kb:
        out += [Attribute(type_attr, LIFE_KILOBYTES), Attribute(value_attr, kb)]
    return tuple(out)


class LifecycleMixin(InformationalMixin):
    """Timers, lifetimes and rekeying; the public driver API (receive_datagram, get_timer, handle_timer)."""

    #: the role in main mode (V1Responder sets False): the initiator rekeys the ISAKMP SA
    initiator = True

    def _lifecycle_init(self) -> None:
        self._info_init()
        #: run quick mode right after main mode (False for an ISAKMP rekey's successor)
        self.quick_after_main = True
        self._last_in: bytes | None = None
        self._done_mids: deque[int] = deque(maxlen=MAX_DONE_MIDS)
        self._replacing: int | None = None
        #: (when, old inbound SPI, new inbound SPI): a rekey of ours, waiting to move traffic to the new SA
        self._switch: tuple[float, int, int] | None = None
        self._qm_life: tuple[int, int] = (0, 0)
        #: per ESP SA (inbound SPI): [rekey at, expire at, kilobytes used]
        self._child_clock: dict[int, list[float]] = {}
        self._ike_rekey_at: float | None = None
        self._ike_expire_at: float | None = None
        self._successor: LifecycleMixin | None = None
        #: (when, datagrams): the old ISAKMP SA's DELETE after a rekey, built under its keys, sent then
        self._held_delete: tuple[float, list[bytes]] | None = None
        self.retransmits_answered = 0

    # -- driver API
    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []  # type: ignore[has-type]
        return out

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None  # type: ignore[attr-defined]

    def get_timer(self) -> float | None:
        times = [self._deadline, self._dpd_due, self._ike_rekey_at, self._ike_expire_at,  # type: ignore
                 self._switch[0] if self._switch else None, self._held_delete[0] if self._held_delete else None]
        times += [t for clock in self._child_clock.values() for t in clock[:2] if t]
        if self._successor is not None:
            times.append(self._successor.get_timer())
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Never raises for anything a peer sends: malformed, unauthenticated, replayed or unexpected datagrams
        are counted in ``dropped`` (``last_error`` says why)."""
        try:
            if self._successor is not None and data[:8] == self._successor.cky_i:
                self._successor.receive_datagram(data, now)
                self._from_successor(now)
                return
            if self.state in ("closed", "dead", "expired"):
                raise ParseError(f"the ISAKMP SA is {self.state}")
            h = pull_header(data)
            if self.phase1_done and (h.cookie_i, h.cookie_r) != (self.cky_i, self.cky_r):
                raise ParseError("cookies of another ISAKMP SA")
            if h.exchange == Exchange.INFORMATIONAL and self.phase1_done:
                self._info_receive(data, now)
                self._flush_deferred()
                return
            if self._last_in is not None and data == self._last_in and self._last is not None:  # type: ignore
                self._out.append(self._last)  # type: ignore[has-type]
                self.retransmits_answered += 1
                return  # the peer did not get our answer: repeat it, do not process the request again
            if h.exchange == Exchange.MAIN and not h.encrypted:
                self.note_vendor_ids(pull_message(data)[1])
            if h.exchange == Exchange.QUICK and h.message_id in self._done_mids:
                self.replays += 1
                raise ParseError(f"quick mode message id {h.message_id:#010x} is finished (stale or replayed)")
            self._receive(data, now)  # type: ignore[attr-defined]
            self._last_in = data
            if not self._p1 and self.keys is not None and self.state not in self._PHASE1_STATES + ("failed",):
                self._p1 = True
                self._phase1_up(now)
            if self._p1:
                self._heard(now)
                if self.state not in ("r_qm1",):  # the peer has moved past main mode
                    self._flush_deferred()
        except (IkeError, ValueError) as exc:
            # ParseError and the DH checks (ValueError from a bad public value) are peer errors: count, drop
            self.dropped += 1
            self.last_error = str(exc)

    def handle_timer(self, now: float) -> None:
        if self._held_delete is not None and now >= self._held_delete[0]:
            self._release_held_delete()
        if self._successor is not None:
            self._successor.handle_timer(now)
            self._from_successor(now)
        if self.state in ("closed", "dead", "failed", "expired"):
            return
        self._retransmit_timer(now)
        if self.state == "failed" and self._p1:
            self._terminate("retransmit timeout")
            return
        self._dpd_timer(now)
        if not self.alive:
            return
        if self._switch is not None:
            old_clock = self._child_clock.get(self._switch[1])
            if now >= self._switch[0] or (old_clock is not None and old_clock[1] and now >= old_clock[1]):
                self._finish_rekey(now)  # at the latest when the old pair expires: the new one takes over first
        if self._ike_expire_at is not None and now >= self._ike_expire_at:
            self._terminate("expired", "expired")
            self.state = "expired"
            return
        if self._ike_rekey_at is not None and now >= self._ike_rekey_at and self._successor is None:
            self._ike_rekey_at = None
            self.rekey_ike(now)
        for spi, clock in list(self._child_clock.items()):
            if spi not in self.children:
                del self._child_clock[spi]
            elif clock[1] and now >= clock[1]:
                self.delete_child(spi, now, "expired")
            elif clock[0] and now >= clock[0] and self.state == "established":
                clock[0] = 0
                self.rekey_child(spi, now)

    def _retransmit_timer(self, now: float) -> None:
        """Repeat our last message of main or quick mode, with doubling delays, a bounded number of times."""
        if self._deadline is None or now < self._deadline or self._last is None:  # type: ignore[has-type]
            return
        if self._tries >= RETRANSMITS:  # type: ignore[has-type]
            self._deadline = None
            if self.phase1_done and self._replacing is not None:
                self._replacing = None  # a failed rekey: the old SA keeps running until it expires
                self.state = "established"
                self.last_error = "quick mode rekey timed out"
                return
            self.state = "failed"
            self.last_error = "retransmit timeout"
            return
        self._tries += 1
        self._out.append(self._last)  # type: ignore[has-type]
        self._deadline = now + self.config.retransmit_timeout * 2 ** self._tries  # type: ignore[attr-defined]

    # -- lifetimes
    def _phase1_up(self, now: float) -> None:
        life = getattr(self.config, "ike_lifetime", 0)
        if life:
            self._ike_expire_at = now + life
            if self.initiator:
                self._ike_rekey_at = now + life * REKEY_FRACTION
        if getattr(self.config, "initial_contact", False) and self.initiator and not self._successor_of:
            self.send_initial_contact()
        t = getattr(self, "chosen_ike", None)
        if not self.initiator and t is not None:
            # main-mode responder: if our ISAKMP lifetime is shorter than the one we accepted, say so after MM6
            ours = (life, getattr(self.config, "ike_life_kb", 0))
            agreed, shorter = negotiate_lifetime(transform_lifetimes(t, P1_LIFE_TYPE, P1_LIFE), ours)
            if shorter:
                data = b"".join(a.push() for a in lifetime_attributes(*agreed, P1_LIFE_TYPE, P1_LIFE))
                # not at once: the peer may still be processing MM6 (its phase-1 IV, which this message's IV is
                # derived from, not yet final) and would find it malformed; after its next message it has MM6
                self._deferred = [push_notify(Notify(PROTO_ISAKMP, NotifyType.RESPONDER_LIFETIME,
                                                     self.cky_i + self.cky_r, data))]

    _successor_of = False
    _deferred: list[Payload] | None = None

    def _flush_deferred(self) -> None:
        if self._deferred and self.alive:
            payloads, self._deferred = self._deferred, None
            self.send_informational(payloads)

    def _honour_ike_lifetime(self, n: Notify, now: float) -> None:
        """RESPONDER-LIFETIME for the ISAKMP SA (sent in an informational after main mode)."""
        secs, _ = _notify_lifetimes(n)
        if secs and self._ike_expire_at is not None:
            start = self._ike_expire_at - self.config.ike_lifetime  # type: ignore[attr-defined]
            self._ike_expire_at = min(self._ike_expire_at, start + secs)
            if self._ike_rekey_at is not None:
                self._ike_rekey_at = min(self._ike_rekey_at, start + secs * REKEY_FRACTION)

    def esp_lifetime_attributes(self) -> tuple[Attribute, ...]:
        """The lifetime attributes of our quick-mode proposal."""
        c = self.config
        return lifetime_attributes(c.esp_lifetime, getattr(c, "esp_life_kb", 0), P2_LIFE_TYPE, P2_LIFE)  # type: ignore

    def responder_lifetime(self, t: Transform, spi: bytes) -> list[Payload]:
        """Quick-mode responder: agree on lifetimes; a RESPONDER-LIFETIME notify when ours are shorter."""
        c = self.config
        ours = (c.esp_lifetime, getattr(c, "esp_life_kb", 0))  # type: ignore[attr-defined]
        self._qm_life, shorter = negotiate_lifetime(transform_lifetimes(t, P2_LIFE_TYPE, P2_LIFE), ours)
        if not shorter:
            return []
        data = b"".join(a.push() for a in lifetime_attributes(*self._qm_life, P2_LIFE_TYPE, P2_LIFE))
        return [push_notify(Notify(PROTO_ESP, NotifyType.RESPONDER_LIFETIME, spi, data))]

    def initiator_lifetime(self, payloads: list[Payload]) -> None:
        """Quick-mode initiator: our proposal's lifetimes, shortened by a RESPONDER-LIFETIME in QM2."""
        c = self.config
        life = (c.esp_lifetime, getattr(c, "esp_life_kb", 0))  # type: ignore[attr-defined]
        for p in payloads:
            if p.type == PayloadType.N:
                n = pull_notify(p.body)
                if n.type == NotifyType.RESPONDER_LIFETIME and n.protocol == PROTO_ESP:
                    secs, kb = _notify_lifetimes(n)
                    life = (_shorter(life[0], secs), _shorter(life[1], kb))
        self._qm_life = life

    def _child_up(self, ev: ChildSaEstablished, now: float, early: bool = False) -> None:
        """A quick mode finished: record the SA with its agreed lifetimes; complete a rekey it was for.

        ``early``: we answered the peer's quick mode with QM2 and wait for its QM3. If that quick mode rekeys one of
        our SAs, the new SA is recorded (and emitted, so the daemon installs its inbound half) now: the peer sends
        on it as soon as QM2 reaches it, before we see QM3 (IKEv1 acknowledges nothing after QM2), and packets
        that arrive for an SPI not yet installed are lost. The outbound switch still waits for QM3 (the call
        without ``early``). A first SA is recorded at QM3 only."""
        if ev.spi_in in self.children:  # installed early, at QM2: this is its QM3
            ev = self.children[ev.spi_in]
            replaces = ev.replaces
        else:
            secs, kb = self._qm_life or (0, 0)
            replaces = self._replacing
            if replaces is None:  # the peer's quick mode for the same child and selectors: the peer rekeys
                replaces = next((c.spi_in for c in self.children.values()
                                 if (c.child, c.local_ts, c.remote_ts) == (ev.child, ev.local_ts, ev.remote_ts)),
                                None)
            if early and (replaces is None or self._replacing is not None):
                return
            ev = dataclasses.replace(ev, life_time=secs, life_bytes=kb * 1024, replaces=replaces,
                                     rekey_time=secs * REKEY_FRACTION if ev.initiator else 0,
                                     rekey_bytes=int(kb * 1024 * REKEY_FRACTION) if ev.initiator else 0)
            self.children[ev.spi_in] = ev
            self._child_clock[ev.spi_in] = [now + ev.rekey_time if ev.rekey_time else 0, now + secs if secs else 0,
                                            0]
            self._events.append(ev)  # type: ignore[attr-defined]
            if early:
                return
        self._done_mids.append(self._qm_mid)  # type: ignore[attr-defined]
        if replaces is not None and replaces in self.children:
            if self._replacing is not None:  # we rekeyed: switch after SWITCH_DELAY, then delete the old pair
                if self._switch is not None:
                    self._finish_rekey(now)
                self._switch = (now + SWITCH_DELAY, replaces, ev.spi_in)
            else:  # the peer rekeyed: its QM3 reached us, so it has the new SA; it deletes the old pair
                old = self.children[replaces]
                self._events.append(ChildSaRekeyed(self.ike_id, old.peer, old.child, old.spi_in,  # type: ignore
                                                   old.spi_out, ev.spi_in, ev.spi_out))
        self._replacing = None

    def _finish_rekey(self, now: float) -> None:
        """Our rekey's outbound switch (ChildSaRekeyed), then DELETE of the old pair (the peer deletes its own)."""
        assert self._switch is not None
        _, old_spi, new_spi = self._switch
        self._switch = None
        old, new = self.children.get(old_spi), self.children.get(new_spi)
        if old is None or new is None:
            return  # one of them went meanwhile (the peer's DELETE): nothing to switch
        self._events.append(ChildSaRekeyed(self.ike_id, old.peer, old.child, old.spi_in,  # type: ignore
                                           old.spi_out, new.spi_in, new.spi_out))
        self.delete_child(old_spi, now, "rekeyed")

    def child_traffic(self, spi_in: int, nbytes: int, now: float) -> None:
        """The data plane reports bytes carried by an ESP SA (both directions), for kilobyte lifetimes."""
        c, clock = self.children.get(spi_in), self._child_clock.get(spi_in)
        if c is None or clock is None or not c.life_bytes:
            return
        clock[2] += nbytes
        if clock[2] >= c.life_bytes:
            self.delete_child(spi_in, now, "expired")
        elif c.rekey_bytes and clock[2] >= c.rekey_bytes and self.state == "established" and \
                self._replacing is None:
            c2 = dataclasses.replace(c, rekey_bytes=0)
            self.children[spi_in] = c2
            self.rekey_child(spi_in, now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """A new quick mode for the ESP SA ``spi_in`` (same selectors); the old one is deleted once it is up."""
        if spi_in not in self.children:
            raise KeyError(f"no ESP SA with inbound SPI {spi_in:#010x}")
        if self.state != "established":
            raise IkeError(f"cannot rekey in state {self.state}")
        self._replacing = spi_in
        self._last_in = None
        self._quick_mode(now)  # type: ignore[attr-defined]

    # -- ISAKMP SA rekey
    def _new_initiator(self) -> LifecycleMixin:
        """A fresh main-mode initiator for the same peer (V1Session); only called where ``initiator`` is set."""
        raise TypeError(f"{type(self).__name__} does not start main modes")

    def rekey_ike(self, now: float) -> None:
        """A new main mode with new cookies beside this ISAKMP SA; it takes over when it authenticates. Only the
        main-mode initiator rekeys it (the responder's peer runs its own new main mode, adopted by the daemon)."""
        if not self.initiator:
            raise IkeError("only its main-mode initiator rekeys the ISAKMP SA")
        if not self.alive or self._successor is not None:
            raise IkeError(f"cannot rekey the ISAKMP SA in state {self.state}")
        succ = self._new_initiator()
        succ.quick_after_main = False
        succ._successor_of = True
        succ.initiate(now)  # type: ignore[attr-defined]
        self._successor = succ
        self._out.extend(succ.datagrams_to_send())  # type: ignore[has-type]

    def _from_successor(self, now: float) -> None:
        succ = self._successor
        assert succ is not None
        self._out.extend(succ.datagrams_to_send())  # type: ignore[has-type]
        done = False
        while (ev := succ.next_event()) is not None:
            done = done or ev.__class__.__name__ == "Phase1Done"
        if succ.state == "failed":
            self._successor = None
            self.last_error = f"ISAKMP rekey failed: {succ.last_error}"
            return
        if not done:
            return
        # the new ISAKMP SA is up: the old one's DELETE (under its own keys) leaves after ISAKMP_DELETE_DELAY, when
        # the peer has moved the ESP SAs over; then move over
        old = (self.cky_i, self.cky_r)
        if self.alive:
            self._release_held_delete()  # a rekey of a rekey within the delay: the older DELETE goes first
            n = len(self._out)  # type: ignore[has-type]
            self.send_informational([push_delete(Delete(PROTO_ISAKMP, (self.cky_i + self.cky_r,)))])
            self._held_delete = (now + ISAKMP_DELETE_DELAY, self._out[n:])  # type: ignore[has-type]
            del self._out[n:]  # type: ignore[has-type]
        for name in ("cky_i", "cky_r", "keys", "_cipher", "_seen_mids", "_dpd_seq", "_peer_seq"):
            setattr(self, name, getattr(succ, name))
        self._dpd_outstanding, self._last, self._last_in, self._deadline = None, None, None, None
        self.state, self._successor = "established", None
        life = getattr(self.config, "ike_lifetime", 0)
        self._ike_expire_at = now + life if life else None
        self._ike_rekey_at = now + life * REKEY_FRACTION if life and self.initiator else None
        self._heard(now)
        self._events.append(IkeSaRekeyed(self.ike_id, self.config.name,  # type: ignore[attr-defined]
                                         int.from_bytes(old[0], "big"), int.from_bytes(old[1], "big"),
                                         int.from_bytes(self.cky_i, "big"), int.from_bytes(self.cky_r, "big"),
                                         "main mode"))

    def _release_held_delete(self) -> None:
        if self._held_delete is not None:
            self._out.extend(self._held_delete[1])  # type: ignore[has-type]
            self._held_delete = None

    def close(self, now: float) -> None:
        """As :meth:`InformationalMixin.close`, and a held DELETE of an older ISAKMP SA goes out at once."""
        self._release_held_delete()
        super().close(now)

    def adopt_children(self, other: LifecycleMixin) -> None:
        """Take over the ESP SAs of an older ISAKMP SA with the same peer (the peer rekeyed it with a new main
        mode, which reaches a daemon as a new responder session): its later DELETE then leaves them alone."""
        self.children.update(other.children)
        self._child_clock.update(other._child_clock)
        other.children.clear()
        other._child_clock.clear()


def _notify_lifetimes(n: Notify) -> tuple[int, int]:
    """(seconds, kilobytes) of a RESPONDER-LIFETIME notify's attribute list."""
    attrs = _pull_attributes(Reader(n.data))
    return transform_lifetimes(Transform(0, 0, attrs), P2_LIFE_TYPE, P2_LIFE) if attrs and \
        attrs[0].type == P2_LIFE_TYPE else transform_lifetimes(Transform(0, 0, attrs), P1_LIFE_TYPE, P1_LIFE)
