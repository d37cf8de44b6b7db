"""The gateway's counters: totals (:class:`GatewayStats`) and the same counters per data queue
(:class:`QueueStats`), with the drops by verdict of each queue.

Why per queue: a router with several queues (one TUN queue, one UDP socket, a tx and an rx worker each) must
show which worker carries what, and a drop is found faster when it is known which queue saw it. Every counter
a queue keeps is added to the totals in the same step (:meth:`GatewayStats.add`, :meth:`GatewayStats.fold`),
under the gateway's lock, so the queues' samples always add up to the totals. The compiled loops keep their
counts in one int64 array per worker (esp.gateway._loop slots); :meth:`GatewayStats.fold` turns the growth of
such an array into these fields through one table per direction.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esp.batch import Verdict

try:
    from . import _loop
except ImportError:  # pragma: no cover - setup.py builds it; without it only the python loop runs
    _loop = None  # type: ignore[assignment]

__all__ = ["GatewayStats", "QueueStats", "VERDICT_NAMES"]

#: Verdict code -> name, for the per-queue drops (UNPROCESSED never leaves a loop).
VERDICT_NAMES = {int(v): v.name for v in Verdict if v is not Verdict.UNPROCESSED}


@dataclass
class QueueStats:
    """One data queue's counters (tx: TUN -> ESP, rx: ESP -> TUN). Field names are GatewayStats's, whose
    fields of the same name are the sums over the queues."""

    tun_read: int = 0  # TUN reads (a super-packet counts once)
    tx_bytes: int = 0  # inner bytes taken in for encryption (after segmentation)
    esp_sent: int = 0
    esp_send_dropped: int = 0
    not_sent: int = 0  # outbound verdict other than OK (discarded, no SA, bypassed ...)
    tso_super_packets: int = 0  # TUN reads that were super-packets (TSO/USO) ...
    tso_segments: int = 0  # ... and the packets cut from them
    gso_trains: int = 0  # UDP GSO messages sent ...
    gso_datagrams: int = 0  # ... and the ESP datagrams in them
    too_big: int = 0  # inner packets answered with ICMP "too big"
    fragmented: int = 0  # inner IPv4 packets without DF fragmented before encryption
    too_big_dropped: int = 0  # too big, and no ICMP error allowed for them
    tun_bad: int = 0  # malformed virtio_net_hdr reads / super-packets, leftovers with no room (dropped)
    tx_batches: int = 0
    esp_received: int = 0  # ESP (and IKE) datagrams received
    rx_bytes: int = 0  # outer bytes received
    tun_written: int = 0  # TUN writes (a coalesced super-packet counts once)
    tun_write_dropped: int = 0
    not_delivered: int = 0  # inbound verdict other than OK (and not IKE)
    ike_received: int = 0
    gro_trains: int = 0  # UDP GRO trains received ...
    gro_datagrams: int = 0  # ... and the ESP datagrams in them
    tun_gro_packets: int = 0  # decrypted packets handed to userspace GRO (tun_written counts the writes)
    rx_batches: int = 0
    #: packets by verdict name (OK and every drop), as the data plane counts them; out: encrypted, in: decrypted
    out_verdicts: dict[str, int] = field(default_factory=dict)
    in_verdicts: dict[str, int] = field(default_factory=dict)

    def copy(self) -> QueueStats:
        return dataclasses.replace(self, out_verdicts=dict(self.out_verdicts),
                                   in_verdicts=dict(self.in_verdicts))


#: The counters a queue keeps (every int field of QueueStats).
QUEUE_COUNTERS = tuple(f.name for f in dataclasses.fields(QueueStats) if f.type in ("int", int))


@dataclass
class GatewayStats:
    """The gateway's counters: the totals over its queues (``per_queue``, same field names), and the
    gateway-wide state (offloads, MTUs, errors). The data plane keeps per-verdict totals of its own."""

    tun_read: int = 0
    esp_sent: int = 0
    esp_send_dropped: int = 0
    not_sent: int = 0
    esp_received: int = 0
    tun_written: int = 0
    tun_write_dropped: int = 0
    not_delivered: int = 0
    ike_received: int = 0
    too_big: int = 0
    fragmented: int = 0
    too_big_dropped: int = 0
    outer_mtu: int = 0
    inner_mtu: int = 0  # the largest inner packet the SAs' overhead lets through the outer MTU
    tun_mtu: int = 0
    offloads: list[str] = field(default_factory=list)  # the offloads in use: "udp_gso", "tun_tso4" ...
    gso_trains: int = 0
    gso_datagrams: int = 0
    gro_trains: int = 0
    gro_datagrams: int = 0
    tun_bad: int = 0
    tso_super_packets: int = 0
    tso_segments: int = 0
    tun_gro_packets: int = 0
    offload_fallback: str = ""  # why an offload was turned off while running (the kernel refused it)
    tx_loop: str = ""  # the transmit loop running: "compiled" (esp.gateway._loop) or "python"
    rx_loop: str = ""  # the receive loop running, the same way
    tx_batches: int = 0
    rx_batches: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    io_errors: int = 0  # transient I/O errors (the loop carried on)
    last_io_error: str = ""
    errors: list[str] = field(default_factory=list)  # fatal: the gateway stopped
    queues: int = 0  # data queues running (TUN queue + UDP socket + tx and rx thread each)
    #: each queue's counters; the fields above of the same names are their sums
    per_queue: list[QueueStats] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON-ready values (what ``python -m esp gateway`` prints when it stops and
        the IKE daemon's ``stats`` returns); safe while the data threads count (each table is copied at once)."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = [dataclasses.asdict(q.copy()) for q in v] if f.name == "per_queue" else \
                list(v) if isinstance(v, list) else v
        return d

    def add(self, q: int, **deltas: int) -> None:
        """Count ``deltas`` for queue ``q`` and in the totals (the caller holds the gateway's lock, or is the
        only thread counting)."""
        qs = self.per_queue[q]
        for name, n in deltas.items():
            if n:
                setattr(self, name, getattr(self, name) + n)
                setattr(qs, name, getattr(qs, name) + n)

    def add_verdicts(self, q: int, outbound: bool, counts: np.ndarray) -> None:
        """Add per-verdict packet counts (indexed by verdict code) to queue ``q``'s drops by verdict."""
        table = self.per_queue[q].out_verdicts if outbound else self.per_queue[q].in_verdicts
        for code in np.flatnonzero(counts):
            name = VERDICT_NAMES.get(int(code))
            if name is not None:
                table[name] = table.get(name, 0) + int(counts[code])

    def fold(self, q: int, delta: np.ndarray, outbound: bool) -> None:
        """Add the growth ``delta`` of a compiled loop's counter array (esp.gateway._loop slots) to queue
        ``q`` and the totals."""
        for name, slots in (_TX_FOLD if outbound else _RX_FOLD):
            self.add(q, **{name: int(sum(delta[k] for k in slots))})
        self.add_verdicts(q, outbound, delta[_loop.C_VERDICTS:_loop.C_VERDICTS + 32])


# What a compiled loop's counter slots add to (QueueStats field, counter slots summed), per direction.
_Fold = tuple[tuple[str, tuple[int, ...]], ...]
_TX_FOLD: _Fold = ()
_RX_FOLD: _Fold = ()
if _loop is not None:
    _TX_FOLD = (
        ("tun_read", (_loop.C_TUN_READ,)), ("tx_bytes", (_loop.C_BYTES_IN,)),
        ("tso_super_packets", (_loop.C_TSO_SUPER,)),
        ("tso_segments", (_loop.C_TSO_SEGMENTS,)), ("tun_bad", (_loop.C_TUN_BAD, _loop.C_LEFT_DROPPED)),
        ("esp_sent", (_loop.C_ESP_SENT,)), ("esp_send_dropped", (_loop.C_SEND_DROPPED,)),
        ("not_sent", (_loop.C_NOT_SENT,)), ("tx_batches", (_loop.C_BATCHES,)),
        ("gso_trains", (_loop.C_GSO_TRAINS,)),
        ("gso_datagrams", (_loop.C_GSO_DATAGRAMS,)))
    _RX_FOLD = (
        ("esp_received", (_loop.C_ESP_RECEIVED,)), ("rx_bytes", (_loop.C_BYTES_IN,)),
        ("rx_batches", (_loop.C_BATCHES,)),
        ("gro_trains", (_loop.C_GRO_TRAINS,)), ("gro_datagrams", (_loop.C_GRO_DATAGRAMS,)),
        ("tun_written", (_loop.C_TUN_WRITTEN,)), ("tun_write_dropped", (_loop.C_TUN_WRITE_DROPPED,)),
        ("tun_gro_packets", (_loop.C_TUN_GRO_PACKETS,)), ("tun_bad", (_loop.C_TUN_BAD, _loop.C_LEFT_DROPPED)),
        ("not_delivered", (_loop.C_NOT_DELIVERED,)))
