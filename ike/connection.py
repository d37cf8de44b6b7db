"""The sans-I/O facade: one IKE_SA (and its successors after IKE rekeys) with one peer.

Three drivers, as in aioquic: API calls (``initiate`` via the dispatcher, ``rekey_child``, ``rekey_ike``,
``delete_child``, ``terminate``, ``child_sa_soft_expired``), datagrams (``receive_datagram``) and the timer
(``get_timer`` / ``handle_timer``). Output: ``datagrams_to_send`` and ``next_event``. No socket, no clock, no
randomness of its own (``CoreConfig.random`` and ``CoreConfig.dh_factory`` are injectable).
"""
from __future__ import annotations

import ipaddress
import logging
from collections import Counter, deque
from typing import Callable, NamedTuple

from .constants import ExchangeType, PayloadType, ProtocolId
from .core_config import ChildConfig, CoreConfig, PeerConfig
from .errors import InvalidStateError
from .events import ChildSaDeleted, IkeEvent, IkeSaTerminated
from .exchange import TaskManager
from .message import Header, Message
from .payloads import DeletePayload, NotifyPayload, SaPayload
from .sa import ChildSaState, IkeSa, IkeSaState
from .tasks.base import Task, TaskStatus
from .tasks.cert_post import CertPost
from .tasks.cert_pre import CertPre
from .tasks.child_create import ChildCreate
from .tasks.child_delete import ChildDelete
from .tasks.dpd import Dpd, Informational
from .tasks.ike_auth import IkeAuth
from .tasks.ike_delete import IkeDelete
from .tasks.ike_init import IkeInit
from .tasks.natd import Natd

__all__ = ["Datagram", "IkeConnection"]

log = logging.getLogger("ike.connection")


class Datagram(NamedTuple):
    """An IKE message to send. ``data`` never includes the 4-byte non-ESP marker: the adapter prepends it when
    ``marker`` is true (every port other than 500, RFC 3948/7296 2.23) and strips it on receive."""

    data: bytes
    addr: tuple[str, int]  # remote (host, port)
    local_port: int  # which of our sockets to send from (e.g. 500 or 4500)
    marker: bool


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return True


class Refuse(Task):
    """Answers a request with TEMPORARY_FAILURE (a colliding exchange is in progress)."""

    def process(self, msg: Message) -> TaskStatus:
        from .errors import TemporaryFailureError

        raise TemporaryFailureError("a colliding exchange is in progress")


class IkeConnection:
    """One IKE_SA lineage with one peer. Created by the Dispatcher (which owns SPI routing)."""

    def __init__(self, config: CoreConfig, peer: PeerConfig, ike_id: int, initiator: bool,
                 local_addr: tuple[str, int], remote_addr: tuple[str, int], spi_local: int,
                 spi_remote: int = 0, candidates: list[PeerConfig] | None = None,
                 register_spi: Callable[[int, "IkeConnection"], None] | None = None,
                 unregister_spi: Callable[[int], None] | None = None,
                 stats: "Counter[str] | None" = None,
                 touch: Callable[["IkeConnection"], None] | None = None) -> None:
        self.config = config
        self.stats: Counter[str] = stats if stats is not None else Counter()  # shared with the dispatcher
        self.ike_id = ike_id
        self._events: deque[IkeEvent] = deque()
        self._touch = touch or (lambda conn: None)  # tells the dispatcher this connection has output
        self._out: list[Datagram] = []
        self._register = register_spi or (lambda spi, conn: None)
        self._unregister = unregister_spi or (lambda spi: None)
        spi_i, spi_r = (spi_local, spi_remote) if initiator else (spi_remote, spi_local)
        self.sa = IkeSa(ike_id, config, peer, initiator, spi_i, spi_r, local_addr, remote_addr, self._emit)
        if candidates:
            self.sa.scratch["candidates"] = candidates
        self.tm = self._manager(self.sa)
        self.old: list[tuple[IkeSa, TaskManager]] = []  # rekeyed IKE_SAs awaiting their delete
        self.created = 0.0
        #: how long a responder IKE_SA may stay half-open; the dispatcher shortens it under load (RFC 8019 4.1)
        self.half_open_timeout = config.half_open_timeout
        self.closed = False
        self.half_open_key: tuple[str, int, int] | None = None  # set by the dispatcher for responders
        self.init_key: tuple[str, int, int] | None = None
        self.init_digest = b""
        self._pending_children: list[ChildConfig] = []

    # -- plumbing ----------------------------------------------------------------------------------------
    def _manager(self, sa: IkeSa) -> TaskManager:
        def send(frags: list[bytes]) -> None:
            self._send(sa, frags)

        def terminate(reason: str, notify: int | None) -> None:
            self._terminated(sa, reason, notify)

        def passive(msg: Message) -> list[Task]:
            return self._passive(sa, msg)

        return TaskManager(sa, send, terminate, passive, self.stats)

    def _emit(self, event: IkeEvent) -> None:
        self._events.append(event)
        self._touch(self)

    def _send(self, sa: IkeSa, frags: list[bytes]) -> None:
        self._touch(self)
        sa.last_outbound = sa.now
        port = sa.local_addr[1]
        for f in frags:
            self._out.append(Datagram(f, sa.remote_addr, port, port not in sa.config.plain_ports))

    def _passive(self, sa: IkeSa, msg: Message) -> list[Task]:
        from .tasks.child_rekey import ChildRekey
        from .tasks.ike_rekey import IkeRekey

        if msg.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
            if sa.state != IkeSaState.CREATED or sa.initiator:
                from .errors import InvalidSyntaxError

                raise InvalidSyntaxError(f"{ExchangeType(msg.exchange).name} request on an IKE_SA that is "
                                         f"{sa.state.value}")
            return [IkeInit(sa, False), Natd(sa, False), CertPre(sa, False), IkeAuth(sa, False),
                    CertPost(sa, False), ChildCreate(sa, False)]
        if sa.state not in (IkeSaState.ESTABLISHED, IkeSaState.REKEYING, IkeSaState.DELETING):
            from .errors import InvalidSyntaxError

            raise InvalidSyntaxError("request before the IKE_SA is established")
        old = self._parked_by(sa)
        if old is not None and not any(d.protocol == ProtocolId.IKE for d in msg.all(DeletePayload)):
            # the peer uses the new IKE_SA of its rekey, parked here while ours runs: for the peer that rekey
            # completed and won (it would delete it otherwise, RFC 7296 2.8.2), so it is the successor now,
            # with the CHILD_SAs this request is about; ours, if it completes, is redundant (adopt_rekeyed)
            self.rekey_failed(old)
        if msg.exchange == ExchangeType.CREATE_CHILD_SA:
            sa_p = msg.get(SaPayload)
            ike_rekey = sa_p is not None and bool(sa_p.proposals) and sa_p.proposals[0].protocol == ProtocolId.IKE
            if sa.state != IkeSaState.ESTABLISHED or sa is not self.sa:
                return [Refuse(sa, False)]  # rekeyed or closing: "try again later" (RFC 7296 2.25)
            if ike_rekey:
                if "rekey_pending" in sa.scratch:
                    return [Refuse(sa, False)]
                return [IkeRekey(sa, False, self)]  # a colliding rekey is resolved by nonces (2.8.2)
            if any(isinstance(t, IkeRekey) for t in self.tm.active):
                return [Refuse(sa, False)]  # no CHILD_SA changes while we rekey the IKE_SA
            if any(n.type == 16393 for n in msg.all(NotifyPayload)):  # REKEY_SA
                return [ChildRekey(sa, False)]
            return [ChildCreate(sa, False)]
        deletes = msg.all(DeletePayload)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            return [IkeDelete(sa, False)]
        if deletes:
            return [ChildDelete(sa, False)]
        return [Informational(sa, False)]

    def _terminated(self, sa: IkeSa, reason: str, notify: int | None) -> None:
        if sa.state == IkeSaState.DESTROYED:
            return
        rekeyed = sa.scratch.get("rekeyed_into") is not None
        sa.state = IkeSaState.DESTROYED
        for spi in (sa.spi_i, sa.spi_r):
            if spi:
                self._unregister(spi)
        if rekeyed:
            # exchanges still running on the replaced IKE_SA end with it; CHILD_SA work continues on the new one
            from .tasks.base import ChildTask

            for s, t in self.old:
                if s is sa:
                    t.request = None
                    t.retransmit_at = None
                    for task in t.active:
                        if isinstance(task, ChildDelete) and task.initiator:
                            # the peer may not have seen it: say it again on the new IKE_SA
                            self.tm.queue.insert(0, [ChildDelete(self.sa, True, task.children, task.reason)])
                        else:
                            task.failed("IKE_SA replaced", None)
                    t.active = []
                    for group in t.queue:
                        kids: list[Task] = [x for x in group if isinstance(x, ChildTask)]
                        if kids:
                            self.tm.queue.append(kids)
                    t.queue = []
            self.old = [(s, t) for s, t in self.old if s is not sa]
            for s, t in self.old:
                if (s.scratch.get("peer_rekey_of") == (sa.spi_i, sa.spi_r) and s.state == IkeSaState.REKEYING
                        and t.request is None and not t.queue):
                    # a redundant IKE_SA from the peer's colliding rekey of the one just gone: the peer
                    # deletes it once its exchange completes, which it cannot any more (it ran on the SA now
                    # gone, e.g. our answer was lost); we say it (silently gone if the peer never had it)
                    t.queue_tasks([IkeDelete(s, True)], sa.now)
            if self.sa.state == IkeSaState.ESTABLISHED:
                self.tm.initiate(sa.now)
            return
        for child in list(sa.children.values()):
            sa.children.pop(child.spi_in, None)
            self._emit(ChildSaDeleted(self.ike_id, sa.peer.name, child.name, child.spi_in, child.spi_out,
                                               "ike_sa terminated"))
        # debug only: the daemon logs the IkeSaTerminated event (one line per event, charon-like)
        log.debug("IKE_SA %s[%d] terminated: %s", sa.peer.name, self.ike_id, reason)
        self._emit(IkeSaTerminated(self.ike_id, sa.peer.name, sa.spi_i, sa.spi_r, reason, notify))
        if sa is self.sa:
            self.closed = True

    def _after(self, sa: IkeSa) -> None:
        deleted = sa.scratch.pop("deleted", None)
        if deleted is not None:
            if deleted == "deleted by peer" and "rekey_pending" in sa.scratch:
                # the peer's rekey of this IKE_SA completed (parked while ours ran) and the peer now deletes
                # the old one: it never saw our request (lost), so no collision on its side; its new IKE_SA
                # is the successor (RFC 7296 2.8.2), ours is abandoned with the old IKE_SA
                self.rekey_failed(sa)
            elif deleted == "deleted by peer" and (old := self._parked_by(sa)) is not None:
                # the peer deletes the new IKE_SA of its own rekey, parked here: it lost the collision
                # (2.8.2), so ours is the successor once our exchange completes; nothing else ends
                old.scratch.pop("rekey_pending", None)
                self.old = [(s, t) for s, t in self.old if s is not sa]
                sa.state = IkeSaState.DESTROYED
                self._unregister(sa.spi_local)
                return
            self._terminated(sa, deleted, None)

    def _parked_by(self, sa: IkeSa) -> IkeSa | None:
        """The IKE_SA whose rekey by the peer created ``sa``, parked while our own rekey of it runs."""
        for s in [self.sa, *(o for o, _ in self.old)]:
            pending = s.scratch.get("rekey_pending")
            if pending is not None and pending[0] is sa:
                return s
        return None

    # -- initiator start -----------------------------------------------------------------------------------
    def start(self, now: float, children: list[ChildConfig]) -> None:
        sa = self.sa
        self.created = now
        first = children[0] if children else None
        tasks: list[Task] = [IkeInit(sa, True), Natd(sa, True), CertPre(sa, True), IkeAuth(sa, True),
                             CertPost(sa, True)]
        if first is not None:
            tasks.append(ChildCreate(sa, True, first))
        self._register(sa.spi_local, self)
        self.tm.queue_tasks(tasks, now)
        for c in children[1:]:
            self.tm.queue.append([ChildCreate(sa, True, c)])

    # -- drivers -------------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int], now: float,
                         header: Header | None = None) -> None:
        """One datagram for this IKE_SA (the dispatcher passes the header it already parsed). Bad input is
        dropped or answered as the protocol says; only :class:`ike.errors.ParseError` for an unparsable header
        can escape (the dispatcher counts it)."""
        if header is None:
            from .message import pull_header

            header = pull_header(data)
        sa, tm = self._route(header)
        if sa is None or tm is None:
            return
        if not self.created:
            self.created = now
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            sa.remote_addr = addr
            sa.local_addr = local_addr
        elif local_addr[1] not in sa.config.plain_ports or sa.natt:
            if header.next_payload in (PayloadType.SK, PayloadType.SKF) or header.exchange != ExchangeType.IKE_SA_INIT:
                sa.natt = sa.natt or local_addr[1] != sa.peer.local_port
                sa.remote_addr = addr
                if not _unspecified(local_addr[0]):
                    sa.local_addr = local_addr
        if not _unspecified(local_addr[0]) and sa.local_addr[1] == local_addr[1] and _unspecified(sa.local_addr[0]):
            sa.local_addr = (local_addr[0], sa.local_addr[1])
        tm.receive(data, header, now)
        self._after(sa)
        if sa is self.sa and sa.state == IkeSaState.ESTABLISHED:
            tm.initiate(now)

    def _route(self, header: Header) -> tuple[IkeSa | None, TaskManager | None]:
        for sa, tm in [(self.sa, self.tm), *self.old]:
            local = header.spi_r if header.from_initiator else header.spi_i
            mine = sa.spi_r if sa.initiator is False else sa.spi_i
            if local == mine or (header.exchange == ExchangeType.IKE_SA_INIT and header.spi_i == sa.spi_i):
                return sa, tm
        return None, None

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        sa = self.sa
        times = [self.tm.get_timer()] + [t.get_timer() for _, t in self.old]
        if sa.state in (IkeSaState.CREATED, IkeSaState.CONNECTING) and not sa.initiator:
            times.append(self.created + self.half_open_timeout)
        if sa.state == IkeSaState.ESTABLISHED:
            times.append(sa.rekey_at)
            for c in sa.children.values():
                times.extend([c.rekey_at if c.state == ChildSaState.INSTALLED else None, c.expire_at])
            if sa.peer.dpd_delay:
                times.append(sa.last_inbound + sa.peer.dpd_delay)
            if sa.nat_local and sa.natt and sa.peer.keepalive_interval:
                times.append(sa.last_outbound + sa.peer.keepalive_interval)
        valid = [t for t in times if t is not None]
        return min(valid) if valid else None

    def handle_timer(self, now: float) -> None:
        sa = self.sa
        sa.now = now
        for osa, otm in list(self.old):
            otm.handle_timer(now)
        self.tm.handle_timer(now)
        if sa.state == IkeSaState.DESTROYED:
            return
        if (sa.state in (IkeSaState.CREATED, IkeSaState.CONNECTING) and not sa.initiator
                and now >= self.created + self.half_open_timeout):
            self._terminated(sa, "half-open timeout", None)
            return
        if sa.state != IkeSaState.ESTABLISHED:
            return
        if sa.rekey_at is not None and now >= sa.rekey_at:
            sa.rekey_at = None
            self.rekey_ike(now)
        for c in list(sa.children.values()):
            if c.expire_at is not None and now >= c.expire_at:
                c.expire_at = None
                self._queue([ChildDelete(sa, True, [c], "expired")], now)
            elif c.rekey_at is not None and now >= c.rekey_at and c.state == ChildSaState.INSTALLED:
                c.rekey_at = None
                self.rekey_child(c.spi_in, now)
        if (sa.nat_local and sa.natt and sa.peer.keepalive_interval
                and now >= sa.last_outbound + sa.peer.keepalive_interval):
            # a one-byte 0xFF NAT-keepalive, without the non-ESP marker (RFC 3948 2.3)
            sa.last_outbound = now
            self._touch(self)
            self._out.append(Datagram(b"\xff", sa.remote_addr, sa.local_addr[1], False))
        if sa.peer.dpd_delay and now >= sa.last_inbound + sa.peer.dpd_delay and not self.tm.busy:
            sa.last_inbound = now
            self._queue([Dpd(sa, True)], now)

    def _queue(self, tasks: list[Task], now: float) -> None:
        self.tm.queue_tasks(tasks, now)

    # -- commands ------------------------------------------------------------------------------------------
    def _need_established(self) -> IkeSa:
        if self.sa.state not in (IkeSaState.ESTABLISHED,):
            raise InvalidStateError(f"IKE_SA {self.ike_id} is {self.sa.state.value}")
        return self.sa

    def create_child(self, child: ChildConfig, now: float) -> None:
        sa = self._need_established()
        self._queue([ChildCreate(sa, True, child)], now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        from .tasks.child_rekey import ChildRekey

        sa = self._need_established()
        child = sa.children.get(spi_in)
        if child is None:
            raise InvalidStateError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        if child.state != ChildSaState.INSTALLED:
            return
        child.state = ChildSaState.REKEYING
        self._queue([ChildRekey(sa, True, child)], now)

    def rekey_ike(self, now: float) -> None:
        from .tasks.ike_rekey import IkeRekey

        sa = self._need_established()
        self._queue([IkeRekey(sa, True, self)], now)

    def delete_child(self, spi_in: int, now: float) -> None:
        sa = self._need_established()
        child = sa.children.get(spi_in)
        if child is None:
            raise InvalidStateError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        doomed = [child]
        if child.rekeyed_by is not None and child.rekeyed_by.spi_in in sa.children:
            doomed.append(child.rekeyed_by)  # a successor the peer created but has not switched to yet
        self._queue([ChildDelete(sa, True, doomed, "deleted")], now)

    def terminate(self, now: float) -> None:
        sa = self.sa
        if sa.state in (IkeSaState.CREATED, IkeSaState.CONNECTING):
            self._terminated(sa, "deleted", None)
            return
        if sa.state == IkeSaState.DESTROYED:
            return
        self.tm.queue.clear()
        self._queue([IkeDelete(sa, True)], now)

    def abandon(self, reason: str) -> None:
        """Forget this IKE_SA (and its CHILD_SAs) without any exchange."""
        for osa, _ in list(self.old):
            self._terminated(osa, reason, None)
        self._terminated(self.sa, reason, None)

    def child_sa_soft_expired(self, spi: int, now: float) -> None:
        sa = self.sa
        child = sa.children.get(spi) or sa.child_by_out(spi)
        if child is not None and child.state == ChildSaState.INSTALLED:
            self.rekey_child(child.spi_in, now)

    def adopt_rekeyed(self, old: IkeSa, initiator: bool, spi_i: int, spi_r: int, proposal, keys, ni: bytes,
                      nr: bytes) -> IkeSa:  # type: ignore[no-untyped-def]
        """Called by IkeRekey once a rekey exchange completed: the new IKE_SA takes over the children and the
        old one waits for its Delete. Simultaneous rekeys (RFC 7296 2.8.2): the peer's completes first while
        ours runs, so it is parked; when ours completes, the new IKE_SA whose exchange holds the lowest nonce
        is redundant and is deleted by its initiator, and the winner's initiator deletes the old one."""
        from .tasks.ike_delete import IkeDelete as _Del

        new = IkeSa(self.ike_id, self.config, old.peer, initiator, spi_i, spi_r, old.local_addr, old.remote_addr,
                    self._emit)
        new.state = IkeSaState.ESTABLISHED
        new.proposal, new.keys, new.nonce_i, new.nonce_r = proposal, keys, ni, nr
        new.nat_local, new.nat_remote, new.natt = old.nat_local, old.nat_remote, old.natt
        new.peer_fragmentation, new.peer_hashes = old.peer_fragmentation, old.peer_hashes
        new.local_id, new.remote_id, new.auth_method = old.local_id, old.remote_id, old.auth_method
        new.established_at = new.last_inbound = new.now = old.now
        if not initiator:
            new.scratch["peer_rekey_of"] = (old.spi_i, old.spi_r)  # SPIs only: no chain of old IKE_SAs kept
        if old.peer.rekey_time:
            new.rekey_at = old.now + old.peer.rekey_time * (0.9 + 0.1 * int.from_bytes(old.random(2), "big") / 65535)
        from .tasks.ike_init import install_keys

        install_keys(new)
        new_tm = self._manager(new)
        self._register(new.spi_local, self)
        if initiator and old.scratch.get("rekeyed_into") is not None:
            # the peer's rekey of ``old`` was adopted while ours ran (its new IKE_SA came into use): ours is
            # redundant, we delete it
            new.scratch["rekeyed_into"] = old.live()
            new.state = IkeSaState.REKEYING
            self.old.append((new, new_tm))
            new_tm.queue.insert(0, [_Del(new, True)])
            new_tm.initiate(old.now)
            return new
        if not initiator and self._rekeying(old):
            old.scratch["rekey_pending"] = (new, new_tm)  # collision: wait for our own exchange
            self.old.append((new, new_tm))
            return new
        pending = old.scratch.pop("rekey_pending", None)
        if pending is None:
            self._switch(old, new, new_tm)
            if initiator:
                old.scratch.setdefault("front_tasks", []).append(_Del(old, True))
            return new
        theirs, theirs_tm = pending
        self.old = [(s, t) for s, t in self.old if s is not theirs]
        ours, ours_tm = new, new_tm
        if min(ours.nonce_i, ours.nonce_r) < min(theirs.nonce_i, theirs.nonce_r):
            # ours is redundant: we delete it; the peer (winner's initiator) deletes the old IKE_SA
            self._switch(old, theirs, theirs_tm)
            ours.scratch["rekeyed_into"] = theirs
            ours.state = IkeSaState.REKEYING
            self.old.append((ours, ours_tm))
            ours_tm.queue.insert(0, [_Del(ours, True)])
            ours_tm.initiate(old.now)
        else:
            # theirs is redundant (the peer deletes it): ours wins and we delete the old IKE_SA
            self._switch(old, ours, ours_tm)
            theirs.scratch["rekeyed_into"] = ours
            theirs.state = IkeSaState.REKEYING
            self.old.append((theirs, theirs_tm))
            old.scratch.setdefault("front_tasks", []).append(_Del(old, True))
        return new

    def rekey_failed(self, old: IkeSa) -> None:
        """Our IKE rekey was refused; if the peer's colliding rekey completed meanwhile, it is the successor."""
        pending = old.scratch.pop("rekey_pending", None)
        if pending is not None:
            theirs, theirs_tm = pending
            self.old = [(s, t) for s, t in self.old if s is not theirs]
            self._switch(old, theirs, theirs_tm)

    def _rekeying(self, sa: IkeSa) -> bool:
        from .tasks.ike_rekey import IkeRekey

        tm = self.tm if sa is self.sa else next((t for s, t in self.old if s is sa), None)
        return tm is not None and any(isinstance(t, IkeRekey) and t.initiator for t in tm.active)

    def _switch(self, old: IkeSa, new: IkeSa, new_tm: TaskManager) -> None:
        """Make ``new`` the current IKE_SA: children, queued work and timers move; old waits for its Delete."""
        from .events import IkeSaRekeyed
        from .proposal import proposal_name
        from .tasks.base import ChildTask
        from .tasks.ike_delete import IkeDelete as _Del
        from .tasks.ike_rekey import IkeRekey as _Rekey

        assert new.proposal is not None
        new.children, old.children = old.children, {}
        old.scratch["rekeyed_into"] = new
        old.state = IkeSaState.REKEYING
        old_tm = self.tm if old is self.sa else next(t for s, t in self.old if s is old)
        if old is self.sa:
            self.old.append((old, old_tm))
        self.sa, self.tm = new, new_tm
        # queued work moves to the new IKE_SA: CHILD_SA tasks follow by themselves, IKE_SA-level ones are remade
        for group in old_tm.queue:
            moved: list[Task] = []
            for t in group:
                if isinstance(t, ChildTask):
                    moved.append(t)
                elif isinstance(t, _Del):
                    moved.append(_Del(new, True))
                elif isinstance(t, Dpd):
                    moved.append(Dpd(new, True))
                elif not isinstance(t, _Rekey):
                    moved.append(t)
            if moved:
                new_tm.queue.append(moved)
        old_tm.queue = []

        def redirect(tasks: list[Task], now: float) -> None:
            for t in reversed(tasks):
                if not isinstance(t, IkeDelete):
                    new_tm.queue.insert(0, [t])
                else:
                    old_tm.queue.insert(0, [t])
            new_tm.initiate(now)

        old_tm.redirect = redirect
        self._emit(IkeSaRekeyed(self.ike_id, old.peer.name, old.spi_i, old.spi_r, new.spi_i, new.spi_r,
                                         proposal_name(new.proposal)))

    def spis(self) -> list[int]:
        return [s.spi_local for s in [self.sa] + [o for o, _ in self.old]]
