"""The daemon's kernel_ipsec: CHILD_SAs from the core installed into the esp data plane, and ESP in and out.

Why apart from the daemon: as charon reaches libipsec only through kernel_ipsec, this is the one module that maps
the core's :class:`ChildSaEstablished` to ESP SAs (:func:`sa_params`), installs them with their policy
(make-before-break on rekeys: the new inbound SA first, the outbound switch when the core says
:class:`ChildSaRekeyed`, the old pair removed on :class:`ChildSaDeleted`) and carries ESP-in-UDP between the
IKE adapter's sockets and the data plane. It knows nothing about IKE_SAs, operators or sockets beyond a
``send_esp_many`` callable.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esp import Direction, Lifetime, Mode, PacketBatch, Sa, SaParams, UdpEncap, Verdict
from esp.dataplane import Dataplane
from esp.events import SaExpired
from esp.spd import Policy, Selector

from .config import DaemonConfig
from .core_config import TrafficSelector
from .events import ChildSaDeleted, ChildSaEstablished

__all__ = ["REKEY_INBOUND_GRACE", "REPLAY_WINDOW", "InstallError", "InstalledChild", "Kernel", "make_gateway",
           "outbound_sa_toml", "sa_params", "selectors_for"]

log = logging.getLogger("ike.daemon")

#: Seconds an inbound SA replaced by a rekey still accepts packets sent before the peer switched to the new one.
REKEY_INBOUND_GRACE = 2.0
#: Default anti-replay window of inbound SAs (strongSwan's default is 32; Linux's 32 too; 64 costs nothing).
REPLAY_WINDOW = 64


class InstallError(Exception):
    """A CHILD_SA whose ESP SAs cannot be installed (a suite esp cannot run, selectors that select nothing)."""


# --------------------------------------------------------------------------------------------------------
# The one mapping from the core's event to the data plane's SAs


def sa_params(ev: ChildSaEstablished, *, replay_window: int = REPLAY_WINDOW,
              backend: str | None = None) -> tuple[SaParams, SaParams]:
    """(inbound, outbound) ESP SA parameters for a negotiated CHILD_SA.

    Inbound is the SPI we chose (the peer sends to it), outbound the peer's. Outer addresses are the IKE
    addresses; with UDP encapsulation the ports are the IKE_SA's (4500 normally), swapped for inbound.
    Byte and packet lifetimes go to esp, whose soft signal comes back as a rekey; time lifetimes stay with
    the core's timers.
    """
    local, remote = ev.local_addr, ev.remote_addr
    mode = Mode.TRANSPORT if ev.mode == "transport" else Mode.TUNNEL
    life = Lifetime(soft_bytes=ev.rekey_bytes, hard_bytes=ev.life_bytes,
                    soft_packets=ev.rekey_packets, hard_packets=ev.life_packets)
    inbound = SaParams(
        spi=ev.spi_in, direction=Direction.IN, suite=ev.suite, enc_key=ev.enc_key_in, integ_key=ev.integ_key_in,
        mode=mode, src=remote[0], dst=local[0], esn=ev.esn, replay_window=replay_window,
        encap=UdpEncap(sport=remote[1], dport=local[1]) if ev.encap else None, lifetime=life, backend=backend)
    outbound = SaParams(
        spi=ev.spi_out, direction=Direction.OUT, suite=ev.suite, enc_key=ev.enc_key_out,
        integ_key=ev.integ_key_out, mode=mode, src=local[0], dst=remote[0], esn=ev.esn, replay_window=0,
        encap=UdpEncap(sport=local[1], dport=remote[1]) if ev.encap else None, lifetime=life, backend=backend)
    return inbound, outbound


def _prefixes(ts: TrafficSelector) -> list[Any]:
    return list(ipaddress.summarize_address_range(ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)))


def selectors_for(local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector]) -> list[Selector]:
    """esp selectors (local side first) covering the negotiated traffic selectors: every local x remote pair of
    one address family, address ranges split into prefixes, protocol and ports carried over."""
    out: list[Selector] = []
    for lt in local_ts:
        for rt in remote_ts:
            if lt.version != rt.version:
                continue
            if lt.protocol and rt.protocol and lt.protocol != rt.protocol:
                continue
            proto = lt.protocol or rt.protocol
            for src in _prefixes(lt):
                for dst in _prefixes(rt):
                    out.append(Selector(src, dst, proto, (lt.start_port, lt.end_port), (rt.start_port, rt.end_port)))
    return out


def _file_ports(proto: int, r: tuple[int, int]) -> Any:
    from esp.pcap.sa_files import PortRange

    # ICMP "ports" are type and code (one byte each): the capture tools' selectors read 16-bit ports, so an
    # ICMP selector narrowed by type is left open there and the peer's policy check decides.
    if tuple(r) == (0, 65535) or proto in (1, 58):
        return None
    return PortRange(int(r[0]), int(r[1]))


def outbound_sa_toml(children: Iterable[InstalledChild]) -> str:
    """The outbound ESP SAs of ``children`` as an espresso TOML SA file (the capture tools' format), so
    ``python -m esp pcap send --daemon`` can send traffic on keys a real peer holds.

    ``initial_seq`` is the sequence number the outbound SA used last, so a generator continues after it. One
    negotiated selector becomes the file's ``selector``; several (traffic selector lists) leave it out: any
    inner traffic, and the peer's policy check decides. The text holds keys: it goes only to the 0600 control
    socket, never to a log."""
    from esp.pcap.sa_files import AddressMatch, SaEntry, dump_toml
    from esp.pcap.sa_files import Selector as FileSelector
    from esp.suites import parse_suite

    entries = []
    for c in children:
        ev = c.event
        sel = None
        if len(c.selectors) == 1:
            s = c.selectors[0]
            sel = FileSelector(AddressMatch.parse(str(s.src) if s.src is not None else "*"),
                               AddressMatch.parse(str(s.dst) if s.dst is not None else "*"),
                               s.proto or None, _file_ports(s.proto, s.sport), _file_ports(s.proto, s.dport))
        entries.append(SaEntry(
            spi=ev.spi_out, suite=parse_suite(ev.suite), enc_key=ev.enc_key_out, integ_key=ev.integ_key_out,
            src=AddressMatch.parse(ev.local_addr[0]), dst=AddressMatch.parse(ev.remote_addr[0]),
            mode="transport" if ev.mode == "transport" else "tunnel",
            encap=(ev.local_addr[1], ev.remote_addr[1]) if ev.encap else None, esn=ev.esn,
            initial_seq=c.sa_out.seq, selector=sel, name=f"{ev.peer}/{ev.child} out"))
    return dump_toml(entries)


@dataclass
class InstalledChild:
    """A CHILD_SA whose ESP SAs are (being) installed."""

    event: ChildSaEstablished
    policy: str
    sa_in: Sa
    sa_out: Sa
    installed_at: float
    selectors: list[Selector] = field(default_factory=list)  # local side first; inbound checks them reversed
    outbound_active: bool = False  # the outbound SA carries traffic (after ChildSaRekeyed for a rekey)
    state: str = "INSTALLED"  # INSTALLED, REKEYED (replaced, inbound still open)
    #: swanctl's numbers: a unique id per CHILD_SA (a rekey gets a new one) and the reqid of its policy
    #: (kept across rekeys, as the kernel's reqid ties the SAs of one policy together)
    unique_id: int = 0
    reqid: int = 0

    @property
    def spi_in(self) -> int:
        return self.event.spi_in

    @property
    def spi_out(self) -> int:
        return self.event.spi_out


def _ip_header(src: str, dst: str, payload_len: int) -> bytes:
    """A minimal outer header (IPv4 or IPv6, protocol UDP) for a datagram the socket already unwrapped."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, 64, 17, 0, s.packed, d.packed)
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, 17, 64, s.packed, d.packed)


_OK = int(Verdict.OK)


def make_gateway(config: DaemonConfig) -> Any:
    """The esp TUN gateway the ``[gateway]`` section describes (not started), or None without one."""
    g = config.gateway
    if g is None:
        return None
    from esp.dataplane import ESP_OVERHEAD_MAX
    from esp.gateway import Gateway, GatewayConfig
    defaults = GatewayConfig.__dataclass_fields__
    # A slot holds the largest inner packet plus ESP: a jumbo mtu/outer_mtu gets slots to match instead of
    # the TUN MTU being capped (or GatewayConfig refusing the mtu).
    slot = max(defaults["slot_size"].default, max(g.mtu or 0, g.outer_mtu or 0) + ESP_OVERHEAD_MAX)
    return Gateway(GatewayConfig(local_addr=config.addresses[0], tun_name=g.tun_name, tun_addresses=g.tun_addresses,
                                 routes=g.routes, mtu=g.mtu, outer_mtu=g.outer_mtu, offload=g.offload,
                                 batch_size=g.batch_size, slot_size=slot, nat_port=config.nat_port,
                                 raw_esp=g.raw_esp, ike_socket=True))


# --------------------------------------------------------------------------------------------------------
# Installation and ESP traffic


class Kernel:
    """The installed CHILD_SAs of one daemon, keyed by inbound SPI, and the ESP that flows through them.

    ``now()`` is the daemon's loop clock, ``call_later(delay, fn, *args)`` its timer (None: no grace periods),
    ``send_esp_many(items)`` the adapter's batched ESP-in-UDP send; ``on_packets(packets, child)`` receives
    decrypted inner packets (without it they are counted and dropped).
    """

    def __init__(self, dataplane: Dataplane, *, now: Callable[[], float],
                 send_esp_many: Callable[[list[tuple[Any, tuple[str, int], int]]], int],
                 call_later: Callable[..., Any] | None = None,
                 on_packets: Callable[[list[bytes], InstalledChild | None], None] | None = None,
                 replay_window: int = REPLAY_WINDOW, backend: str | None = None) -> None:
        self.dataplane = dataplane
        self.now = now
        self.send_esp_many = send_esp_many
        self.call_later = call_later
        self.on_packets = on_packets
        self.replay_window = replay_window
        self.backend = backend
        self.children: dict[int, InstalledChild] = {}  # by inbound SPI
        self.by_out: dict[int, int] = {}  # outbound SPI -> inbound SPI
        self.counters: dict[str, int] = {"esp_in_ok": 0, "esp_in_dropped": 0, "esp_out_ok": 0,
                                         "esp_out_dropped": 0, "inner_undelivered": 0}
        self._policy_seq = 0
        self._child_seq = 0  # CHILD_SA unique ids (list-sas "#N")

    # -- installation ----------------------------------------------------------------------------------------
    def install(self, ev: ChildSaEstablished) -> InstalledChild:
        """Install a new CHILD_SA (a rekey's successor: inbound only, outbound on :meth:`activate_outbound`).

        Raises :class:`InstallError` with the reason when esp cannot carry it; nothing is installed then."""
        now = self.now()
        try:
            p_in, p_out = sa_params(ev, replay_window=self.replay_window, backend=self.backend)
            sa_in, sa_out = Sa(p_in), Sa(p_out)
        except Exception as exc:  # a suite esp cannot run
            raise InstallError(f"cannot install ESP SAs: {exc}") from exc
        old = self.children.get(ev.replaces) if ev.replaces is not None else None
        if old is not None:
            policy = old.policy
            self.dataplane.install_sa(sa_in, policy, old.selectors)
            child = InstalledChild(ev, policy, sa_in, sa_out, now, old.selectors, outbound_active=False,
                                   reqid=old.reqid)
        else:
            sels = selectors_for(ev.local_ts, ev.remote_ts)
            if not sels:
                raise InstallError(f"traffic selectors {ev.local_ts} === {ev.remote_ts} give no usable selector")
            self._policy_seq += 1
            policy = f"{ev.peer}/{ev.child}/{self._policy_seq}"
            self.dataplane.add_policy(Policy(policy, sels))
            self.dataplane.install_sa(sa_in, policy, sels)
            self.dataplane.install_sa(sa_out, policy)
            child = InstalledChild(ev, policy, sa_in, sa_out, now, sels, outbound_active=True,
                                   reqid=self._policy_seq)
        self._child_seq += 1
        child.unique_id = self._child_seq
        self.children[ev.spi_in] = child
        self.by_out[ev.spi_out] = ev.spi_in
        return child

    def activate_outbound(self, new: InstalledChild, old: InstalledChild | None) -> None:
        """Move outbound traffic to a rekey's successor (make-before-break)."""
        if new.outbound_active:
            return
        if old is not None and old.spi_out in self.dataplane.sad.snapshot.outbound_by_spi:
            self.dataplane.rekey_sa(old.spi_out, new.sa_out)
        else:
            self.dataplane.install_sa(new.sa_out, new.policy)
        new.outbound_active = True
        if old is not None:
            old.state = "REKEYED"
            old.outbound_active = False
        log.info("CHILD_SA %s{%d}: outbound moved to SPI %08x", new.event.child, new.event.ike_id, new.spi_out)

    def deleted(self, ev: ChildSaDeleted) -> InstalledChild | None:
        """The core deleted a CHILD_SA: remove it (after a rekey, its inbound SA lingers for a grace period)."""
        child = self.children.get(ev.spi_in)
        if child is None:
            return None
        # Safety net for a core that deletes an SA still carrying our traffic without a ChildSaRekeyed first:
        # its successor takes over (make-before-break either way). Only when the deleted SA is still the active
        # one: after a rekey collision (RFC 7296 2.8.1) the core has already moved outbound to the winner, and
        # the losing successor (also "replacing" this SA) must never be bound, or the policy loses its SA when
        # the loser is deleted a moment later (unknown-SPI drops at the peer).
        if child.outbound_active:
            pending = [c for c in self.children.values()
                       if c.event.replaces == ev.spi_in and not c.outbound_active and c.state == "INSTALLED"]
            if pending:
                self.activate_outbound(pending[-1], child)
        self.uninstall(child, inbound_grace=REKEY_INBOUND_GRACE if ev.reason == "rekeyed" else 0.0)
        return child

    def _remove_inbound(self, spi: int) -> None:
        with contextlib.suppress(KeyError):
            self.dataplane.remove_sa(spi, "in")

    def uninstall(self, child: InstalledChild, inbound_grace: float = 0.0) -> None:
        """Remove a CHILD_SA from the data plane. After a rekey the old inbound SA keeps accepting for
        ``inbound_grace`` seconds: packets the peer sent on it before switching are still in flight, and
        dropping them as unknown SPIs would break make-before-break."""
        snap = self.dataplane.sad.snapshot
        if child.spi_in in snap.inbound_by_spi:
            if inbound_grace > 0 and self.call_later is not None:
                self.call_later(inbound_grace, self._remove_inbound, child.spi_in)
            else:
                self._remove_inbound(child.spi_in)
        out = snap.outbound_by_spi.get(child.spi_out)
        if out is not None and out.sa is child.sa_out:
            with contextlib.suppress(KeyError):
                self.dataplane.remove_sa(child.spi_out, "out")
        self.children.pop(child.spi_in, None)
        self.by_out.pop(child.spi_out, None)
        if not any(c.policy == child.policy for c in self.children.values()):
            with contextlib.suppress(KeyError, ValueError):
                self.dataplane.remove_policy(child.policy)

    def expired_child(self, ev: Any) -> InstalledChild | None:
        """The installed CHILD_SA a data plane expiry event is about, or None (not ours, already replaced)."""
        if not isinstance(ev, SaExpired):
            return None
        spi_in = ev.spi if ev.direction == "in" else self.by_out.get(ev.spi)
        child = self.children.get(spi_in) if spi_in is not None else None
        if child is None or child.state != "INSTALLED":
            return None
        return child

    # -- ESP -----------------------------------------------------------------------------------------------
    def esp_spi_known(self, spi: int) -> bool:
        """Whether an ESP-in-UDP datagram's SPI has an inbound SA (one replaced by a rekey counts for its
        grace period): the endpoint counts the others as ``esp_unknown_spi``, not as ESP, and drops them."""
        return spi in self.dataplane.sad.snapshot.inbound_by_spi

    def on_esp(self, packets: list[tuple[bytes, tuple[str, int]]], local: tuple[str, int]) -> None:
        """ESP datagrams from the socket: give each the outer IP + UDP header the data plane expects (the
        socket stripped it), decrypt the burst as one batch, hand the inner packets on."""
        wrapped = []
        prefixes: dict[str, tuple[bytes, int] | None] = {}
        for data, addr in packets:
            if addr[0] not in prefixes:
                try:
                    h = _ip_header(addr[0], local[0], 0)
                    prefixes[addr[0]] = (h, 2 if len(h) == 20 else 4)
                except ValueError:  # a peer of another family than the socket: not ours
                    prefixes[addr[0]] = None
            pre = prefixes[addr[0]]
            if pre is None:
                self.counters["esp_in_dropped"] += 1
                continue
            hdr, where = pre
            ulen = 8 + len(data)
            if where == 2:  # IPv4 total length at offset 2; IPv6 payload length at offset 4
                hdr = hdr[:2] + (20 + ulen).to_bytes(2, "big") + hdr[4:]
            else:
                hdr = hdr[:4] + ulen.to_bytes(2, "big") + hdr[6:]
            wrapped.append(hdr + struct.pack("!HHHH", addr[1], local[1], ulen, 0) + data)
        if not wrapped:
            return
        batch = PacketBatch.from_packets(wrapped)
        out = PacketBatch.empty(count=len(wrapped), slot_size=max(len(p) for p in wrapped) + 64)
        verdicts = np.asarray(self.dataplane.inbound(batch, out, now=self.now()))
        ok = np.flatnonzero(verdicts == _OK)
        self.counters["esp_in_ok"] += len(ok)
        self.counters["esp_in_dropped"] += len(wrapped) - len(ok)
        if len(ok):
            buf, offs, lens = out.buf, out.offsets, out.lengths
            inner = [buf[int(offs[i]):int(offs[i]) + int(lens[i])].tobytes() for i in ok]
            if self.on_packets is None:
                self.counters["inner_undelivered"] += len(inner)
            else:
                spi = int.from_bytes(packets[int(ok[0])][0][:4], "big") if len(ok) == len(packets) else None
                self.on_packets(inner, self.children.get(spi) if spi is not None else None)

    def send(self, packets: list[bytes]) -> int:
        """Encrypt inner IP packets by the SPD and send the ESP-in-UDP result; returns how many left."""
        if not packets:
            return 0
        batch = PacketBatch.from_packets(packets)
        out = PacketBatch.empty(count=len(packets), slot_size=max(len(p) for p in packets) + 128)
        verdicts = np.asarray(self.dataplane.outbound(batch, out, now=self.now()))
        ok = np.flatnonzero(verdicts == _OK)
        mv = memoryview(out.buf)
        # The outer IP + UDP header says where each packet goes; the socket sends only the ESP after it.
        routes: dict[bytes, tuple[int, tuple[str, int], int] | None] = {}
        items: list[tuple[Any, tuple[str, int], int]] = []
        for off, ln in zip(out.offsets[ok].tolist(), out.lengths[ok].tolist()):
            v4 = mv[off] >> 4 == 4
            hl = (mv[off] & 0x0F) * 4 if v4 else 40
            key = bytes(mv[off + 16:off + 20]) + bytes(mv[off + hl:off + hl + 4]) + bytes((hl, mv[off + 9])) \
                if v4 else bytes(mv[off + 24:off + 40]) + bytes(mv[off + hl:off + hl + 4]) + bytes((hl, mv[off + 6]))
            if key not in routes:
                proto = key[-1]
                if proto != 17:  # raw ESP needs the gateway's raw socket; not on this path
                    route = None
                else:
                    raw = key[:4] if v4 else key[:16]
                    dst = socket.inet_ntop(socket.AF_INET if v4 else socket.AF_INET6, raw)
                    sport, dport = struct.unpack_from("!HH", key, len(raw))
                    route = (hl + 8, (dst, dport), sport)
                routes[key] = route
            route = routes[key]
            if route is None:
                continue
            skip, addr, sport = route
            items.append((mv[off + skip:off + ln], addr, sport))
        sent = self.send_esp_many(items) if items else 0
        self.counters["esp_out_ok"] += sent
        self.counters["esp_out_dropped"] += len(packets) - sent
        return sent
