"""The embedding API: what a software router's forwarding loop calls, and what the IKE daemon drives.

A router calls :meth:`Dataplane.outbound` with a batch of plaintext IP packets and :meth:`Dataplane.inbound`
with a batch of received ESP packets; each returns one :class:`esp.Verdict` per slot and leaves the
processed packets in the output batch (slot i of the input goes to slot i of the output). Python work is per
batch and per SA, never per packet: headers are parsed with numpy, packets are grouped by SA once, and each
SA's group goes to the compiled core in one ``encrypt_batch``/``decrypt_batch`` call with a ``select`` array.

The key manager (the IKE daemon, or a router's static SA configuration) uses the other half, modelled on
the kernel interface strongSwan's charon drives (kernel_ipsec: add/update/del SA and policy; upward only
expire and acquire): :meth:`add_policy`, :meth:`install_sa`, :meth:`rekey_sa`, :meth:`remove_sa`,
:meth:`remove_policy`, :meth:`alloc_spi`, and events (:class:`esp.events.SaExpired`,
:class:`esp.events.SaAcquire`) through :meth:`next_event` or an ``on_event`` callback.

Thread contract: one thread may run ``outbound`` while another runs ``inbound`` and a third (IKE) changes
policies and SAs. Changes are copy-on-write (see :mod:`esp.sad`, :mod:`esp.spd`): each batch reads one
snapshot of each table, so a change lands between batches, never inside one.

A router's loop, with static SAs (what ``esp.gateway`` does around TUN and UDP sockets)::

    dp = Dataplane()
    dp.add_policy(Policy("site", Selector("10.1.0.0/16", "10.2.0.0/16")))          # local -> remote
    dp.install_sa(Sa(SaParams(spi=0x1001, direction=Direction.OUT, ...)), "site")
    dp.install_sa(Sa(SaParams(spi=0x2001, direction=Direction.IN, ...)), "site")
    out = PacketBatch.empty(256, 2048)                                              # reused forever
    verdicts = dp.outbound(plain_batch, out)          # out slot i: ESP packet for plain slot i when OK
    verdicts = dp.inbound(esp_batch, out)             # out slot i: inner packet, policy-checked, when OK
"""
from __future__ import annotations

import collections
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batch import Verdict
from .events import DataplaneEvent, ExpiryReason, SaAcquire, SaExpired
from .sad import Sad, SaEntry, sa_direction
from .spd import _IDX4, UNPARSEABLE, Action, Policy, Selector, Spd, _window, parse_headers

try:
    from . import _classify as _compiled
except ImportError:  # pragma: no cover - setup.py always builds it
    _compiled = None  # type: ignore[assignment]

__all__ = ["DEFAULT_SLOT_SIZE", "ESP_OVERHEAD_MAX", "Dataplane", "DataplaneCounters"]

#: Extra room per slot an output batch needs over the largest input packet: outer IPv6 + UDP + ESP
#: header + IV + maximum padding + trailer + ICV, rounded up.
ESP_OVERHEAD_MAX = 128
DEFAULT_SLOT_SIZE = 2048
#: Events kept for the key manager when it does not drain them; older ones are dropped (and counted).
MAX_PENDING_EVENTS = 4096

_NV = 32  # counter slots per direction (verdict codes are < 32)
# Plain ints: enum attribute lookups cost more than the numpy work they feed.
_OK, _MALFORMED, _NO_SA, _DISCARDED, _BYPASSED = (int(Verdict.OK), int(Verdict.MALFORMED), int(Verdict.NO_SA),
                                                   int(Verdict.DISCARDED), int(Verdict.BYPASSED))
_POLICY_MISMATCH, _EXPIRED, _SEQ_EXHAUSTED = (int(Verdict.POLICY_MISMATCH), int(Verdict.EXPIRED),
                                              int(Verdict.SEQ_EXHAUSTED))
_PROTECT, _BYPASS = int(Action.PROTECT), int(Action.BYPASS)
_NO_VERDICTS, _SEQ_OUT = np.zeros(0, np.uint8), np.array([_SEQ_EXHAUSTED], np.uint8)


def _addr(version: int, hi: int, lo: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((int(hi) << 64) | int(lo)))


@dataclass(frozen=True)
class DataplaneCounters:
    """Totals since start, per direction, keyed by verdict name (``OK``, ``NO_SA``, ``POLICY_MISMATCH`` ...)."""

    outbound: dict[str, int]
    inbound: dict[str, int]
    acquires: int
    events_dropped: int


class Dataplane:
    """SPD + SAD + the batch paths. Usable without IKE: install policies and SAs by hand.

    ``on_event`` is called in the thread that processed the batch (a gateway's data thread): an asyncio
    key manager must hop to its loop (``loop.call_soon_threadsafe``). :meth:`next_event` is thread-safe.
    """

    def __init__(
        self,
        spd: Spd | None = None,
        sad: Sad | None = None,
        *,
        acquire_interval: float = 1.0,
        on_event: Callable[[DataplaneEvent], None] | None = None,
    ) -> None:
        self.spd = spd if spd is not None else Spd()
        self.sad = sad if sad is not None else Sad()
        self.acquire_interval = float(acquire_interval)
        self.on_event = on_event
        self._events: collections.deque[DataplaneEvent] = collections.deque()
        self._events_dropped = 0
        self._acquire_last: dict[str, float] = {}
        self._signalled: set[tuple[int, str, bool]] = set()
        self._lock = threading.Lock()  # guards _signalled and _acquire_last (both data-plane threads use them)
        self._out = np.zeros(_NV, np.int64)
        self._in = np.zeros(_NV, np.int64)
        self._acquires = 0

    # ------------------------------------------------------------------ key-manager hook
    def add_policy(self, policy: Policy, index: int | None = None) -> None:
        """Add a policy at ``index`` of the ordered SPD (default last)."""
        self.spd.add(policy, index)

    def replace_policy(self, policy: Policy) -> None:
        self.spd.replace(policy)

    def remove_policy(self, name: str, *, remove_sas: bool = True) -> list[SaEntry]:
        """Remove a policy and (by default) every SA serving it; returns the SAs removed."""
        self.spd.remove(name)
        gone = self.sad.remove_policy(name) if remove_sas else []
        with self._lock:
            self._acquire_last.pop(name, None)
            for e in gone:
                self._forget(e)
        return gone

    def install_sa(self, sa: Any, policy: str | None = None, selectors: Sequence[Selector] | None = None) -> SaEntry:
        """Install an SA (an :class:`esp.Sa`; its params say direction and SPI).

        Outbound SAs are bound to PROTECT policy ``policy`` (taking over from any SA bound before). Inbound
        SAs are checked after decryption against ``selectors`` (the negotiated traffic selectors, local side
        first), by default the policy's; an inbound SA with neither accepts any inner packet.
        """
        if policy is not None:
            pol = self.spd.get(policy)
            if pol.action is not Action.PROTECT:
                raise ValueError(f"policy {policy!r} is {pol.action.name}, SAs serve only PROTECT policies")
            sels = tuple(selectors) if selectors is not None else pol.selectors
        else:
            sels = tuple(selectors or ())
        return self.sad.install(sa, policy=policy, selectors=sels)

    def rekey_sa(self, old_spi: int, new_sa: Any, *, remove_old: bool = False) -> SaEntry:
        """Install ``new_sa`` in place of the SA ``old_spi`` of the same direction, for the same policy and
        selectors. Outbound traffic moves to the new SA from the next batch; an old inbound SA stays
        (make-before-break) until :meth:`remove_sa` unless ``remove_old``."""
        direction = sa_direction(new_sa)
        snap = self.sad.snapshot
        old = (snap.inbound_by_spi if direction == "in" else snap.outbound_by_spi).get(old_spi)
        if old is None:
            raise KeyError(f"no {direction}bound SA with SPI {old_spi:#010x} to rekey")
        entry = self.sad.install(new_sa, policy=old.policy, selectors=old.selectors)
        if remove_old:
            self.remove_sa(old_spi, direction)
        return entry

    def remove_sa(self, spi: int, direction: str) -> SaEntry:
        """Remove an SA ("in" or "out"). Batches already running with it finish with it."""
        e = self.sad.remove(spi, direction)
        with self._lock:
            self._forget(e)
        return e

    def alloc_spi(self) -> int:
        """A random inbound SPI not in use (>= 256: 1-255 are reserved), as kernel_ipsec.get_spi does."""
        for _ in range(1000):
            spi = secrets.randbits(32)
            if spi >= 256 and spi not in self.sad.snapshot.inbound_by_spi:
                return spi
        raise RuntimeError("could not find a free SPI")  # pragma: no cover - 2^32 space

    def next_event(self) -> DataplaneEvent | None:
        """The oldest pending event, or None."""
        try:
            return self._events.popleft()
        except IndexError:
            return None

    def counters(self) -> DataplaneCounters:
        names = {int(v): v.name for v in Verdict}
        return DataplaneCounters(
            outbound={names[i]: int(self._out[i]) for i in names},
            inbound={names[i]: int(self._in[i]) for i in names},
            acquires=self._acquires,
            events_dropped=self._events_dropped,
        )

    # ------------------------------------------------------------------ outbound
    def outbound(self, batch: Any, out: Any = None, now: float | None = None) -> np.ndarray:
        """Classify every packet of ``batch`` by the SPD and encrypt PROTECT traffic with its policy's SA.

        Returns the verdicts (uint8, one per slot, also written to ``out.status``): OK (encrypted packet in
        ``out``), BYPASSED (forward the original slot of ``batch`` unprotected), DISCARDED (a DISCARD policy
        or no policy matched), NO_SA (PROTECT without an SA: an :class:`SaAcquire` is raised), MALFORMED
        (unparseable IP header) or a core verdict (EXPIRED, SEQ_EXHAUSTED, NO_SPACE ...).
        """
        n = int(batch.count)
        out = self._output_for(batch, out)
        spd = self.spd.snapshot
        sad = self.sad.snapshot
        idx = spd.classify_batch(batch.buf, batch.offsets, batch.lengths, n)
        acts = spd.actions_of(idx)
        verdicts = np.full(n, _DISCARDED, np.uint8)
        verdicts[idx == UNPARSEABLE] = _MALFORMED
        verdicts[acts == _BYPASS] = _BYPASSED
        protect = np.flatnonzero(acts == _PROTECT)
        status = out.status
        for pi, sel in _groups(idx[protect], protect):
            name = spd.policies[pi].name
            entry = sad.outbound.get(name)
            if entry is None:
                verdicts[sel] = _NO_SA
                self._acquire(name, batch, int(sel[0]), now)
                continue
            n_ok = entry.sa.encrypt_batch(batch, out, select=sel)
            v = status[sel]
            verdicts[sel] = v
            self._check_expiry(entry, v, n_ok)
        status[:n] = verdicts
        self._out += np.bincount(verdicts, minlength=_NV)[:_NV]
        return verdicts

    def note_outbound(self, verdict_counts: np.ndarray) -> None:
        """Account for outbound packets a compiled loop encrypted through the SAs directly (esp/_saapi.h):
        add its per-verdict counts (indexed by verdict code) and raise the expiry events the SAs now call for,
        as :meth:`outbound` would have."""
        counts = np.asarray(verdict_counts, np.int64)[:_NV]
        self._out[:len(counts)] += counts
        seq_out = bool(counts[_SEQ_EXHAUSTED]) if len(counts) > _SEQ_EXHAUSTED else False
        for entry in self.sad.snapshot.outbound_by_spi.values():
            sa = entry.sa
            if seq_out and sa.counters.seq_exhausted:
                self._check_expiry(entry, _SEQ_OUT, 0)
            elif sa.soft_expired:
                self._check_expiry(entry, _NO_VERDICTS, 0)

    def note_inbound(self, verdict_counts: np.ndarray) -> None:
        """:meth:`note_outbound` for received packets a compiled loop decrypted and policy-checked itself."""
        counts = np.asarray(verdict_counts, np.int64)[:_NV]
        self._in[:len(counts)] += counts
        for entry in self.sad.snapshot.inbound_by_spi.values():
            if entry.sa.soft_expired:
                self._check_expiry(entry, _NO_VERDICTS, 0)

    # ------------------------------------------------------------------ inbound
    def inbound(self, batch: Any, out: Any = None, now: float | None = None) -> np.ndarray:
        """Decrypt a batch of received ESP packets (outer IP header, ESP or ESP-in-UDP) by SPI, then check
        each inner packet against the selectors of the SA it came in on (RFC 4301 5.2).

        Verdicts: OK (inner packet in ``out``), NO_SA (unknown SPI), POLICY_MISMATCH (decrypted, but the
        inner packet is outside the SA's selectors: dropped and counted), BYPASSED (an IKE message on the
        NAT-T port, non-ESP marker: hand it to IKE), DISCARDED (NAT keepalive), MALFORMED, or a core verdict
        (AUTH_FAILED, REPLAYED, PAD_ERROR, DUMMY ...).
        """
        n = int(batch.count)
        out = self._output_for(batch, out)
        sad = self.sad.snapshot
        spi, kind = _demux(batch, n)
        verdicts = _KIND_VERDICT[kind]
        cand = np.flatnonzero(kind == 0)
        verdicts[cand] = _NO_SA
        status = out.status
        groups: list[tuple[SaEntry, np.ndarray]] = []
        for spi_value, sel in _groups(spi[cand], cand):
            entry = sad.inbound_by_spi.get(spi_value)
            if entry is None:
                continue
            n_ok = entry.sa.decrypt_batch(batch, out, select=sel)
            verdicts[sel] = status[sel]
            groups.append((entry, sel))
            self._check_expiry(entry, verdicts[sel], n_ok)
        for entry, sel in groups:
            if entry.check is None:
                continue
            ok = sel[verdicts[sel] == _OK]
            if ok.size:
                fine = entry.check.first_match_batch(out.buf, out.offsets, out.lengths, n, rows=ok) >= 0
                verdicts[ok[~fine]] = _POLICY_MISMATCH
        np.asarray(out.status)[:n] = verdicts
        self._in += np.bincount(verdicts, minlength=_NV)[:_NV]
        return verdicts

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _output_for(batch: Any, out: Any) -> Any:
        n = int(batch.count)
        if out is None:
            biggest = int(np.max(batch.lengths[:n])) if n else 0
            size = max(DEFAULT_SLOT_SIZE, biggest + ESP_OVERHEAD_MAX)
            return type(batch).empty(count=max(n, 1), slot_size=size)
        if int(out.count) < n:
            raise ValueError(f"output batch has {int(out.count)} slots, input has {n} packets")
        return out

    def _emit(self, ev: DataplaneEvent) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            try:
                self._events.popleft()
            except IndexError:  # pragma: no cover - raced with a reader
                pass
            self._events_dropped += 1
        self._events.append(ev)
        cb = self.on_event
        if cb is not None:
            cb(ev)

    def _acquire(self, policy: str, batch: Any, i: int, now: float | None) -> None:
        t = time.monotonic() if now is None else now
        with self._lock:
            last = self._acquire_last.get(policy)
            if last is not None and t - last < self.acquire_interval:
                return
            self._acquire_last[policy] = t
            self._acquires += 1
        h = parse_headers(batch.buf, batch.offsets[i:i + 1], batch.lengths[i:i + 1])  # the one packet it names
        i = 0
        v = int(h.version[i])
        self._emit(SaAcquire(policy, _addr(v, h.src_hi[i], h.src_lo[i]), _addr(v, h.dst_hi[i], h.dst_lo[i]),
                             int(h.proto[i]), int(h.sport[i]), int(h.dport[i])))

    def _check_expiry(self, entry: SaEntry, verdicts: np.ndarray, n_ok: int) -> None:
        sa = entry.sa
        soft = sa.soft_expired
        if not soft and n_ok == len(verdicts):
            return  # the common case: every packet passed and no limit is near
        seq_out = bool((verdicts == _SEQ_EXHAUSTED).any())
        hard = seq_out or sa.hard_expired or bool((verdicts == _EXPIRED).any())
        soft = soft or hard
        if not soft:
            return
        for level in ((False, True) if hard else (False,)):
            key = (entry.spi, entry.direction, level)
            with self._lock:
                if key in self._signalled:
                    continue
                self._signalled.add(key)
            reason = ExpiryReason.SEQUENCE if (level and seq_out) else _lifetime_reason(sa, level)
            self._emit(SaExpired(entry.spi, level, entry.direction, reason, entry.policy))

    def _forget(self, e: SaEntry) -> None:
        for level in (False, True):
            self._signalled.discard((e.spi, e.direction, level))


def _lifetime_reason(sa: Any, hard: bool) -> ExpiryReason:
    """Which limit ran out, from the SA's parameters and counters, when the SA says so; else LIFETIME."""
    try:
        lt = sa.params.lifetime
        c = sa.counters
        b, p = (lt.hard_bytes, lt.hard_packets) if hard else (lt.soft_bytes, lt.soft_packets)
        if p and c.packets >= p:
            return ExpiryReason.PACKETS
        if b and c.bytes >= b:
            return ExpiryReason.BYTES
    except AttributeError:
        pass
    return ExpiryReason.LIFETIME


def _groups(keys: np.ndarray, slots: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(key, int32 slot indices in batch order) for each distinct key: packets grouped once per batch."""
    if keys.size == 0:
        return []
    first = keys[0]
    if (keys == first).all():  # the usual batch: one flow, one SA
        return [(int(first), slots.astype(np.int32))]
    order = np.argsort(keys, kind="stable")  # stable: each group keeps batch (= sequence number) order
    ks = keys[order]
    cut = np.flatnonzero(ks[1:] != ks[:-1]) + 1
    bounds = np.concatenate(([0], cut, [len(ks)]))
    return [(int(ks[a]), slots[order[a:b]].astype(np.int32)) for a, b in zip(bounds[:-1], bounds[1:])]


# Inbound demux kinds (esp._classify.esp_demux) -> initial verdict: ESP waits for its SA (NO_SA until found), IKE
# on the NAT-T port is handed over (BYPASSED), a NAT keepalive is dropped (DISCARDED), the rest is MALFORMED.
_KIND_VERDICT = np.array([_NO_SA, _BYPASSED, _DISCARDED, _MALFORMED], np.uint8)


def _demux(batch: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(SPI, kind) per received packet: compiled when esp._classify is built, else the numpy reference."""
    if _compiled is not None:
        spi = np.empty(n, np.uint32)
        kind = np.empty(n, np.uint8)
        _compiled.esp_demux(batch.buf, batch.offsets, batch.lengths, spi, kind)
        return spi, kind
    buf = np.asarray(batch.buf)
    off = np.asarray(batch.offsets[:n], np.int64)
    end = off + np.asarray(batch.lengths[:n], np.int64)
    b0 = _be8(buf, off)
    v4 = ((b0 >> 4) == 4) & (end - off >= 20)
    v6 = ((b0 >> 4) == 6) & (end - off >= 40)
    hl = np.where(v4, (b0 & 15) * 4, 40).astype(np.int64)
    ok = (v4 & (hl >= 20) & (off + hl <= end)) | v6
    proto = np.where(v4, _be8(buf, off + 9), _be8(buf, off + 6))
    udp = ok & (proto == 17)
    esp_pos = off + hl + np.where(udp, 8, 0)
    word = _be32(buf, esp_pos)
    kind = np.full(n, 3, np.uint8)
    keepalive = udp & (end - esp_pos == 1) & (_be8(buf, esp_pos) == 0xFF)
    ike = udp & ~keepalive & (esp_pos + 4 <= end) & (word == 0)
    esp = ok & ((proto == 50) | udp) & ~keepalive & ~ike & (esp_pos + 8 <= end) & (word != 0)
    kind[keepalive] = 2
    kind[ike] = 1
    kind[esp] = 0
    return np.where(esp, word, 0).astype(np.uint32), kind


def _be8(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return buf[np.clip(pos, 0, max(len(buf) - 1, 0))].astype(np.uint32)


def _be32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    b = _window(buf, np.asarray(pos, np.int64), _IDX4).astype(np.uint32)
    return (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]
