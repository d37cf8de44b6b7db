"""The security policy database (RFC 4301 section 4.4.1): ordered selectors, classified a batch at a time.

A router's forwarding loop hands us hundreds of packets at once, so the 5-tuple of every packet of a batch is
parsed with numpy (one gather per header field for the whole batch) and each policy is tested against all
packets at once: Python runs once per policy and batch, never once per packet. The first matching policy in
order wins, as in RFC 4301 and in JUNOS/strongSwan policy lists; traffic no policy matches is discarded.

Updates never disturb a batch being classified: the policy list is compiled into an immutable
:class:`SpdSnapshot` and the snapshot reference is swapped in one assignment. A batch classified against a
snapshot keeps using it (policy indices refer to that snapshot) even if the SPD changes meanwhile.
"""
from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Union

import numpy as np

from esp._watch import Watched

try:  # the compiled twin of parse_headers + first_match (esp/_classify.pyx); numpy is the reference and fallback
    from . import _classify as _compiled
except ImportError:  # pragma: no cover - the extension is always built by setup.py
    _compiled = None  # type: ignore[assignment]

__all__ = [
    "NO_MATCH",
    "OPAQUE_PORT",
    "UNPARSEABLE",
    "Action",
    "CompiledSelectors",
    "Headers",
    "Policy",
    "Selector",
    "Spd",
    "SpdSnapshot",
    "compile_selectors",
    "parse_headers",
    "selectors_match",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Policy index of a packet that no policy matched (RFC 4301: discarded).
NO_MATCH = -1
#: Policy index of a packet whose IP header could not be parsed (too short, unknown version).
UNPARSEABLE = -2
#: Port value of a packet whose ports are not available (no port-carrying protocol, non-initial fragment):
#: RFC 4301 section 4.4.1.1 "OPAQUE"; such a packet matches only selectors with the full port range.
OPAQUE_PORT = -1

#: IPv6 extension headers walked to reach the upper-layer protocol, bounded so a hostile chain costs nothing.
MAX_IPV6_EXTENSION_HEADERS = 4

_PORT_PROTOCOLS = (6, 17, 132, 136)  # TCP, UDP, SCTP, UDP-Lite: ports are the first 4 bytes
_ICMP_PROTOCOLS = (1, 58)  # ICMP type/code stand in for the ports (RFC 4301 4.4.1.1)
_IPV6_EXT_LEN8 = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_IPV6_FRAGMENT = 44
_IPV6_AH = 51


class Action(enum.IntEnum):
    """What a policy does with the traffic its selector matches (RFC 4301 PROTECT / BYPASS / DISCARD)."""

    PROTECT = 0
    BYPASS = 1
    DISCARD = 2


def _network(value: object) -> Network | None:
    if value is None or value == "any":
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"selector address {value!r} is not an address or prefix: {exc}") from None
    raise TypeError(f"selector address must be a string, ip_network or None, not {type(value).__name__}")


def _port_range(value: object, what: str) -> tuple[int, int]:
    if value is None or value == "any":
        return (0, 65535)
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        a, _, b = value.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not a port or range like 1024-2047") from None
    elif isinstance(value, tuple) and len(value) == 2:
        lo, hi = int(value[0]), int(value[1])
    else:
        raise TypeError(f"{what} must be an int, (lo, hi), 'lo-hi' or None")
    if not (0 <= lo <= hi <= 65535):
        raise ValueError(f"{what} range {lo}-{hi} is outside 0-65535 or reversed")
    return (lo, hi)


@dataclass(frozen=True)
class Selector:
    """Which packets a policy covers, seen from the local side: ``src`` is local, ``dst`` the remote network.

    ``None`` (or ``"any"``) for an address matches IPv4 and IPv6; a prefix of one family limits the
    selector to that family. ``proto`` 0 matches every protocol. For ICMP and ICMPv6 the ports are the type
    (``sport``) and code (``dport``), as the Linux kernel and strongSwan treat them.
    """

    src: Network | None = None
    dst: Network | None = None
    proto: int = 0
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)

    def __init__(
        self,
        src: object = None,
        dst: object = None,
        proto: int | str = 0,
        sport: object = None,
        dport: object = None,
    ) -> None:
        s, d = _network(src), _network(dst)
        if s is not None and d is not None and s.version != d.version:
            raise ValueError(f"selector mixes IPv{s.version} source {s} and IPv{d.version} destination {d}")
        p = _PROTO_NAMES.get(proto, proto) if isinstance(proto, str) else proto
        if isinstance(p, str):
            try:
                p = int(p)
            except ValueError:
                raise ValueError(f"unknown protocol {proto!r} (use a number or tcp/udp/icmp/icmp6/sctp)") from None
        if not 0 <= p <= 255:
            raise ValueError(f"protocol {p} is outside 0-255")
        object.__setattr__(self, "src", s)
        object.__setattr__(self, "dst", d)
        object.__setattr__(self, "proto", int(p))
        object.__setattr__(self, "sport", _port_range(sport, "source port"))
        object.__setattr__(self, "dport", _port_range(dport, "destination port"))

    @property
    def version(self) -> int | None:
        """4 or 6 when an address limits the selector to one family, else None (both)."""
        net = self.src or self.dst
        return net.version if net is not None else None

    def reversed(self) -> Selector:
        """The same traffic seen in the other direction: what an inbound SA's inner packets must match."""
        return Selector(self.dst, self.src, self.proto, self.dport, self.sport)

    def __str__(self) -> str:
        def ports(r: tuple[int, int]) -> str:
            return "" if r == (0, 65535) else f"[{r[0]}]" if r[0] == r[1] else f"[{r[0]}-{r[1]}]"

        proto = f" proto {self.proto}" if self.proto else ""
        return f"{self.src or 'any'}{ports(self.sport)} -> {self.dst or 'any'}{ports(self.dport)}{proto}"


_PROTO_NAMES = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmp6": 58, "icmpv6": 58, "sctp": 132}


@dataclass(frozen=True)
class Policy:
    """One SPD entry: a named selector (or several, any of which matches) and its action.

    A PROTECT policy is what an outbound SA is bound to (see :mod:`esp.sad`) and what an inbound SA's inner
    packets are checked against (reversed). ``name`` is the handle the IKE daemon uses, like a strongSwan
    CHILD_SA config name or a JUNOS policy name.
    """

    name: str
    selectors: tuple[Selector, ...]
    action: Action = Action.PROTECT

    def __init__(self, name: str, selectors: Selector | Iterable[Selector], action: Action | str = Action.PROTECT):
        if not isinstance(name, str) or not name:
            raise ValueError("a policy needs a non-empty name")
        sels = (selectors,) if isinstance(selectors, Selector) else tuple(selectors)
        if not sels or not all(isinstance(s, Selector) for s in sels):
            raise TypeError("policy selectors must be one or more Selector objects")
        act = Action[action.upper()] if isinstance(action, str) else Action(action)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "selectors", sels)
        object.__setattr__(self, "action", act)


# ---------------------------------------------------------------------------------------------------------
# Vectorised header parsing


class Headers(NamedTuple):
    """The 5-tuple of every packet of a batch, one numpy array per field (index = batch slot).

    Addresses are 128-bit values split into two uint64 halves; an IPv4 address sits in ``*_lo`` with
    ``*_hi`` zero and ``version`` 4 tells the families apart.
    """

    ok: np.ndarray  # bool: header parsed
    version: np.ndarray  # uint8: 4 or 6 (0 when not ok)
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray  # int32 upper-layer protocol
    sport: np.ndarray  # int32, OPAQUE_PORT when unavailable
    dport: np.ndarray
    l4: np.ndarray  # int64: absolute position in the arena of the upper-layer header


_IDX40 = np.arange(40, dtype=np.int64)
_IDX4 = np.arange(4, dtype=np.int64)
#: Per protocol number: 1 = ports in the first 4 bytes, 2 = ICMP type/code, 0 = no ports.
_PORT_KIND = np.zeros(256, np.int8)
_PORT_KIND[list(_PORT_PROTOCOLS)] = 1
_PORT_KIND[list(_ICMP_PROTOCOLS)] = 2
_IS_IPV6_EXT = np.zeros(256, bool)
_IS_IPV6_EXT[list(_IPV6_EXT_LEN8) + [_IPV6_FRAGMENT, _IPV6_AH]] = True


def _window(buf: np.ndarray, pos: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``buf[pos + idx]`` for every position as an (n, len(idx)) matrix, in one gather; reads past the arena
    are clamped to its last byte (such slots are masked out by their lengths, never used)."""
    at = pos[:, None] + idx
    np.minimum(at, len(buf) - 1, out=at)
    return buf[at]


def parse_headers(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, count: int | None = None) -> Headers:
    """Parse the IP header (and the ports) of every packet laid out in a batch arena.

    The first 40 bytes of every packet are gathered into one matrix and every field is a column of it, so
    the cost is a few dozen numpy operations per batch whatever its size. Slots whose packet is too short
    for its header, or not IPv4/IPv6, get ``ok`` False. IPv6 extension headers (hop-by-hop, routing,
    destination options, fragment, AH) are walked, at most :data:`MAX_IPV6_EXTENSION_HEADERS` deep, only
    when a packet has one. Non-initial IPv4/IPv6 fragments have OPAQUE ports.
    """
    n = len(offsets) if count is None else int(count)
    off = np.asarray(offsets[:n], dtype=np.int64)
    ln = np.asarray(lengths[:n], dtype=np.int64)
    if len(buf) == 0 or n == 0:
        z = np.zeros(n, np.uint64)
        return Headers(np.zeros(n, bool), np.zeros(n, np.uint8), z, z, z, z, np.zeros(n, np.int32),
                       np.full(n, OPAQUE_PORT, np.int32), np.full(n, OPAQUE_PORT, np.int32), np.zeros(n, np.int64))
    h = _window(buf, off, _IDX40)
    b0 = h[:, 0]
    ver = b0 >> 4
    ihl = (b0 & 0x0F).astype(np.int64) * 4
    v4 = (ver == 4) & (ihl >= 20) & (ln >= ihl)
    v6 = (ver == 6) & (ln >= 40)
    ok = v4 | v6
    w4 = np.ascontiguousarray(h[:, 12:20]).view(">u4").astype(np.uint64)  # IPv4 src, dst
    w8 = np.ascontiguousarray(h[:, 8:40]).view(">u8").astype(np.uint64)   # IPv6 src hi/lo, dst hi/lo
    nh = h[:, 6].astype(np.int64)
    frag4 = ((h[:, 6] & 0x1F) != 0) | (h[:, 7] != 0)
    proto = np.where(v4, h[:, 9], np.where(v6, nh, 0)).astype(np.int32)
    l4 = off + np.where(v4, ihl, 40)
    nonfirst = v4 & frag4
    ext = v6 & _IS_IPV6_EXT[nh]
    if ext.any():
        proto, l4, nonfirst = _walk_ipv6(buf, off, ln, ext, proto, l4, nonfirst)
    p = _window(buf, l4, _IDX4).astype(np.int32)
    kind = _PORT_KIND[proto & 0xFF]
    has_ports = ok & ~nonfirst & ((l4 + 4) <= (off + ln))
    ports = has_ports & (kind == 1)
    icmp = has_ports & (kind == 2)
    sport = np.where(ports, (p[:, 0] << 8) | p[:, 1], np.where(icmp, p[:, 0], OPAQUE_PORT)).astype(np.int32)
    dport = np.where(ports, (p[:, 2] << 8) | p[:, 3], np.where(icmp, p[:, 1], OPAQUE_PORT)).astype(np.int32)
    zero = np.uint64(0)
    return Headers(
        ok=ok,
        version=np.where(v4, 4, np.where(v6, 6, 0)).astype(np.uint8),
        src_hi=np.where(v6, w8[:, 0], zero),
        src_lo=np.where(v6, w8[:, 1], np.where(v4, w4[:, 0], zero)),
        dst_hi=np.where(v6, w8[:, 2], zero),
        dst_lo=np.where(v6, w8[:, 3], np.where(v4, w4[:, 1], zero)),
        proto=proto,
        sport=sport,
        dport=dport,
        l4=l4,
    )


def _slice_headers(h: Headers, n: int) -> Headers:
    return Headers(*(a[:n] for a in h))


def _walk_ipv6(buf: np.ndarray, off: np.ndarray, ln: np.ndarray, ext: np.ndarray, proto: np.ndarray,
               l4: np.ndarray, nonfirst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Follow IPv6 extension headers for the packets that have them (the rare path)."""
    nh = proto.astype(np.int64)
    pos = l4.copy()
    nonfirst = nonfirst.copy()
    end = off + ln
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        step = ext & _IS_IPV6_EXT[nh & 0xFF] & ((pos + 8) <= end)
        if not step.any():
            break
        w = _window(buf, pos, _IDX4).astype(np.int64)
        frag = step & (nh == _IPV6_FRAGMENT)
        ah = step & (nh == _IPV6_AH)
        nonfirst |= frag & ((((w[:, 2] << 8) | w[:, 3]) >> 3) != 0)
        size = np.where(frag, 8, np.where(ah, (w[:, 1] + 2) * 4, (w[:, 1] + 1) * 8))
        nh = np.where(step, w[:, 0], nh)
        pos = np.where(step, pos + size, pos)
    return nh.astype(np.int32), pos, nonfirst


# ---------------------------------------------------------------------------------------------------------
# Compiled selectors


def _net_words(net: Network | None) -> tuple[int, int, int, int, int]:
    """(version, value_hi, value_lo, mask_hi, mask_lo) of a prefix; version 0 and zero mask for 'any'."""
    if net is None:
        return (0, 0, 0, 0, 0)
    if net.version == 4:
        mask = int(net.netmask)
        return (4, 0, int(net.network_address) & mask, 0, mask)
    val, mask = int(net.network_address), int(net.netmask)
    m64 = (1 << 64) - 1
    return (6, val >> 64, val & m64, mask >> 64, mask & m64)


#: Selectors tested at once against a batch (an (n, CHUNK) matrix per operation); larger SPDs go in chunks,
#: stopping as soon as every packet has its match.
SELECTOR_CHUNK = 256


class CompiledSelectors:
    """Selectors as columns (k values each), matched against a batch by broadcasting: a fixed number of
    numpy operations per batch, whatever the number of selectors (up to :data:`SELECTOR_CHUNK`).

    ``owner[j]`` is the index of the policy selector j belongs to.
    """

    __slots__ = (
        "dh",
        "dl",
        "dmh",
        "dml",
        "dp",
        "dp_any",
        "owner",
        "proto",
        "sh",
        "size",
        "sl",
        "smh",
        "sml",
        "sp",
        "sp_any",
        "table",
        "ver",
    )

    def __init__(self, entries: Sequence[tuple[int, Selector]]) -> None:
        rows = []
        for owner, sel in entries:
            sv, sh, sl, smh, sml = _net_words(sel.src)
            dv, dh, dl, dmh, dml = _net_words(sel.dst)
            rows.append((owner, sv or dv, sh, sl, smh, sml, dh, dl, dmh, dml, sel.proto, *sel.sport, *sel.dport))
        cols = list(zip(*rows)) if rows else [()] * 15
        u64 = lambda i: np.array(cols[i], dtype=np.uint64)
        i64 = lambda i: np.array(cols[i], dtype=np.int64)
        self.owner = i64(0).astype(np.int32)
        self.ver = i64(1)
        self.sh, self.sl, self.smh, self.sml = u64(2), u64(3), u64(4), u64(5)
        self.dh, self.dl, self.dmh, self.dml = u64(6), u64(7), u64(8), u64(9)
        self.proto = i64(10)
        self.sp = (i64(11), i64(12))
        self.dp = (i64(13), i64(14))
        self.sp_any = (self.sp[0] == 0) & (self.sp[1] == 65535)
        self.dp_any = (self.dp[0] == 0) & (self.dp[1] == 65535)
        self.size = len(rows)
        # The same columns as one (k, 15) uint64 table for the compiled matcher.
        self.table = np.ascontiguousarray(np.stack([
            self.ver.astype(np.uint64), self.sh, self.sl, self.smh, self.sml, self.dh, self.dl, self.dmh, self.dml,
            self.proto.astype(np.uint64), self.sp[0].astype(np.uint64), self.sp[1].astype(np.uint64),
            self.dp[0].astype(np.uint64), self.dp[1].astype(np.uint64), self.owner.astype(np.uint64),
        ], axis=1) if rows else np.zeros((0, 15), np.uint64))

    def first_match_batch(self, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, n: int,
                          rows: np.ndarray | None = None) -> np.ndarray:
        """:meth:`first_match` straight from a batch arena (slots 0..n-1, or ``rows``): one compiled call per
        batch when esp._classify is built, the numpy reference otherwise. Same results either way."""
        if _compiled is not None:
            out = np.empty(n if rows is None else len(rows), np.int32)
            _compiled.classify(buf, offsets, lengths, self.table, out, rows)
            return out
        h = parse_headers(buf, offsets, lengths, None if rows is None else len(offsets))
        if rows is None:
            return self.first_match(_slice_headers(h, n))
        res = np.full(len(rows), NO_MATCH, np.int32)
        ok = h.ok[rows]
        res[~ok] = UNPARSEABLE
        if ok.any():
            sub = rows[ok]
            m = self.matrix(h, 0, None, sub)
            first = m.argmax(axis=1)
            hit = m[np.arange(len(sub)), first]
            res[np.flatnonzero(ok)[hit]] = self.owner[first[hit]]
        return res

    def matrix(self, h: Headers, lo: int = 0, hi: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Boolean (packets, selectors[lo:hi]) match matrix, for all packets or those at ``rows``."""
        k = slice(lo, hi)

        def col(a: np.ndarray) -> np.ndarray:
            return (a if rows is None else a[rows])[:, None]

        ver = self.ver[k]
        m = (ver == 0) | (col(h.version) == ver)
        m &= (col(h.src_hi) & self.smh[k]) == self.sh[k]
        m &= (col(h.src_lo) & self.sml[k]) == self.sl[k]
        m &= (col(h.dst_hi) & self.dmh[k]) == self.dh[k]
        m &= (col(h.dst_lo) & self.dml[k]) == self.dl[k]
        proto = self.proto[k]
        m &= (proto == 0) | (col(h.proto) == proto)
        sp = col(h.sport)
        m &= self.sp_any[k] | ((sp >= self.sp[0][k]) & (sp <= self.sp[1][k]))  # OPAQUE (-1) is in no range
        dp = col(h.dport)
        m &= self.dp_any[k] | ((dp >= self.dp[0][k]) & (dp <= self.dp[1][k]))
        m &= col(h.ok)
        return m

    def first_match(self, h: Headers) -> np.ndarray:
        """Owner of the first matching selector per packet (int32), NO_MATCH or UNPARSEABLE."""
        n = len(h.ok)
        out = np.full(n, NO_MATCH, dtype=np.int32)
        out[~h.ok] = UNPARSEABLE
        rows: np.ndarray | None = None
        for lo in range(0, self.size, SELECTOR_CHUNK):
            m = self.matrix(h, lo, lo + SELECTOR_CHUNK, rows)
            first = m.argmax(axis=1)
            hit = m[np.arange(len(first)), first]
            idx = np.arange(n) if rows is None else rows
            out[idx[hit]] = self.owner[lo + first[hit]]
            rows = idx[~hit & h.ok[idx]]
            if rows.size == 0:
                break
        return out

    def any_match(self, h: Headers, rows: np.ndarray) -> np.ndarray:
        """Whether each packet at ``rows`` matches any selector."""
        if self.size == 0:
            return np.zeros(len(rows), bool)
        return np.asarray(self.matrix(h, 0, None, rows).any(axis=1))


@dataclass(frozen=True)
class SpdSnapshot:
    """An immutable, compiled copy of the SPD: what one batch is classified against."""

    policies: tuple[Policy, ...]
    version: int
    _sel: CompiledSelectors = field(repr=False)
    _actions: np.ndarray = field(repr=False)

    @classmethod
    def build(cls, policies: Sequence[Policy], version: int) -> SpdSnapshot:
        flat = [(i, s) for i, p in enumerate(policies) for s in p.selectors]
        return cls(tuple(policies), version, CompiledSelectors(flat),
                   np.array([int(p.action) for p in policies], dtype=np.int8))

    def index(self, name: str) -> int:
        for i, p in enumerate(self.policies):
            if p.name == name:
                return i
        raise KeyError(name)

    def classify_headers(self, h: Headers) -> np.ndarray:
        """First matching policy index per packet (int32), NO_MATCH or UNPARSEABLE."""
        return self._sel.first_match(h)

    def classify_batch(self, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
        """Policy index per packet of slots 0..count-1 (compiled when available): the data plane's path."""
        return self._sel.first_match_batch(buf, offsets, lengths, count)

    def classify(self, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                 count: int | None = None) -> tuple[np.ndarray, Headers]:
        """Parse and classify a batch: (policy index per packet, the parsed headers)."""
        h = parse_headers(buf, offsets, lengths, count)
        return self.classify_headers(h), h

    def compiled_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(selector table, action per policy): what a compiled classifier (esp._classify) needs to find the
        same policy index as :meth:`classify_batch`."""
        return self._sel.table, self._actions

    def actions_of(self, index: np.ndarray) -> np.ndarray:
        """The action per packet for a policy index array (-1 where there is no policy)."""
        acts = np.full(len(index), -1, dtype=np.int8)
        has = index >= 0
        acts[has] = self._actions[index[has]]
        return acts


def compile_selectors(selectors: Sequence[Selector]) -> CompiledSelectors:
    """Selectors compiled for :meth:`CompiledSelectors.any_match` (an SA's inbound policy check)."""
    return CompiledSelectors([(0, s) for s in selectors])


def selectors_match(selectors: Sequence[Selector] | CompiledSelectors, h: Headers, rows: np.ndarray) -> np.ndarray:
    """Whether each packet at ``rows`` matches any of ``selectors``: the inbound policy check of one SA."""
    comp = selectors if isinstance(selectors, CompiledSelectors) else compile_selectors(selectors)
    return comp.any_match(h, rows)


class Spd(Watched):
    """The ordered policy list. Readers take :attr:`snapshot`; writers build a new one and swap it in."""

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        super().__init__()
        pols = list(policies)
        _check_unique(pols)
        self._snapshot = SpdSnapshot.build(pols, 0)

    @property
    def snapshot(self) -> SpdSnapshot:
        return self._snapshot

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._snapshot.policies

    def get(self, name: str) -> Policy:
        for p in self._snapshot.policies:
            if p.name == name:
                return p
        raise KeyError(f"no policy named {name!r}")

    def add(self, policy: Policy, index: int | None = None) -> None:
        """Insert a policy at ``index`` in the order (default: last). Names are unique."""
        if not isinstance(policy, Policy):
            raise TypeError("Spd.add takes a Policy")
        with self._lock:
            pols = list(self._snapshot.policies)
            if any(p.name == policy.name for p in pols):
                raise ValueError(f"a policy named {policy.name!r} exists already; use replace()")
            pols.insert(len(pols) if index is None else index, policy)
            self._swap(pols)

    def replace(self, policy: Policy) -> None:
        """Swap the policy of the same name in place, keeping its position in the order."""
        with self._lock:
            pols = list(self._snapshot.policies)
            for i, p in enumerate(pols):
                if p.name == policy.name:
                    pols[i] = policy
                    self._swap(pols)
                    return
            raise KeyError(f"no policy named {policy.name!r}")

    def remove(self, name: str) -> Policy:
        with self._lock:
            pols = list(self._snapshot.policies)
            for i, p in enumerate(pols):
                if p.name == name:
                    del pols[i]
                    self._swap(pols)
                    return p
            raise KeyError(f"no policy named {name!r}")

    def _swap(self, pols: list[Policy]) -> None:
        self._snapshot = SpdSnapshot.build(pols, self._snapshot.version + 1)
        self._notify()

    def classify(self, batch: object) -> np.ndarray:
        """Policy index per packet of a PacketBatch (against the current snapshot)."""
        idx, _ = self._snapshot.classify(batch.buf, batch.offsets, batch.lengths, batch.count)  # type: ignore[attr-defined]
        return idx


def _check_unique(pols: Sequence[Policy]) -> None:
    seen: set[str] = set()
    for p in pols:
        if p.name in seen:
            raise ValueError(f"duplicate policy name {p.name!r}")
        seen.add(p.name)
