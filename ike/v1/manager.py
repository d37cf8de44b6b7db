"""The daemon's IKEv1 side: every ISAKMP SA of one daemon, with the same drivers as ike.dispatcher.Dispatcher.

Why apart from the sessions: a V1Session/V1Responder is one ISAKMP SA on fixed addresses and knows nothing about
sockets, ports or other SAs. This manager is what IKEv2's dispatcher is to its connections: it routes datagrams
by cookie, creates responders from a main-mode opening (within the half-open limits of CoreConfig), moves an SA
to the NAT-T port once NAT-D found a NAT (RFC 3947: from main mode's fifth message on, with the non-ESP marker),
sends NAT keepalives, retransmits on the sessions' timers, and turns the sessions' events into the ones the
daemon already handles for IKEv2 (IkeSaEstablished, ChildSaEstablished with UDP encapsulation and the floated
ports, ChildSaRekeyed, ChildSaDeleted, IkeSaRekeyed, IkeSaTerminated), so the data plane, the key log and
``list-sas`` need nothing of their own.

Lifetimes, DELETE, DPD and rekeying belong to the session (ike.v1.rekey's driver API): the commands here ask the
session, which tells the peer; esp's soft expiry (bytes or packets) asks the session for a rekey. The manager
only adds what concerns several SAs: INITIAL-CONTACT from a peer takes down our older SAs with it, and a peer's
new main mode for an SA we hold (its ISAKMP rekey) takes over that SA's ESP SAs.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..connection import Datagram
from ..core_config import ANY_ADDRESS, CoreConfig, PeerConfig
from ..dispatcher import ChildInfo, SaInfo
from ..errors import IkeError, InvalidStateError, ParseError
from ..events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaEstablished,
    IkeSaRekeyed,
    IkeSaTerminated,
)
from .auth import method_name
from .daemon_events import V1KeysDerived
from .informational import InitialContactReceived, NoProposalChosen, NotifyType, refusal_in_clear
from .message import Exchange, pull_header
from .profile import proposal_text, v1_config
from .responder import V1Responder
from .session import Phase1Done, V1Session

__all__ = ["V1Manager"]

log = logging.getLogger("ike.v1")


@dataclass(eq=False)
class _Sa:
    ike_id: int
    peer: PeerConfig
    session: V1Session
    local: tuple[str, int]  # our address and port as the peer sees it sent to (moves to the NAT-T port)
    remote: tuple[str, int]
    created: float
    initiator: bool
    state: str = "CONNECTING"
    established_at: float | None = None
    floated: bool = False
    first_in: bytes = b""  # a responder's main-mode opening, to answer its retransmits
    first_out: bytes = b""
    last_outbound: float = 0.0
    children: dict[int, ChildSaEstablished] = field(default_factory=dict)  # by inbound SPI
    adopted: set[int] = field(default_factory=set)  # inbound SPIs taken over from an older ISAKMP SA
    closed: bool = False

    @property
    def cookies(self) -> tuple[bytes, bytes]:
        return self.session.cky_i, self.session.cky_r


class V1Manager:
    """All ISAKMP SAs of one daemon. ``new_id()`` hands out ike_ids shared with the IKEv2 dispatcher."""

    def __init__(self, config: CoreConfig, new_id: Callable[[], int]) -> None:
        self.config = config
        self._new_id = new_id
        self._sas: dict[int, _Sa] = {}
        self._by_cookie: dict[bytes, _Sa] = {}  # initiator cookie -> SA (ours or the peer's)
        self._events: deque[IkeEvent] = deque()
        self._outbox: list[Datagram] = []
        self.stats: Counter[str] = Counter()

    # -- helpers -----------------------------------------------------------------------------------------
    def _datagram(self, sa: _Sa, data: bytes, now: float) -> Datagram:
        sa.last_outbound = now
        return Datagram(data, sa.remote, sa.local[1], sa.local[1] not in self.config.plain_ports)

    def _half_open(self, host: str | None = None) -> int:
        return sum(1 for s in self._sas.values() if not s.initiator and s.state == "CONNECTING"
                   and (host is None or s.remote[0] == host))

    def owns(self, ike_id: int) -> bool:
        return ike_id in self._sas

    def owns_child(self, spi: int) -> bool:
        return self._owner(spi) is not None

    def _owner(self, spi: int) -> _Sa | None:
        for sa in self._sas.values():
            if spi in sa.children or any(c.spi_out == spi for c in sa.children.values()):
                return sa
        return None

    def _holding(self, spi_in: int) -> _Sa:
        """The ISAKMP SA holding the ESP SA with inbound SPI ``spi_in`` (what the control verbs name)."""
        sa = self._owner(spi_in)
        if sa is None or spi_in not in sa.children:
            raise InvalidStateError(f"no CHILD_SA with SPI {spi_in:08x}")
        return sa

    def _auth(self, sa: _Sa) -> str:
        """What list-sas and IkeSaEstablished call the authentication: psk, rsa, ecdsa-256/384/521."""
        return method_name(sa.session.config.auth_method)

    def _register(self, sa: _Sa) -> None:
        """Route the cookies of a successor main mode (our ISAKMP rekey) to the SA it will replace."""
        succ = getattr(sa.session, "_successor", None)
        if succ is not None:
            self._by_cookie.setdefault(succ.cky_i, sa)

    # -- drivers -----------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int],
                         now: float) -> None:
        """One ISAKMP datagram (marker stripped). Never raises for bad input: counted drops."""
        try:
            self._receive(bytes(data), addr, local_addr, now)
        except (ParseError, ValueError) as exc:
            self.stats["v1_dropped_malformed"] += 1
            log.debug("IKEv1 datagram from %s dropped: %s", addr[0], exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not become a peer's weapon
            self.stats["v1_dropped_internal_error"] += 1
            log.warning("internal error on an IKEv1 datagram from %s, dropped: %s: %s", addr[0],
                        type(exc).__name__, exc)

    def _receive(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int], now: float) -> None:
        if len(data) > self.config.max_message_size:
            self.stats["v1_dropped_oversized"] += 1
            return
        h = pull_header(data)
        self.stats["v1_received"] += 1
        sa = self._by_cookie.get(h.cookie_i)
        if sa is None or sa.closed:
            if h.cookie_r == bytes(8) and h.exchange in (Exchange.MAIN, Exchange.AGGRESSIVE) and h.message_id == 0 \
                    and not h.encrypted:
                self._new_responder(data, addr, local_addr, now)
            else:
                self.stats["v1_dropped_unknown_cookie"] += 1
            return
        if not sa.initiator and data == sa.first_in:  # the opening again: our answer was lost
            self._outbox.append(self._datagram(sa, sa.first_out, now))
            return
        succ = getattr(sa.session, "_successor", None)
        if succ is not None and h.cookie_i == succ.cky_i:
            pass  # our rekeying main mode: the session routes it
        elif h.cookie_r != sa.session.cky_r and sa.session.state not in ("mm2", "am2"):
            self.stats["v1_dropped_unknown_cookie"] += 1
            return
        before = sa.session.dropped
        sa.session.receive_datagram(data, now)
        if sa.session.dropped != before:
            self.stats["v1_dropped_" + ("unauthenticated" if sa.session.keys else "malformed")] += 1
            log.debug("IKEv1 %s[%d]: dropped a datagram from %s: %s", sa.peer.name, sa.ike_id, addr[0],
                      sa.session.last_error)
        else:
            # an accepted message says where the peer is now (RFC 3947: it floats to 4500 behind the NAT)
            sa.remote, sa.local = addr, (sa.local[0], local_addr[1])
            if local_addr[1] not in self.config.plain_ports:
                sa.floated = True
        self._after(sa, now)

    def _new_responder(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int], now: float) -> None:
        cfg = self.config
        if self._half_open() >= cfg.half_open_limit or self._half_open(addr[0]) >= cfg.half_open_limit_ip:
            self.stats["v1_dropped_half_open_limit"] += 1
            return
        candidates = self.config.peers_at(addr[0], 1)
        if not candidates:
            self.stats["v1_dropped_no_peer_config"] += 1
            return
        if pull_header(data).exchange == Exchange.AGGRESSIVE and not any(p.aggressive for p in candidates):
            # off by default: AM2 would hand anyone the PSK's hash to attack offline (ike/v1/aggressive.py)
            self.stats["v1_dropped_aggressive_not_allowed"] += 1
            log.info("IKEv1 aggressive mode from %s refused: peer %s does not allow it (aggressive = true)",
                     addr[0], candidates[0].name)
            return
        # several peers may share the address (wildcards): the responder chooses by proposal, then by identity
        vcfgs = [v1_config(p, (p.local_addr or local_addr[0], local_addr[1]), addr, cfg.retransmit_timeout,
                           wall_clock=cfg.wall_clock) for p in candidates]
        try:
            session = V1Responder(vcfgs[0], cfg.random, data, now, alternatives=vcfgs[1:])
        except NoProposalChosen as exc:
            self.stats["v1_dropped_no_proposal"] += 1
            log.info("IKEv1 opening from %s refused with NO_PROPOSAL_CHOSEN: %s (accepted here: %s)", addr[0],
                     exc, ", ".join(f"{p.name} {proposal_text(p)}" for p in candidates))
            self._outbox.append(Datagram(refusal_in_clear(data[:8], NotifyType.NO_PROPOSAL_CHOSEN), addr,
                                         local_addr[1], local_addr[1] not in cfg.plain_ports))
            return
        except (ParseError, ValueError) as exc:
            self.stats["v1_dropped_no_proposal"] += 1
            log.info("IKEv1 main mode from %s refused: %s", addr[0], exc)
            return
        peer = self.config.peer(session.config.name)
        local = session.config.local_addr
        sa = _Sa(self._new_id(), peer, session, local, addr, now, False, first_in=data)
        session.ike_id = sa.ike_id
        self._sas[sa.ike_id] = sa
        self._by_cookie[session.cky_i] = sa
        out = session.datagrams_to_send()
        sa.first_out = out[0] if out else b""
        self._outbox.extend(self._datagram(sa, d, now) for d in out)
        self._after(sa, now)

    def _after(self, sa: _Sa, now: float) -> None:
        """After anything happened to ``sa``: float if NAT-D says so, send, map events, notice failure."""
        s = sa.session
        if sa.initiator and not sa.floated and s.natt.floated:
            # RFC 3947 4: the initiator moves to the NAT-T port with main mode's fifth message
            sa.floated = True
            sa.local = (sa.local[0], sa.peer.local_nat_port)
            sa.remote = (sa.remote[0], sa.peer.peer_nat_port)
        for d in s.datagrams_to_send():
            self._outbox.append(self._datagram(sa, d, now))
        while (ev := s.next_event()) is not None:
            self._session_event(sa, ev, now)
        if s.state == "failed" and not sa.closed:
            # the session's reason (retransmit timeout, the peer's NO_PROPOSAL_CHOSEN, an authentication failure)
            self._close(sa, s.last_error or ("retransmit timeout" if sa.state == "CONNECTING" else "failed"))

    def _session_event(self, sa: _Sa, ev: IkeEvent, now: float) -> None:
        if isinstance(ev, Phase1Done) and ev.peer != sa.peer.name:
            sa.peer = self.config.peer(ev.peer)  # the responder chose another peer by the initiator's identity
        s, p = sa.session, sa.peer
        child = p.children[0].name  # one quick mode per peer so far (ike.v1.profile)
        if isinstance(ev, Phase1Done):
            sa.state, sa.established_at = "ESTABLISHED", now
            nat_fake = p.encap and s.natt.nat_local
            self._events.append(IkeSaEstablished(
                sa.ike_id, p.name, int.from_bytes(ev.cookie_i, "big"), int.from_bytes(ev.cookie_r, "big"),
                sa.initiator, sa.local, sa.remote, p.local_id, p.remote_id, proposal_text(p), self._auth(sa),
                s.natt.nat_local, s.natt.nat_remote, nat_fake))  # type: ignore[arg-type]
            if self.config.key_log and s.keys is not None:
                self._events.append(V1KeysDerived(sa.ike_id, p.name, ev.cookie_i, ev.cookie_r, s.keys.enc_key))
            if not sa.initiator:
                self._adopt(sa)
        elif isinstance(ev, ChildSaEstablished):
            # the session agreed on the lifetimes (seconds, kilobytes) and rekey points; esp enforces the bytes
            ev = dataclasses.replace(ev, ike_id=sa.ike_id, child=child, local_addr=sa.local, remote_addr=sa.remote,
                                     encap=s.natt.floated, life_packets=p.children[0].life_packets)
            sa.children[ev.spi_in] = ev
            self._events.append(ev)
        elif isinstance(ev, ChildSaDeleted):
            sa.children.pop(ev.spi_in, None)
            self._events.append(dataclasses.replace(ev, ike_id=sa.ike_id, child=child))
        elif isinstance(ev, ChildSaRekeyed):
            self._events.append(dataclasses.replace(ev, ike_id=sa.ike_id, child=child))
        elif isinstance(ev, IkeSaTerminated):
            self._forget(sa)
            self._events.append(dataclasses.replace(ev, ike_id=sa.ike_id))
        elif isinstance(ev, IkeSaRekeyed):
            self._by_cookie = {k: v for k, v in self._by_cookie.items() if v is not sa}
            self._by_cookie[s.cky_i] = sa
            self._events.append(dataclasses.replace(ev, ike_id=sa.ike_id))
        elif isinstance(ev, InitialContactReceived):  # acted on here: it concerns several SAs
            log.info("IKEv1 %s[%d]: INITIAL-CONTACT from %s", p.name, sa.ike_id, sa.remote[0])
            self._initial_contact(sa, now)
        else:  # DeadPeerDetected and what the core may add: passed on as they are
            self._events.append(ev)

    def _adopt(self, new: _Sa) -> None:
        """A peer's new main mode while we hold an ISAKMP SA with it (how IKEv1 rekeys one): the new SA takes
        over the ESP SAs, so the old one's DELETE (which follows) leaves them alone."""
        for old in list(self._sas.values()):
            if old is not new and not old.closed and old.peer.name == new.peer.name and \
                    old.remote[0] == new.remote[0] and old.children:
                new.session.adopt_children(old.session)
                new.children.update(old.children)
                new.adopted.update(old.children)
                old.children.clear()

    def _initial_contact(self, sa: _Sa, now: float) -> None:
        """RFC 2407 4.6.3.3: the peer holds no other SA with us; ours from before its restart go (silently:
        the peer would not understand a DELETE for them)."""
        for old in list(self._sas.values()):
            if old is not sa and not old.closed and old.peer.name == sa.peer.name and old.remote[0] == sa.remote[0]:
                self.stats["v1_initial_contact_cleared"] += 1
                old.session._terminate("replaced (INITIAL-CONTACT)")
                old.session.state = "closed"
                self._after(old, now)
        for spi in sa.adopted & set(sa.children):  # taken over from an SA of before the restart: stale too
            self.stats["v1_initial_contact_cleared"] += 1
            c = sa.children.pop(spi)
            sa.session.children.pop(spi, None)
            self._events.append(ChildSaDeleted(sa.ike_id, sa.peer.name, c.child, c.spi_in, c.spi_out,
                                               "replaced (INITIAL-CONTACT)"))
        sa.adopted.clear()

    def _forget(self, sa: _Sa) -> None:
        sa.children.clear()
        sa.closed = True
        self._sas.pop(sa.ike_id, None)
        self._by_cookie = {k: v for k, v in self._by_cookie.items() if v is not sa}

    def _close(self, sa: _Sa, reason: str) -> None:
        """Give up an SA the session has not terminated itself (half-open timeout, main mode failed)."""
        if sa.closed:
            return
        sa.session._terminate(reason)
        if sa.session.state not in ("closed", "dead", "expired"):
            sa.session.state = "closed"
        while (ev := sa.session.next_event()) is not None:
            self._session_event(sa, ev, 0.0)
        self._forget(sa)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def _deadlines(self, sa: _Sa) -> list[float]:
        times = [t for t in (sa.session.get_timer(),) if t is not None]
        if not sa.initiator and sa.state == "CONNECTING":
            times.append(sa.created + self.config.half_open_timeout)
        if sa.floated and sa.session.natt.nat_local and sa.peer.keepalive_interval and sa.state == "ESTABLISHED":
            times.append(sa.last_outbound + sa.peer.keepalive_interval)
        return times

    def get_timer(self) -> float | None:
        times = [t for sa in self._sas.values() for t in self._deadlines(sa)]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas.values()):
            if sa.closed:
                continue
            if not sa.initiator and sa.state == "CONNECTING" and now >= sa.created + self.config.half_open_timeout:
                self._close(sa, "half-open timeout")
                continue
            sa.session.handle_timer(now)
            self._register(sa)
            if (sa.floated and sa.session.natt.nat_local and sa.peer.keepalive_interval
                    and sa.state == "ESTABLISHED" and now >= sa.last_outbound + sa.peer.keepalive_interval):
                # RFC 3948 2.3: one 0xFF byte on the NAT-T port, no marker, keeps the NAT's mapping
                self._outbox.append(Datagram(b"\xff", sa.remote, sa.local[1], False))
                sa.last_outbound = now
                self.stats["v1_keepalives"] += 1
            self._after(sa, now)

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    # -- commands ----------------------------------------------------------------------------------------
    def initiate(self, peer: str, now: float, child: str | None = None) -> int:
        """Main mode then quick mode to ``peer``; an ISAKMP SA with it that exists already is reused."""
        pc = self.config.peer(peer)
        if child is not None and child not in {c.name for c in pc.children}:
            raise InvalidStateError(f"peer {peer} has no child {child!r}")
        for sa in self._sas.values():
            if sa.peer.name == peer and not sa.closed:
                return sa.ike_id
        if pc.remote_addr in ANY_ADDRESS:
            raise InvalidStateError(f"peer {peer} has no remote address to initiate to")
        host = pc.remote_addr.split("/")[0]  # type: ignore[union-attr]
        local = (pc.local_addr or "0.0.0.0", pc.local_port)
        remote = (host, pc.remote_port)
        ike_id = self._new_id()
        # INITIAL-CONTACT on our first SA with the peer: it drops what it still holds from our last run
        session = V1Session(v1_config(pc, local, remote, self.config.retransmit_timeout,
                                      wall_clock=self.config.wall_clock, initial_contact=True),
                            self.config.random,
                            ike_id)
        sa = _Sa(ike_id, pc, session, local, remote, now, True)
        self._sas[ike_id] = sa
        self._by_cookie[session.cky_i] = sa
        session.initiate(now)
        self._after(sa, now)
        return ike_id

    def terminate(self, ike_id: int, now: float) -> None:
        """DELETE for each ESP SA and for the ISAKMP SA (RFC 2408 4.8); the SAs go at once (IKEv1 DELETE is not
        acknowledged)."""
        sa = self._sas.get(ike_id)
        if sa is None:
            raise InvalidStateError(f"no IKE_SA with id {ike_id}")
        if sa.session.phase1_done:
            sa.session.close(now)
            self._after(sa, now)
        self._close(sa, "deleted")

    def delete_child(self, spi_in: int, now: float) -> None:
        """DELETE for one ESP SA (our inbound SPI), then ChildSaDeleted."""
        sa = self._holding(spi_in)
        try:
            sa.session.delete_child(spi_in, now)
        except KeyError:
            sa.children.pop(spi_in, None)
        self._after(sa, now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """A new quick mode for the ESP SA: the new pair is installed before the old one is deleted."""
        sa = self._holding(spi_in)
        try:
            sa.session.rekey_child(spi_in, now)
        except (KeyError, IkeError) as exc:
            raise InvalidStateError(f"IKEv1: cannot rekey CHILD_SA {spi_in:08x}: {exc}") from None
        self._after(sa, now)

    def rekey_ike(self, ike_id: int, now: float) -> None:
        """A new main mode beside the ISAKMP SA; it takes over (IkeSaRekeyed) and deletes the old one."""
        sa = self._sas.get(ike_id)
        if sa is None:
            raise InvalidStateError(f"no IKE_SA with id {ike_id}")
        try:
            sa.session.rekey_ike(now)
        except IkeError as exc:
            raise InvalidStateError(f"IKEv1: cannot rekey ISAKMP SA {ike_id}: {exc}") from None
        self._register(sa)
        self._after(sa, now)

    def child_sa_soft_expired(self, spi: int, now: float) -> None:
        """esp's soft limit (bytes or packets): rekey where we ran the quick mode (the side that rekeys, as
        in strongSwan); otherwise the peer rekeys, or the hard limit removes the SA."""
        sa = self._owner(spi)
        if sa is None:
            return
        spi_in = spi if spi in sa.children else next(c.spi_in for c in sa.children.values() if c.spi_out == spi)
        if not sa.children[spi_in].initiator or sa.session.state != "established":
            self.stats["v1_soft_expiry_left_to_peer"] += 1
            return
        try:
            self.rekey_child(spi_in, now)
        except InvalidStateError as exc:
            self.stats["v1_soft_expiry_rekey_refused"] += 1
            log.info("IKEv1 %s[%d]: soft expiry of %08x: %s", sa.peer.name, sa.ike_id, spi_in, exc)

    def list_sas(self) -> list[SaInfo]:
        out = []
        for sa in self._sas.values():
            s, p = sa.session, sa.peer
            kids = tuple(ChildInfo(c.child, c.spi_in, c.spi_out, c.suite, c.esn, "installed",
                                   tuple(str(t) for t in c.local_ts), tuple(str(t) for t in c.remote_ts),
                                   *self._clock(sa, c.spi_in), c.mode, c.encap) for c in sa.children.values())
            out.append(SaInfo(sa.ike_id, p.name, sa.state.lower(), sa.initiator, int.from_bytes(s.cky_i, "big"),
                              int.from_bytes(s.cky_r, "big"), sa.local, sa.remote, str(p.local_id),
                              str(p.remote_id or ""), proposal_text(p), self._auth(sa), s.natt.floated, sa.established_at,
                              None, kids, version=1))
        return out

    @staticmethod
    def _clock(sa: _Sa, spi_in: int) -> tuple[float | None, float | None]:
        """(rekey at, expire at) of an ESP SA, as the session keeps them."""
        clock = sa.session._child_clock.get(spi_in) or [0, 0]
        return clock[0] or None, clock[1] or None
