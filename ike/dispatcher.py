"""Routes datagrams to IKE_SAs by SPI, creates responder IKE_SAs, and protects the responder's state.

As aioquic's server runs its stateless retry check before allocating a connection, the dispatcher answers an
IKE_SA_INIT with a COOKIE (RFC 7296 2.6) once half-open IKE_SAs pass ``CoreConfig.cookie_threshold`` (or a
source's pass ``cookie_threshold_ip``) and keeps no state for it.

Half-open IKE_SAs are what a flood of IKE_SA_INITs costs us, so they are accounted per source, as RFC 8019
recommends (section 4, "Defense Measures While the IKE SA Is Being Created"):

- Rate limiting per address and per prefix (4.2): one address holds at most ``half_open_limit_ip`` half-open
  IKE_SAs, one prefix (/24 IPv4, /64 IPv6, :data:`PREFIX_V4`/:data:`PREFIX_V6`) at most
  1/:data:`PREFIX_SHARE` of ``half_open_limit``; beyond that its requests are dropped before any work.
- The stateless cookie (4.3) stays on under load, and it is what makes a source's address count: only a
  request that returned our COOKIE (so its address is routable to the sender) may take a place from others.
- Fairness when the global ``half_open_limit`` is reached: a cookie-proven request from a source holding
  fewer half-open IKE_SAs than the heaviest prefix evicts the oldest half-open IKE_SA of that prefix. An
  attacker answering cookies from many addresses therefore only competes with itself, and a legitimate peer
  (one half-open IKE_SA at a time) always gets in: a peer's SA is only evicted for a source that holds at
  least two fewer, which a peer with one SA never meets.
- Retention of half-open SAs (4.1): while more than half of ``half_open_limit`` is in use, new half-open
  IKE_SAs are kept 1/:data:`LOAD_TIMEOUT_DIVISOR` of ``half_open_timeout``.
- Hash-and-URL certificates (4.7) are never fetched; puzzles (4.4) are not implemented.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections import Counter, deque
from dataclasses import dataclass

from .connection import Datagram, IkeConnection
from .constants import HEADER_LEN, ExchangeType, NotifyType
from .core_config import CoreConfig, PeerConfig
from .errors import InvalidStateError, ProtocolError
from .events import IkeEvent, IkeSaEstablished
from .message import Message, pull_chain, pull_header
from .payloads import NoncePayload, NotifyPayload
from .proposal import proposal_name
from .sa import IkeSaState

__all__ = ["Dispatcher", "SaInfo", "ChildInfo", "source_prefix"]

log = logging.getLogger("ike.dispatcher")

#: Prefix lengths that count as one source for half-open accounting (RFC 8019 4.2).
PREFIX_V4 = 24
PREFIX_V6 = 64
#: One prefix may hold at most ``half_open_limit // PREFIX_SHARE`` half-open IKE_SAs.
PREFIX_SHARE = 4
#: Under load (over half the half-open limit in use) new half-open IKE_SAs live ``half_open_timeout`` / this.
LOAD_TIMEOUT_DIVISOR = 3


def source_prefix(host: str) -> str:
    """The prefix ``host`` is accounted under (itself if it is not an IP address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = PREFIX_V4 if ip.version == 4 else PREFIX_V6
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@dataclass(frozen=True)
class ChildInfo:
    name: str
    spi_in: int
    spi_out: int
    suite: str
    esn: bool
    state: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    rekey_at: float | None
    expire_at: float | None
    mode: str = "tunnel"
    encap: bool = False
    installed_at: float = 0.0


@dataclass(frozen=True)
class SaInfo:
    ike_id: int
    peer: str
    state: str
    initiator: bool
    spi_i: int
    spi_r: int
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    local_id: str
    remote_id: str
    proposal: str
    auth_method: str
    nat: bool
    established_at: float | None
    rekey_at: float | None
    children: tuple[ChildInfo, ...]
    version: int = 2  # 1: an ISAKMP SA (ike.v1.manager); spi_i/spi_r are then its cookies


class Dispatcher:
    """All IKE_SAs of one daemon. Same drivers as :class:`IkeConnection`, plus routing and DoS protection."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._by_spi: dict[int, IkeConnection] = {}
        self._half_open: dict[tuple[str, int, int], IkeConnection] = {}  # (host, port, spi_i)
        # every responder IKE_SA by (host, port, SPIi): a retransmitted IKE_SA_INIT finds its SA
        self._by_init: dict[tuple[str, int, int], IkeConnection] = {}
        self._half_open_ip: Counter[str] = Counter()
        # half-open IKE_SAs per source prefix, oldest first: who holds the table, and whom to evict
        self._half_open_prefix: dict[str, dict[tuple[str, int, int], IkeConnection]] = {}
        self._conns: dict[int, IkeConnection] = {}
        self._next_id = 1
        self._events: deque[IkeEvent] = deque()
        self._outbox: list[Datagram] = []
        self._dirty: set[IkeConnection] = set()  # touched since the last _collect
        self._deadlines: dict[IkeConnection, float] = {}
        self._secret = config.random(32)
        self.stats: Counter[str] = Counter()
        self._current: IkeConnection | None = None  # the IKE_SA a datagram is being handled by

    # -- helpers -----------------------------------------------------------------------------------------
    def _new_spi(self) -> int:
        while True:
            spi = int.from_bytes(self.config.random(8), "big")
            if spi and spi not in self._by_spi:
                return spi

    def _register(self, spi: int, conn: IkeConnection) -> None:
        self._by_spi[spi] = conn

    def _unregister(self, spi: int) -> None:
        self._by_spi.pop(spi, None)

    def _new_conn(self, peer: PeerConfig, initiator: bool, local: tuple[str, int], remote: tuple[str, int],
                  spi_remote: int = 0, candidates: list[PeerConfig] | None = None) -> IkeConnection:
        ike_id = self._next_id
        self._next_id += 1
        conn = IkeConnection(self.config, peer, ike_id, initiator, local, remote, self._new_spi(), spi_remote,
                             candidates, self._register, self._unregister, self.stats, self._dirty.add)
        self._conns[ike_id] = conn
        return conn

    def _cookie(self, nonce: bytes, addr: tuple[str, int], spi_i: int) -> bytes:
        return b"\x00\x00" + hmac.new(self._secret, nonce + addr[0].encode() + spi_i.to_bytes(8, "big"),
                                     hashlib.sha256).digest()[:16]

    def half_open(self) -> int:
        """Responder IKE_SAs that have not completed IKE_AUTH yet."""
        return len(self._half_open)

    # -- drivers -----------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int],
                         now: float) -> None:
        """One UDP payload (non-ESP marker already stripped) from ``addr`` to ``local_addr``. Never raises for
        bad input: malformed datagrams are counted in ``stats`` and dropped."""
        self._current = None
        try:
            self._receive(bytes(data), addr, local_addr, now)
        except ProtocolError as exc:
            self.stats["dropped_" + type(exc).__name__] += 1
            log.debug("dropped datagram from %s: %s", addr, exc.reason)
        except Exception as exc:  # noqa: BLE001 - the last resort: a bug must not become a peer's weapon
            self._internal_error(exc, addr)
        self._current = None
        self._collect()

    def _internal_error(self, exc: Exception, addr: tuple[str, int]) -> None:
        """An exception no handler turned into a protocol answer: a bug, found by a peer's datagram. It is a
        counted drop with one log line (no traceback per retransmit), and the IKE_SA it happened in is
        forgotten, since its state is unknown: the peer's retransmits then find no SPI and are dropped."""
        self.stats["dropped_internal_error"] += 1
        conn = self._current
        log.warning("internal error on a datagram from %s (IKE_SA %s), dropped: %s: %s", addr[0],
                    conn.ike_id if conn is not None else "-", type(exc).__name__, exc)
        log.debug("internal error details", exc_info=exc)
        if conn is not None and not conn.closed:
            self._dirty.add(conn)
            try:
                conn.abandon(f"internal error ({type(exc).__name__})")
            except Exception:  # noqa: BLE001 - its state is what broke; unroute it by hand
                conn.closed = True

    def _receive(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int], now: float) -> None:
        if len(data) > self.config.max_message_size:
            self.stats["dropped_oversized"] += 1
            return
        h = pull_header(data)
        self.stats["received"] += 1
        if h.exchange == ExchangeType.IKE_SA_INIT and not h.is_response and h.spi_r == 0:
            if not h.from_initiator:
                self.stats["dropped_bad_flags"] += 1
                return
            key = (addr[0], addr[1], h.spi_i)
            conn = self._by_init.get(key)
            if conn is not None and conn.init_digest != hashlib.sha256(data).digest():
                conn = None  # same SPI and address but another request: a restarted peer
                self._by_init.pop(key, None)
            if conn is None:
                conn = self._new_responder(data, h, addr, local_addr, now)
                if conn is None:
                    return
            self._dirty.add(conn)
            self._current = conn
            conn.receive_datagram(data, addr, local_addr, now, h)
            return
        local_spi = h.spi_r if h.from_initiator else h.spi_i
        conn = self._by_spi.get(local_spi)
        if conn is None:
            self.stats["dropped_unknown_spi"] += 1
            return
        self._dirty.add(conn)
        self._current = conn
        conn.receive_datagram(data, addr, local_addr, now, h)

    def _new_responder(self, data: bytes, h, addr, local_addr, now) -> IkeConnection | None:  # type: ignore[no-untyped-def]
        cfg = self.config
        half = self.half_open()
        half_ip = self._half_open_ip[addr[0]]
        prefix = source_prefix(addr[0])
        half_prefix = len(self._half_open_prefix.get(prefix, ()))
        if half_ip >= cfg.half_open_limit_ip or half_prefix >= max(cfg.half_open_limit_ip,
                                                                    cfg.half_open_limit // PREFIX_SHARE):
            self.stats["dropped_half_open_source_limit"] += 1
            return None
        cookies = half >= cfg.cookie_threshold or half_ip >= cfg.cookie_threshold_ip
        if half >= cfg.half_open_limit and not (cookies and self._heavier_than(half_prefix)):
            self.stats["dropped_half_open_limit"] += 1  # without a proven address no place is taken
            return None
        payloads, _ = pull_chain(h.next_payload, data, HEADER_LEN)
        if cookies:
            nonce = next((p for p in payloads if isinstance(p, NoncePayload)), None)
            if nonce is None:
                self.stats["dropped_no_nonce"] += 1
                return None
            expect = self._cookie(nonce.data, addr, h.spi_i)
            got = payloads[0] if payloads and isinstance(payloads[0], NotifyPayload) else None
            if got is None or got.type != NotifyType.COOKIE or not hmac.compare_digest(got.data, expect):
                resp = Message(ExchangeType.IKE_SA_INIT, h.spi_i, 0, 0, True, False,
                               [NotifyPayload(NotifyType.COOKIE, expect)])
                self._outbox.append(Datagram(resp.encode_plain(), addr, local_addr[1],
                                          local_addr[1] not in self.config.plain_ports))
                self.stats["cookies_sent"] += 1
                return None
        candidates = self.config.peers_at(addr[0], 2)
        if not candidates:
            self.stats["dropped_no_peer_config"] += 1
            resp = Message(ExchangeType.IKE_SA_INIT, h.spi_i, 0, 0, True, False,
                           [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)])
            self._outbox.append(Datagram(resp.encode_plain(), addr, local_addr[1],
                                          local_addr[1] not in self.config.plain_ports))
            return None
        if half >= cfg.half_open_limit:
            self._evict_heaviest()
        conn = self._new_conn(candidates[0], False, local_addr, addr, h.spi_i, candidates)
        conn.created = now
        if half >= cfg.half_open_limit // 2:
            conn.half_open_timeout = cfg.half_open_timeout / LOAD_TIMEOUT_DIVISOR
        self._register(conn.sa.spi_r, conn)
        key = (addr[0], addr[1], h.spi_i)
        self._half_open[key] = conn
        self._half_open_ip[addr[0]] += 1
        self._half_open_prefix.setdefault(prefix, {})[key] = conn
        self._by_init[key] = conn
        conn.half_open_key = conn.init_key = key
        conn.init_digest = hashlib.sha256(data).digest()
        return conn

    def _heaviest(self) -> tuple[str, int]:
        prefix = max(self._half_open_prefix, key=lambda p: len(self._half_open_prefix[p]))
        return prefix, len(self._half_open_prefix[prefix])

    def _heavier_than(self, count: int) -> bool:
        """Does some prefix hold at least two half-open IKE_SAs more than a source holding ``count``?"""
        return bool(self._half_open_prefix) and self._heaviest()[1] >= count + 2

    def _evict_heaviest(self) -> None:
        """Make room for a cookie-proven source: forget the oldest half-open IKE_SA of the heaviest prefix."""
        prefix, _ = self._heaviest()
        victim = next(iter(self._half_open_prefix[prefix].values()))
        self.stats["half_open_evicted"] += 1
        victim.abandon("half-open IKE_SA evicted (half-open limit, source holds the most)")
        self._dirty.add(victim)
        self._drop_half_open(victim)

    def _collect(self) -> None:
        """Move events and datagrams of the connections touched since the last call; forget closed ones."""
        while self._dirty:
            conn = self._dirty.pop()
            while (e := conn.next_event()) is not None:
                self._events.append(e)
                if isinstance(e, IkeSaEstablished) and conn.sa.scratch.pop("initial_contact", False):
                    self._initial_contact(conn)
            self._outbox.extend(conn.datagrams_to_send(0.0))
            if conn.sa.state not in (IkeSaState.CREATED, IkeSaState.CONNECTING) or conn.closed:
                self._drop_half_open(conn)
            if conn.closed:
                if conn.init_key is not None and self._by_init.get(conn.init_key) is conn:
                    del self._by_init[conn.init_key]
                for spi in conn.spis():
                    if self._by_spi.get(spi) is conn:
                        del self._by_spi[spi]
                self._conns.pop(conn.ike_id, None)
                self._deadlines.pop(conn, None)
                continue
            t = conn.get_timer()
            if t is None:
                self._deadlines.pop(conn, None)
            else:
                self._deadlines[conn] = t

    def _initial_contact(self, new: IkeConnection) -> None:
        """The peer says it has no other IKE_SA with us (it restarted): drop ours without sending a Delete
        (RFC 7296 2.4), so stale CHILD_SAs stop capturing traffic."""
        for conn in list(self._conns.values()):
            sa = conn.sa
            if (conn is not new and not conn.closed and sa.peer.name == new.sa.peer.name
                    and sa.remote_id == new.sa.remote_id
                    and sa.state in (IkeSaState.ESTABLISHED, IkeSaState.REKEYING)):
                conn.abandon("replaced (peer sent INITIAL_CONTACT)")
                self._dirty.add(conn)

    def _drop_half_open(self, conn: IkeConnection) -> None:
        key = getattr(conn, "half_open_key", None)
        if key is not None:
            if self._half_open.pop(key, None) is not None:
                self._half_open_ip[key[0]] -= 1
                if self._half_open_ip[key[0]] <= 0:
                    del self._half_open_ip[key[0]]
                prefix = source_prefix(key[0])
                held = self._half_open_prefix.get(prefix)
                if held is not None:
                    held.pop(key, None)
                    if not held:
                        del self._half_open_prefix[prefix]
            conn.half_open_key = None

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        self._collect()
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        self._collect()
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        self._collect()
        for conn, t in list(self._deadlines.items()):
            if t <= now:
                self._dirty.add(conn)
                conn.handle_timer(now)
        self._collect()

    def next_event(self) -> IkeEvent | None:
        self._collect()
        return self._events.popleft() if self._events else None

    # -- commands ----------------------------------------------------------------------------------------
    def _conn(self, ike_id: int) -> IkeConnection:
        conn = self._conns.get(ike_id)
        if conn is None or conn.closed:
            raise InvalidStateError(f"no IKE_SA with id {ike_id}")
        self._dirty.add(conn)
        return conn

    def _conn_by_child(self, spi: int) -> IkeConnection:
        for conn in self._conns.values():
            if spi in conn.sa.children or conn.sa.child_by_out(spi) is not None:
                self._dirty.add(conn)
                return conn
        raise InvalidStateError(f"no CHILD_SA with SPI {spi:08x}")

    def initiate(self, peer: str, now: float, child: str | None = None, *, reuse: bool = True) -> int:
        """Start an IKE_SA to ``peer`` (CoreConfig peer name) with its ``start`` children (or only ``child``).
        Returns the ike_id. If an IKE_SA to the peer is up and ``child`` is given, creates that CHILD_SA in it.

        Like charon, an IKE_SA with the peer that exists already (being set up or established, whichever side
        initiated it) is reused (its ike_id returned) rather than a duplicate with the same traffic selectors
        piling up; ``reuse=False`` forces a new one."""
        pc = self.config.peer(peer)
        children = [c for c in pc.children if (c.name == child if child else c.start)]
        if child and not children:
            raise InvalidStateError(f"peer {peer} has no child {child!r}")
        if child:
            for conn in self._conns.values():
                if conn.sa.peer.name == peer and conn.sa.state == IkeSaState.ESTABLISHED and not conn.closed:
                    self._dirty.add(conn)
                    conn.create_child(children[0], now)
                    self._collect()
                    return conn.ike_id
        if reuse:
            for conn in self._conns.values():
                if conn.sa.peer.name == peer and not conn.closed and conn.sa.state in (
                        IkeSaState.CREATED, IkeSaState.CONNECTING, IkeSaState.ESTABLISHED, IkeSaState.REKEYING):
                    return conn.ike_id
        if pc.remote_addr in (None, "%any"):
            raise InvalidStateError(f"peer {peer} has no remote address to initiate to")
        host = pc.remote_addr.split("/")[0]
        local_host = pc.local_addr or ("::" if ":" in host else "0.0.0.0")
        others = any(c.sa.peer.name == peer and not c.closed for c in self._conns.values())
        conn = self._new_conn(pc, True, (local_host, pc.local_port), (host, pc.remote_port))
        conn.sa.scratch["other_sas"] = others
        self._dirty.add(conn)
        conn.start(now, children)
        self._collect()
        return conn.ike_id

    def rekey_child(self, spi_in: int, now: float) -> None:
        self._conn_by_child(spi_in).rekey_child(spi_in, now)
        self._collect()

    def rekey_ike(self, ike_id: int, now: float) -> None:
        self._conn(ike_id).rekey_ike(now)
        self._collect()

    def delete_child(self, spi_in: int, now: float) -> None:
        self._conn_by_child(spi_in).delete_child(spi_in, now)
        self._collect()

    def terminate(self, ike_id: int, now: float) -> None:
        """Send a DELETE for the IKE_SA (the peer's answer, or the retransmit give-up, ends it)."""
        self._conn(ike_id).terminate(now)
        self._collect()

    def child_sa_soft_expired(self, spi: int, now: float) -> None:
        """esp reports a soft byte/packet limit on the inbound or outbound SA: start a rekey."""
        try:
            conn = self._conn_by_child(spi)
        except InvalidStateError:
            return
        conn.child_sa_soft_expired(spi, now)
        self._collect()

    def list_sas(self) -> list[SaInfo]:
        """Snapshot of IKE_SAs and CHILD_SAs for ``python -m ike list``."""
        out = []
        for conn in self._conns.values():
            sa = conn.sa
            kids = tuple(ChildInfo(c.name, c.spi_in, c.spi_out, c.suite, c.esn, c.state.value,
                                   tuple(str(t) for t in c.local_ts), tuple(str(t) for t in c.remote_ts),
                                   c.rekey_at, c.expire_at, c.mode, sa.nat_local or sa.nat_remote or sa.peer.encap,
                                   c.created) for c in sa.children.values())
            out.append(SaInfo(conn.ike_id, sa.peer.name, sa.state.value, sa.initiator, sa.spi_i, sa.spi_r,
                              sa.local_addr, sa.remote_addr, str(sa.local_id or sa.peer.local_id),
                              str(sa.remote_id or ""), proposal_name(sa.proposal) if sa.proposal else "",
                              sa.auth_method, sa.nat_local or sa.nat_remote, sa.established_at, sa.rekey_at, kids))
        return out

    def connection(self, ike_id: int) -> IkeConnection:
        return self._conn(ike_id)
