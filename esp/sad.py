"""The security association database (RFC 4301 section 4.4.2).

Inbound SAs are found by (SPI, outer destination), with SPI alone as the fallback a NAT-traversed peer
needs; the outbound SA is the one bound to a policy. The tables are copy-on-write: every change builds new
mappings under a lock and swaps one reference, and the data plane reads that reference once per batch. So
an SA installed, rekeyed or removed while a batch is in flight never affects that batch (it keeps the SA
objects it started with), and the next batch sees the whole change or none of it.

Rekeying is make-before-break, as IKEv2 CHILD_SA rekeying (RFC 7296 2.8) expects: installing the new
inbound SA leaves the old one in place, so packets the peer still sends on the old SPI decrypt, until the
daemon removes it after the DELETE exchange.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from esp._watch import Watched
from .spd import CompiledSelectors, Selector, compile_selectors

__all__ = ["SaEntry", "Sad", "SadSnapshot", "sa_direction", "sa_spi"]


def _norm_addr(addr: object) -> str | None:
    if addr is None:
        return None
    return str(ipaddress.ip_address(str(addr)))


def _params(sa: Any) -> Any:
    return getattr(sa, "params", None)


def sa_spi(sa: Any) -> int:
    """The SPI of an :class:`esp.Sa` (from its parameters)."""
    p = _params(sa)
    spi = getattr(p, "spi", None) if p is not None else getattr(sa, "spi", None)
    if spi is None:
        raise TypeError("an SA must expose params.spi")
    return int(spi)


def sa_direction(sa: Any) -> str:
    """'in' or 'out' from the SA's Direction."""
    p = _params(sa)
    d = getattr(p, "direction", None) if p is not None else getattr(sa, "direction", None)
    if d is None:
        raise TypeError("an SA must expose params.direction (an esp.Sa)")
    name = str(getattr(d, "name", getattr(d, "value", d))).lower()
    if name in ("in", "inbound"):
        return "in"
    if name in ("out", "outbound"):
        return "out"
    raise ValueError(f"SA direction {d!r} is neither IN nor OUT")


def _sa_dst(sa: Any) -> str | None:
    p = _params(sa)
    d = getattr(p, "dst", None) if p is not None else getattr(sa, "dst", None)
    return _norm_addr(d) if d else None


@dataclass(frozen=True)
class SaEntry:
    """One installed SA and what it is for.

    ``selectors`` are the traffic selectors the SA was negotiated for, seen from the local side (outbound
    orientation); inbound packets must match them reversed after decryption (RFC 4301 5.2 step 4).
    """

    sa: Any = field(repr=False, compare=False)
    spi: int
    direction: str
    dst: str | None
    policy: str | None
    selectors: tuple[Selector, ...] = ()
    #: inbound only: the selectors reversed and compiled, what inner packets are checked against
    check: CompiledSelectors | None = field(default=None, repr=False, compare=False)
    #: install order (larger is newer): which SA takes over a policy whose bound SA is removed
    order: int = field(default=0, repr=False, compare=False)


@dataclass(frozen=True)
class SadSnapshot:
    """Immutable tables read by one batch."""

    inbound: Mapping[tuple[int, str | None], SaEntry]
    inbound_by_spi: Mapping[int, SaEntry]
    outbound: Mapping[str, SaEntry]  # policy name -> the SA bound to it
    outbound_by_spi: Mapping[int, SaEntry]
    version: int = 0

    def lookup_inbound(self, spi: int, dst: str | None = None) -> SaEntry | None:
        e = self.inbound.get((spi, dst)) if dst is not None else None
        return e if e is not None else self.inbound_by_spi.get(spi)

    def entries(self) -> Iterator[SaEntry]:
        yield from self.inbound.values()
        bound = set()
        for e in self.outbound.values():
            bound.add(id(e))
            yield e
        for e in self.outbound_by_spi.values():
            if id(e) not in bound:
                yield e


_EMPTY = SadSnapshot(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


class Sad(Watched):
    """SAs by SPI (inbound) and by policy (outbound); all writers serialise on one lock."""

    def __init__(self) -> None:
        super().__init__()
        self._snapshot = _EMPTY
        self._order = 0

    @property
    def snapshot(self) -> SadSnapshot:
        return self._snapshot

    def __len__(self) -> int:
        s = self._snapshot
        return len(s.inbound) + len(s.outbound_by_spi)

    def install(
        self,
        sa: Any,
        *,
        policy: str | None = None,
        selectors: Sequence[Selector] = (),
        dst: str | None = None,
    ) -> SaEntry:
        """Add an SA. An inbound SA joins the SPI table next to any SA it replaces (make-before-break); an
        outbound SA is bound to ``policy``, taking over from the SA bound before (which stays installed,
        unbound, until removed, so a batch already encrypting with it finishes)."""
        direction = sa_direction(sa)
        spi = sa_spi(sa)
        if not 0 < spi <= 0xFFFFFFFF or (direction == "in" and spi < 256):
            raise ValueError(f"SPI {spi:#x} is not a valid ESP SPI (1-255 are reserved by IANA)")
        addr = _norm_addr(dst) if dst is not None else _sa_dst(sa)
        sels = tuple(selectors)
        check = compile_selectors([s.reversed() for s in sels]) if direction == "in" and sels else None
        with self._lock:
            self._order += 1
            entry = SaEntry(sa, spi, direction, addr if direction == "in" else _sa_dst(sa), policy, sels, check,
                            self._order)
            s = self._snapshot
            if direction == "in":
                if (spi, entry.dst) in s.inbound or spi in s.inbound_by_spi:
                    raise ValueError(f"an inbound SA with SPI {spi:#010x} is installed already")
                inbound = dict(s.inbound)
                inbound[(spi, entry.dst)] = entry
                by_spi = dict(s.inbound_by_spi)
                by_spi[spi] = entry
                self._swap(replace(s, inbound=MappingProxyType(inbound), inbound_by_spi=MappingProxyType(by_spi)))
            else:
                if spi in s.outbound_by_spi:
                    raise ValueError(f"an outbound SA with SPI {spi:#010x} is installed already")
                if policy is None:
                    raise ValueError("an outbound SA must be bound to a policy")
                out = dict(s.outbound)
                out[policy] = entry
                by_spi = dict(s.outbound_by_spi)
                by_spi[spi] = entry
                self._swap(replace(s, outbound=MappingProxyType(out), outbound_by_spi=MappingProxyType(by_spi)))
        return entry

    def remove(self, spi: int, direction: str, dst: str | None = None) -> SaEntry:
        """Remove an SA. When an outbound SA bound to its policy goes, the newest other outbound SA installed
        for that policy takes over (as the kernel picks any valid SA for a policy); with none left the
        policy has no SA (traffic gets NO_SA and an acquire)."""
        direction = direction.lower()
        with self._lock:
            s = self._snapshot
            if direction == "in":
                e = s.inbound_by_spi.get(spi)
                if e is None or (dst is not None and e.dst is not None and e.dst != _norm_addr(dst)):
                    raise KeyError(f"no inbound SA with SPI {spi:#010x}")
                inbound = {k: v for k, v in s.inbound.items() if v is not e}
                by_spi = {k: v for k, v in s.inbound_by_spi.items() if v is not e}
                self._swap(replace(s, inbound=MappingProxyType(inbound), inbound_by_spi=MappingProxyType(by_spi)))
            elif direction == "out":
                e = s.outbound_by_spi.get(spi)
                if e is None:
                    raise KeyError(f"no outbound SA with SPI {spi:#010x}")
                out = {k: v for k, v in s.outbound.items() if v is not e}
                by_spi = {k: v for k, v in s.outbound_by_spi.items() if v is not e}
                if e.policy is not None and s.outbound.get(e.policy) is e:
                    heirs = [v for v in by_spi.values() if v.policy == e.policy]
                    if heirs:
                        out[e.policy] = max(heirs, key=lambda v: v.order)
                self._swap(replace(s, outbound=MappingProxyType(out), outbound_by_spi=MappingProxyType(by_spi)))
            else:
                raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        return e

    def remove_policy(self, policy: str) -> list[SaEntry]:
        """Remove every SA serving ``policy`` (both directions); returns what was removed."""
        with self._lock:
            s = self._snapshot
            gone = [e for e in s.entries() if e.policy == policy]
            ids = {id(e) for e in gone}
            self._swap(SadSnapshot(
                MappingProxyType({k: v for k, v in s.inbound.items() if id(v) not in ids}),
                MappingProxyType({k: v for k, v in s.inbound_by_spi.items() if id(v) not in ids}),
                MappingProxyType({k: v for k, v in s.outbound.items() if id(v) not in ids}),
                MappingProxyType({k: v for k, v in s.outbound_by_spi.items() if id(v) not in ids}),
                s.version,
            ))
        return gone

    def _swap(self, new: SadSnapshot) -> None:
        self._snapshot = replace(new, version=self._snapshot.version + 1)
        self._notify()
