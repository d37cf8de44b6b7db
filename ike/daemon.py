"""The IKE daemon: the sans-I/O core, the UDP adapter, the ESP data plane and a control socket, in one loop.

Why here and nowhere else: the protocol core must not know the data plane (as charon reaches libipsec only
through kernel_ipsec), so this module plays kernel_ipsec. It turns every :class:`ChildSaEstablished` into two
ESP SAs through one mapping function, :func:`sa_params`, installs them into an :class:`esp.dataplane.Dataplane`
(policy per CHILD_SA, make-before-break on rekeys: the new inbound SA first, the outbound switch when the core
says :class:`ChildSaRekeyed`, the old pair removed on :class:`ChildSaDeleted`), and feeds the data plane's soft
lifetime signals (bytes, packets) back to the core as ``child_sa_soft_expired``.

Without root and without a TUN device, ESP travels in UDP on the NAT-T socket the adapter owns: received ESP is
decrypted in batches by the data plane and the inner packets go to ``on_packets``; :meth:`Daemon.send` encrypts
inner packets and sends them. ``python -m ike demo`` runs on exactly this path.

Operators drive it through a unix socket speaking JSON lines (``python -m ike initiate|list-sas|rekey|
terminate``): one request object per line, one response object per line.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esp import Direction, Lifetime, Mode, PacketBatch, Sa, SaParams, UdpEncap, Verdict
from esp.dataplane import Dataplane
from esp.events import SaExpired
from esp.spd import Policy, Selector

from .aio import IkeEndpoint, open_udp_socket
from .config import DaemonConfig
from .core_config import TrafficSelector
from .events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeKeysDerived,
    IkeSaEstablished,
    IkeSaRekeyed,
    IkeSaTerminated,
)
from .keylog import KeyLog

__all__ = ["MAX_CONTROL_LINE", "ControlError", "Daemon", "InstalledChild", "make_gateway", "sa_params", "selectors_for",
           "utc_wall_clock"]

log = logging.getLogger("ike.daemon")

#: Seconds an inbound SA replaced by a rekey still accepts packets sent before the peer switched to the new one.
REKEY_INBOUND_GRACE = 2.0

#: Longest control request accepted (bytes); a longer line closes the connection.
MAX_CONTROL_LINE = 64 * 1024
#: Concurrent control connections.
MAX_CONTROL_CLIENTS = 16
#: Default anti-replay window of inbound SAs (strongSwan's default is 32; Linux's 32 too; 64 costs nothing).
REPLAY_WINDOW = 64
#: First delay before re-initiating a lost start_action = "start" peer, doubled per failure up to the max.
RESTART_DELAY = 5.0
RESTART_DELAY_MAX = 120.0
#: Deleted IKE_SAs remembered (for a late ``initiate`` reply or ``terminate`` status); older ones are dropped.
MAX_DELETED_RECORDS = 256
#: How long ``stop()`` waits for the peers to answer our DELETEs.
STOP_GRACE = 2.0


class ControlError(Exception):
    """A control request that cannot be carried out; the message goes back to the client."""


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


# --------------------------------------------------------------------------------------------------------
# State kept per CHILD_SA and IKE_SA


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


def utc_wall_clock(_now: float) -> datetime.datetime:
    """What the daemon gives the core as CoreConfig.wall_clock: the real UTC time (certificate validity)."""
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class IkeSaRecord:
    ike_id: int
    peer: str
    state: str = "CONNECTING"
    established: IkeSaEstablished | None = None
    established_at: float | None = None
    spi_i: int = 0
    spi_r: int = 0
    proposal: str = ""
    last_error: str = ""
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    #: (sequence number, outcome) of the last success / failure, for waiters that arrive after the event
    result: tuple[int, dict[str, Any]] | None = None
    error: tuple[int, str] | None = None


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
# The daemon


class Daemon:
    """One IKE daemon. ``dispatcher`` and ``dataplane`` can be injected (tests, a gateway's data plane).

    ``on_packets(packets, child)`` receives decrypted inner packets (a list of bytes) with the
    :class:`InstalledChild` they came in on; without it they are counted and dropped.
    """

    def __init__(self, config: DaemonConfig, *, dispatcher: Any = None, dataplane: Dataplane | None = None,
                 on_packets: Callable[[list[bytes], InstalledChild | None], None] | None = None,
                 key_log: KeyLog | None = None, replay_window: int = REPLAY_WINDOW,
                 backend: str | None = None, gateway: Any = None) -> None:
        if dispatcher is None:
            from .dispatcher import Dispatcher
            core_cfg = config.core
            if core_cfg.wall_clock is None:  # the daemon owns the clocks; the core reads none
                core_cfg = dataclasses.replace(core_cfg, wall_clock=utc_wall_clock)
            dispatcher = Dispatcher(core_cfg)
        self.config = config
        self.core = dispatcher
        #: an esp.gateway.Gateway (TUN + ESP threads) whose data plane we key; it owns the NAT-T port
        self.gateway = gateway
        if gateway is not None:
            dataplane = gateway.dataplane
        self.dataplane = dataplane if dataplane is not None else Dataplane()
        self.dataplane.on_event = self._dataplane_event
        self.on_packets = on_packets
        self.replay_window = replay_window
        self.backend = backend
        self.key_log = key_log if key_log is not None else (KeyLog(config.key_log) if config.key_log else None)
        self.endpoint = IkeEndpoint(self.core, on_event=self._on_event, on_esp=self._on_esp,
                                    plain_ports={500}, esp_spi_known=self._esp_spi_known)
        self.children: dict[int, InstalledChild] = {}  # by inbound SPI
        self._by_out: dict[int, int] = {}  # outbound SPI -> inbound SPI
        self.ike_sas: dict[int, IkeSaRecord] = {}
        self.events: list[IkeEvent] = []  # recent events, bounded (for tests and `list-sas --events`)
        #: every event ever, by class name: the exchanges' outcomes (metrics read it, ike.metrics)
        self.event_counts: collections.Counter[str] = collections.Counter()
        self.max_events = 1000
        self.counters: dict[str, int] = {"esp_in_ok": 0, "esp_in_dropped": 0, "esp_out_ok": 0,
                                         "esp_out_dropped": 0, "inner_undelivered": 0}
        self._policy_seq = 0
        self._child_seq = 0  # CHILD_SA unique ids (list-sas "#N")
        #: peers kept up (start_action = "start"): re-initiated after a loss, with backoff
        self._keep_up: set[str] = set()
        self._restart: dict[str, asyncio.TimerHandle] = {}
        self._backoff: dict[str, float] = {}
        self._operator_terminated: set[int] = set()
        self._outcomes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: asyncio.AbstractServer | None = None
        self._control_clients = 0
        self._control_writers: set[asyncio.StreamWriter] = set()
        self._stopped: asyncio.Event | None = None
        self.control_path: Path | None = None

    # -- life cycle ----------------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def start(self, *, sockets: Iterable[Any] | None = None, control: bool = True,
                    initiate: Iterable[str] = ()) -> list[tuple[str, int]]:
        """Bind (or adopt ``sockets``), open the control socket, initiate ``initiate`` peers.

        Returns the bound addresses. Binding errors raise OSError before anything else happens.
        """
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if sockets is not None:
            if self.gateway is not None and not self.gateway.running:
                self.gateway.start()  # GatewayError (an OSError-like refusal) with the reason
            for s in sockets:
                await self.endpoint.add_socket(s)
        else:
            opened = []
            # With a gateway the NAT-T port is the gateway's: the kernel gives IKE (non-ESP marker) to its
            # ike_socket, which we read, and ESP to the data threads.
            ports = [p for p in self.config.bind_ports()
                     if self.gateway is None or p != self.config.nat_port]
            try:
                for addr in self.config.addresses:
                    for port in ports:
                        opened.append(open_udp_socket(addr, port))
            except OSError:
                for s in opened:
                    s.close()
                raise
            # The gateway's NAT-T sockets use SO_REUSEPORT (IKE/ESP split): start it only once our own ports
            # are ours, so a second daemon fails on "port in use" before joining the first one's group.
            if self.gateway is not None and not self.gateway.running:
                try:
                    self.gateway.start()  # GatewayError (an OSError-like refusal) with the reason
                except BaseException:
                    for s in opened:
                        s.close()
                    raise
            if self.gateway is not None and self.gateway.ike_socket is not None:
                opened.append(self.gateway.ike_socket)
            for s in opened:
                await self.endpoint.add_socket(s)
        if control:
            await self._start_control(self.config.control_socket)
        self._keep_up.update(self.config.auto_start)
        for peer in dict.fromkeys([*self.config.auto_start, *initiate]):
            self._try_initiate(peer)
        log.info("listening on %s", ", ".join(f"{h}[{p}]" for h, p in self.endpoint.addresses))
        if self.gateway is not None:
            st = self.gateway.stats
            # What the probes granted: an operator comparing throughput needs to know which path runs.
            tun = self.gateway.tun.name if self.gateway.tun is not None else "?"
            log.info("gateway %s: TUN MTU %s (outer %s), offloads: %s%s", tun, st.tun_mtu, st.outer_mtu,
                     ", ".join(st.offloads) or "none",
                     f" ({st.offload_fallback})" if st.offload_fallback else "")
        return self.endpoint.addresses

    async def run(self) -> None:
        """Serve until :meth:`stop` (or a signal handler calling it)."""
        assert self._stopped is not None, "start() first"
        await self._stopped.wait()

    async def stop(self, *, delete: bool = True, grace: float = STOP_GRACE) -> None:
        """Send DELETE for every IKE_SA (as charon does on SIGTERM), wait up to ``grace`` for the answers, close."""
        self._keep_up.clear()  # nothing is re-initiated from here on
        for handle in self._restart.values():
            handle.cancel()
        self._restart.clear()
        if delete:
            live = [r.ike_id for r in self.ike_sas.values() if r.state in ("ESTABLISHED", "CONNECTING")]
            for ike_id in live:
                with contextlib.suppress(Exception):
                    self.endpoint.call(self.core.terminate, ike_id)
            deadline = self.now() + grace
            while any(self.ike_sas.get(i) and self.ike_sas[i].state != "DELETED" for i in live):
                if self.now() >= deadline:
                    break
                await asyncio.sleep(0.02)
        for child in list(self.children.values()):
            self._uninstall(child)
        if self._control is not None:
            self._control.close()
            for w in list(self._control_writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._control.wait_closed(), 1.0)
            self._control = None
            if self.control_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.control_path.unlink()
        self.endpoint.close()
        if self.gateway is not None:
            self.gateway.stop()
        if self.key_log is not None:
            self.key_log.close()
        if self._stopped is not None:
            self._stopped.set()

    # -- commands ------------------------------------------------------------------------------------------
    def initiate(self, peer: str, child: str | None = None) -> int:
        self.config.core.peer(peer)  # ConfigError for an unknown name
        ike_id = self.endpoint.call(self.core.initiate, peer, child=child) if child else \
            self.endpoint.call(self.core.initiate, peer)
        rec = self.ike_sas.get(ike_id)
        if rec is None:
            self.ike_sas[ike_id] = IkeSaRecord(ike_id, peer)
            log.info("initiating IKE_SA %s[%d] to %s", peer, ike_id, self.config.core.peer(peer).remote_addr)
        else:
            log.info("reusing IKE_SA %s[%d] (%s)", rec.peer, ike_id, rec.state)
        return ike_id

    async def initiate_and_wait(self, peer: str, child: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Initiate and wait (bounded) until the first CHILD_SA is up or the attempt failed."""
        start = self._outcomes
        known = set(self.ike_sas)
        ike_id = self.initiate(peer, child)
        rec = self.ike_sas[ike_id]
        if ike_id in known and child is None and rec.state == "ESTABLISHED":  # the core reused this IKE_SA
            out: dict[str, Any] = {"ike_id": ike_id, "state": rec.state, "reused": True}
            for c in self.children.values():
                if c.event.ike_id == ike_id and c.state == "INSTALLED":
                    out.update(child=c.event.child, spi_in=f"{c.spi_in:08x}", spi_out=f"{c.spi_out:08x}")
                    break
            return out
        if rec.error is not None and rec.error[0] > start:
            raise ControlError(rec.error[1])
        if rec.result is not None and rec.result[0] > start:
            return rec.result[1]
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        rec.waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ControlError(f"{peer}[{ike_id}]: not established within {timeout:g}s") from None

    def rekey_child(self, spi_in: int) -> None:
        if spi_in not in self.children:
            raise ControlError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        self.endpoint.call(self.core.rekey_child, spi_in)

    def rekey_ike(self, ike_id: int) -> None:
        if ike_id not in self.ike_sas:
            raise ControlError(f"no IKE_SA #{ike_id}")
        self.endpoint.call(self.core.rekey_ike, ike_id)

    def delete_child(self, spi_in: int) -> None:
        if spi_in not in self.children:
            raise ControlError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        self.endpoint.call(self.core.delete_child, spi_in)

    def terminate(self, ike_id: int) -> None:
        if ike_id not in self.ike_sas:
            raise ControlError(f"no IKE_SA #{ike_id}")
        self._operator_terminated.add(ike_id)  # an operator's terminate is not a loss to repair
        self.endpoint.call(self.core.terminate, ike_id)

    # -- keeping start_action = "start" peers up -------------------------------------------------------------
    def _try_initiate(self, peer: str) -> None:
        self._restart.pop(peer, None)
        if self._stopped is None or self._stopped.is_set() or self.endpoint.closed:
            return
        if any(r.peer == peer and r.state in ("CONNECTING", "ESTABLISHED") for r in self.ike_sas.values()):
            return
        try:
            self.initiate(peer)
        except Exception as exc:  # e.g. no route yet: try again later
            log.warning("initiating %s failed: %s", peer, exc)
            self._schedule_restart(peer)

    def _schedule_restart(self, peer: str) -> None:
        if peer not in self._keep_up or peer in self._restart or self._loop is None:
            return
        if self._stopped is not None and self._stopped.is_set():
            return
        delay = self._backoff.get(peer, RESTART_DELAY)
        self._backoff[peer] = min(delay * 2, RESTART_DELAY_MAX)
        log.info("re-initiating %s in %.0f s", peer, delay)
        self._restart[peer] = self._loop.call_later(delay, self._try_initiate, peer)

    # -- events from the core ------------------------------------------------------------------------------
    def _on_event(self, ev: IkeEvent) -> None:
        self.events.append(ev)
        self.event_counts[type(ev).__name__] += 1
        if len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events]
        if self.key_log is not None and isinstance(ev, (IkeKeysDerived, ChildSaEstablished)):
            self.key_log.record(ev)
        handler = _HANDLERS.get(type(ev))
        if handler is not None:
            handler(self, ev)

    def _record(self, ev: IkeEvent) -> IkeSaRecord:
        rec = self.ike_sas.get(ev.ike_id)
        if rec is None:
            rec = self.ike_sas[ev.ike_id] = IkeSaRecord(ev.ike_id, ev.peer)
        return rec

    def _ike_established(self, ev: IkeSaEstablished) -> None:
        rec = self._record(ev)
        self._backoff.pop(ev.peer, None)
        rec.state, rec.established, rec.established_at = "ESTABLISHED", ev, self.now()
        rec.spi_i, rec.spi_r, rec.proposal = ev.spi_i, ev.spi_r, ev.proposal
        log.info("IKE_SA %s[%d] established between %s[%s]...%s[%s]", ev.peer, ev.ike_id, ev.local_addr[0],
                 ev.local_id, ev.remote_addr[0], ev.remote_id)
        peer = self.config.core.peer(ev.peer) if any(p.name == ev.peer for p in self.config.core.peers) else None
        if peer is not None and not any(c.start for c in peer.children):
            self._wake(rec, {"ike_id": ev.ike_id, "state": "ESTABLISHED"})

    def _ike_rekeyed(self, ev: IkeSaRekeyed) -> None:
        rec = self._record(ev)
        rec.spi_i, rec.spi_r, rec.proposal = ev.spi_i, ev.spi_r, ev.proposal
        rec.established_at = self.now()
        log.info("IKE_SA %s[%d] rekeyed: %016x_i %016x_r", ev.peer, ev.ike_id, ev.spi_i, ev.spi_r)

    def _ike_terminated(self, ev: IkeSaTerminated) -> None:
        rec = self._record(ev)
        rec.state, rec.last_error = "DELETED", ev.reason
        for child in [c for c in self.children.values() if c.event.ike_id == ev.ike_id]:
            self._uninstall(child)
        log.info("IKE_SA %s[%d] terminated: %s", ev.peer, ev.ike_id, ev.reason)
        self._fail(rec, f"IKE_SA terminated: {ev.reason}")
        if ev.ike_id in self._operator_terminated:
            self._operator_terminated.discard(ev.ike_id)
        else:
            self._schedule_restart(ev.peer)
        gone = [i for i, r in self.ike_sas.items() if r.state == "DELETED" and i != ev.ike_id]
        for i in gone[: max(0, len(gone) - MAX_DELETED_RECORDS)]:  # bounded history, oldest first
            del self.ike_sas[i]

    def _auth_failed(self, ev: AuthenticationFailed) -> None:
        rec = self._record(ev)
        if rec.state == "CONNECTING":
            rec.state = "FAILED"
            self._schedule_restart(ev.peer)
        rec.last_error = f"authentication failed: {ev.reason}"
        log.warning("IKE_SA %s[%d] with %s: %s (%s side)", ev.peer, ev.ike_id, ev.remote_addr[0], rec.last_error,
                    "our" if ev.local_side else "peer's")
        self._fail(rec, rec.last_error)

    def _child_failed(self, ev: ChildSaFailed) -> None:
        rec = self._record(ev)
        rec.last_error = f"CHILD_SA {ev.child} failed: {ev.reason}"
        log.warning("%s[%d]: %s", ev.peer, ev.ike_id, rec.last_error)
        self._fail(rec, rec.last_error)

    def _child_established(self, ev: ChildSaEstablished) -> None:
        now = self.now()
        try:
            p_in, p_out = sa_params(ev, replay_window=self.replay_window, backend=self.backend)
            sa_in, sa_out = Sa(p_in), Sa(p_out)
        except Exception as exc:  # a suite esp cannot run: refuse loudly, tear the CHILD_SA down
            log.error("CHILD_SA %s{%08x}: cannot install ESP SAs: %s", ev.child, ev.spi_in, exc)
            with contextlib.suppress(Exception):
                self.endpoint.call(self.core.delete_child, ev.spi_in)
            self._fail(self._record(ev), f"CHILD_SA {ev.child}: cannot install ESP SAs: {exc}")
            return
        old = self.children.get(ev.replaces) if ev.replaces is not None else None
        if old is not None:
            policy = old.policy
            self.dataplane.install_sa(sa_in, policy, old.selectors)
            child = InstalledChild(ev, policy, sa_in, sa_out, now, old.selectors, outbound_active=False,
                                   reqid=old.reqid)
        else:
            self._policy_seq += 1
            policy = f"{ev.peer}/{ev.child}/{self._policy_seq}"
            sels = selectors_for(ev.local_ts, ev.remote_ts)
            if not sels:
                log.error("CHILD_SA %s: traffic selectors %s === %s give no usable selector", ev.child,
                          ev.local_ts, ev.remote_ts)
                return
            self.dataplane.add_policy(Policy(policy, sels))
            self.dataplane.install_sa(sa_in, policy, sels)
            self.dataplane.install_sa(sa_out, policy)
            child = InstalledChild(ev, policy, sa_in, sa_out, now, sels, outbound_active=True,
                                   reqid=self._policy_seq)
        self._child_seq += 1
        child.unique_id = self._child_seq
        self.children[ev.spi_in] = child
        self._by_out[ev.spi_out] = ev.spi_in
        ts = " === ".join(", ".join(str(t) for t in side) for side in (ev.local_ts, ev.remote_ts))
        log.info("CHILD_SA %s{%d} established with SPIs %08x_i %08x_o and TS %s", ev.child, ev.ike_id,
                 ev.spi_in, ev.spi_out, ts)
        rec = self._record(ev)
        self._wake(rec, {"ike_id": ev.ike_id, "state": rec.state, "child": ev.child,
                         "spi_in": f"{ev.spi_in:08x}", "spi_out": f"{ev.spi_out:08x}"})

    def _child_rekeyed(self, ev: ChildSaRekeyed) -> None:
        new = self.children.get(ev.spi_in)
        old = self.children.get(ev.old_spi_in)
        if new is None:
            log.warning("ChildSaRekeyed for unknown CHILD_SA %08x", ev.spi_in)
            return
        self._activate_outbound(new, old)

    def _activate_outbound(self, new: InstalledChild, old: InstalledChild | None) -> None:
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

    def _child_deleted(self, ev: ChildSaDeleted) -> None:
        child = self.children.get(ev.spi_in)
        if child is None:
            return
        # Safety net for a core that deletes an SA still carrying our traffic without a ChildSaRekeyed first:
        # its successor takes over (make-before-break either way). Only when the deleted SA is still the active
        # one: after a rekey collision (RFC 7296 2.8.1) the core has already moved outbound to the winner, and
        # the losing successor (also "replacing" this SA) must never be bound, or the policy loses its SA when
        # the loser is deleted a moment later (unknown-SPI drops at the peer).
        if child.outbound_active:
            pending = [c for c in self.children.values()
                       if c.event.replaces == ev.spi_in and not c.outbound_active and c.state == "INSTALLED"]
            if pending:
                self._activate_outbound(pending[-1], child)
        self._uninstall(child, inbound_grace=REKEY_INBOUND_GRACE if ev.reason == "rekeyed" else 0.0)
        log.info("CHILD_SA %s{%d} with SPIs %08x_i %08x_o deleted (%s)", ev.child, ev.ike_id, ev.spi_in,
                 ev.spi_out, ev.reason)

    def _remove_inbound(self, spi: int) -> None:
        with contextlib.suppress(KeyError):
            self.dataplane.remove_sa(spi, "in")

    def _uninstall(self, child: InstalledChild, inbound_grace: float = 0.0) -> None:
        """Remove a CHILD_SA from the data plane. After a rekey the old inbound SA keeps accepting for
        ``inbound_grace`` seconds: packets the peer sent on it before switching are still in flight, and
        dropping them as unknown SPIs would break make-before-break."""
        snap = self.dataplane.sad.snapshot
        if child.spi_in in snap.inbound_by_spi:
            if inbound_grace > 0 and self._loop is not None:
                self._loop.call_later(inbound_grace, self._remove_inbound, child.spi_in)
            else:
                self._remove_inbound(child.spi_in)
        out = snap.outbound_by_spi.get(child.spi_out)
        if out is not None and out.sa is child.sa_out:
            with contextlib.suppress(KeyError):
                self.dataplane.remove_sa(child.spi_out, "out")
        self.children.pop(child.spi_in, None)
        self._by_out.pop(child.spi_out, None)
        if not any(c.policy == child.policy for c in self.children.values()):
            with contextlib.suppress(KeyError, ValueError):
                self.dataplane.remove_policy(child.policy)

    def _wake(self, rec: IkeSaRecord, result: dict[str, Any]) -> None:
        self._outcomes += 1
        rec.result = (self._outcomes, result)
        for fut in rec.waiters:
            if not fut.done():
                fut.set_result(result)
        rec.waiters.clear()

    def _fail(self, rec: IkeSaRecord, reason: str) -> None:
        self._outcomes += 1
        rec.error = (self._outcomes, f"{rec.peer}[{rec.ike_id}]: {reason}")
        for fut in rec.waiters:
            if not fut.done():
                fut.set_exception(ControlError(f"{rec.peer}[{rec.ike_id}]: {reason}"))
        rec.waiters.clear()

    # -- the data plane ------------------------------------------------------------------------------------
    def _dataplane_event(self, ev: Any) -> None:
        """Called by the data plane, possibly from another thread: hop onto the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._expired, ev)

    def _expired(self, ev: Any) -> None:
        if not isinstance(ev, SaExpired):
            return
        spi_in = ev.spi if ev.direction == "in" else self._by_out.get(ev.spi)
        if spi_in is None or spi_in not in self.children:
            return
        child = self.children[spi_in]
        if child.state != "INSTALLED":
            return
        log.info("CHILD_SA %s{%08x}: %s %s lifetime reached (%s)", child.event.child, spi_in,
                 "hard" if ev.hard else "soft", ev.reason.value, ev.direction)
        try:
            if ev.hard:
                self.endpoint.call(self.core.delete_child, spi_in)
            else:
                self.endpoint.call(self.core.child_sa_soft_expired, spi_in)
        except Exception:
            log.exception("core refused the expiry of %08x", spi_in)

    def _esp_spi_known(self, spi: int) -> bool:
        """Whether an ESP-in-UDP datagram's SPI has an inbound SA (one replaced by a rekey counts for its
        grace period): the endpoint counts the others as ``esp_unknown_spi``, not as ESP, and drops them."""
        return spi in self.dataplane.sad.snapshot.inbound_by_spi

    def _on_esp(self, packets: list[tuple[bytes, tuple[str, int]]], local: tuple[str, int]) -> None:
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
        sent = self.endpoint.send_esp_many(items) if items else 0
        self.counters["esp_out_ok"] += sent
        self.counters["esp_out_dropped"] += len(packets) - sent
        return sent

    # -- views ---------------------------------------------------------------------------------------------
    def list_sas(self) -> list[dict[str, Any]]:
        """IKE_SAs with their CHILD_SAs, counters and lifetimes, JSON-ready (what ``list-sas`` prints)."""
        now = self.now()
        try:  # the core's own view (state names, rekey deadlines) where it has one
            infos = {i.ike_id: i for i in self.core.list_sas()}
            authoritative = True
        except Exception:
            infos, authoritative = {}, False
        kids = {k.spi_in: k for i in infos.values() for k in getattr(i, "children", ())}
        out = []
        for rec in sorted(self.ike_sas.values(), key=lambda r: r.ike_id):
            if rec.state == "DELETED" or (authoritative and rec.ike_id not in infos):
                continue  # gone (or a failed attempt the core has forgotten)
            e = rec.established
            item: dict[str, Any] = {
                "name": rec.peer, "ike_id": rec.ike_id, "state": rec.state, "version": 2,
                "spi_i": f"{rec.spi_i:016x}", "spi_r": f"{rec.spi_r:016x}", "proposal": rec.proposal,
            }
            if e is not None:
                peer = next((p for p in self.config.core.peers if p.name == rec.peer), None)
                item.update({
                    "initiator": e.initiator, "local_host": e.local_addr[0], "local_port": e.local_addr[1],
                    "remote_host": e.remote_addr[0], "remote_port": e.remote_addr[1],
                    "local_id": str(e.local_id), "remote_id": str(e.remote_id), "auth": e.auth_method,
                    "nat_local": e.nat_local and not e.nat_fake, "nat_remote": e.nat_remote,
                    "encap_forced": e.nat_fake,
                    "established": round(now - (rec.established_at or now)),
                    "rekey_in": (round(peer.rekey_time - (now - (rec.established_at or now)))
                                 if peer is not None and peer.rekey_time else None),
                })
            info = infos.get(rec.ike_id)
            if info is not None:
                item["state"] = str(getattr(info.state, "name", info.state)).upper()
                if not (rec.spi_i or rec.spi_r):  # not established yet: the core knows our SPI already
                    item.update(spi_i=f"{info.spi_i:016x}", spi_r=f"{info.spi_r:016x}", initiator=info.initiator)
                    if not rec.proposal and info.proposal:
                        item["proposal"] = info.proposal
                if info.rekey_at is not None:
                    item["rekey_in"] = max(0, round(info.rekey_at - now))
            if rec.last_error:
                item["last_error"] = rec.last_error
            item["child_sas"] = [self._child_view(c, now, kids.get(c.spi_in)) for c in self.children.values()
                                 if c.event.ike_id == rec.ike_id]
            out.append(item)
        return out

    def _child_view(self, c: InstalledChild, now: float, info: Any = None) -> dict[str, Any]:
        ev = c.event
        ci, co = c.sa_in.counters, c.sa_out.counters
        age = now - c.installed_at
        view = {
            "name": ev.child, "unique_id": c.unique_id, "reqid": c.reqid,
            "state": c.state, "mode": ev.mode.upper(), "protocol": "ESP", "encap": ev.encap,
            "suite": ev.suite, "esn": ev.esn, "spi_in": f"{ev.spi_in:08x}", "spi_out": f"{ev.spi_out:08x}",
            "bytes_in": ci.bytes, "packets_in": ci.packets, "bytes_out": co.bytes, "packets_out": co.packets,
            "dropped_in": ci.auth_failed + ci.replayed + ci.malformed + ci.pad_errors,
            "installed": round(age),
            "rekey_in": round(ev.rekey_time - age) if ev.rekey_time else None,
            "life_in": round(ev.life_time - age) if ev.life_time else None,
            "rekey_bytes": ev.rekey_bytes, "life_bytes": ev.life_bytes,
            "rekey_packets": ev.rekey_packets, "life_packets": ev.life_packets,
            "local_ts": [str(t) for t in ev.local_ts], "remote_ts": [str(t) for t in ev.remote_ts],
            "outbound_active": c.outbound_active,
        }
        if info is not None:
            if info.rekey_at is not None:
                view["rekey_in"] = max(0, round(info.rekey_at - now))
            if info.expire_at is not None:
                view["life_in"] = max(0, round(info.expire_at - now))
        return view

    def stats(self) -> dict[str, Any]:
        dp = self.dataplane.counters()
        return {"endpoint": dict(self.endpoint.stats), "esp": dict(self.counters),
                "dataplane_in": {k: v for k, v in dp.inbound.items() if v},
                "dataplane_out": {k: v for k, v in dp.outbound.items() if v},
                "core": dict(getattr(self.core, "stats", {}) or {}),
                **({"gateway": {k: v for k, v in self.gateway.stats.as_dict().items() if k != "errors"}}
                   if self.gateway is not None else {})}

    # -- control socket ------------------------------------------------------------------------------------
    async def _start_control(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            # A stale socket from a crashed daemon; refuse to take over a live one.
            try:
                r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
                w.close()
                raise OSError(f"control socket {path} is in use by another daemon")
            except (ConnectionRefusedError, FileNotFoundError, asyncio.TimeoutError):
                path.unlink()
        old = os.umask(0o077)
        try:
            self._control = await asyncio.start_unix_server(self._control_client, path=str(path),
                                                            limit=MAX_CONTROL_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.control_path = path

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._control_clients >= MAX_CONTROL_CLIENTS:
            writer.close()
            return
        self._control_clients += 1
        self._control_writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(json.dumps({"ok": False, "error": "request too long"}).encode() + b"\n")
                    break
                if not line:
                    break
                reply = await self.handle_request(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._control_clients -= 1
            self._control_writers.discard(writer)
            writer.close()

    async def handle_request(self, line: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """One control request -> one reply; never raises."""
        try:
            req = line if isinstance(line, dict) else json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ControlError('a request is a JSON object with a "cmd" string')
            handler = _COMMANDS.get(req["cmd"])
            if handler is None:
                raise ControlError(f"unknown command {req['cmd']!r}; known: {', '.join(sorted(_COMMANDS))}")
            result = await handler(self, req)
            return {"ok": True, **result}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        except (RecursionError, MemoryError):  # json.loads recurses per nesting level
            return {"ok": False, "error": "not a request: JSON nested too deep"}
        except Exception as exc:  # a bug must not kill the daemon; the client sees what happened
            log.exception("control request failed")
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    # command handlers
    def _child_spi(self, req: dict[str, Any]) -> int:
        value = req.get("child")
        if value is None:
            raise ControlError('"child" (inbound SPI in hex, or a CHILD_SA name) is required')
        if isinstance(value, int):
            return value
        text = str(value)
        named = [c.spi_in for c in self.children.values() if c.event.child == text and c.state == "INSTALLED"]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise ControlError(f"several CHILD_SAs are named {text!r}; give the inbound SPI")
        try:
            return int(text, 16)
        except ValueError:
            raise ControlError(f"no CHILD_SA {text!r}") from None

    def _ike_id(self, req: dict[str, Any]) -> int:
        if isinstance(req.get("ike_id"), int):
            return req["ike_id"]
        peer = req.get("ike") or req.get("peer")
        if isinstance(peer, str):
            live = [r.ike_id for r in self.ike_sas.values() if r.peer == peer and r.state in ("CONNECTING", "ESTABLISHED")]
            if live:
                return live[-1]
            raise ControlError(f"no IKE_SA with {peer!r}")
        raise ControlError('"ike_id" or "ike" (the peer name) is required')

    async def _cmd_list_sas(self, req: dict[str, Any]) -> dict[str, Any]:
        sas = self.list_sas()
        if isinstance(req.get("ike"), str):
            sas = [s for s in sas if s["name"] == req["ike"]]
        return {"ike_sas": sas}

    async def _cmd_initiate(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = req.get("ike") or req.get("peer")
        if not isinstance(peer, str):
            raise ControlError('"ike" (the peer name) is required')
        if not any(p.name == peer for p in self.config.core.peers):
            raise ControlError(f"no peer named {peer!r}")
        timeout = float(req.get("timeout", 10.0))
        if not 0 < timeout <= 600:
            raise ControlError("timeout must be in (0, 600] seconds")
        child = req.get("child") if isinstance(req.get("child"), str) else None
        return await self.initiate_and_wait(peer, child, timeout)

    async def _cmd_rekey(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("child") is not None:
            spi = self._child_spi(req)
            self.rekey_child(spi)
            return {"rekeying": f"{spi:08x}"}
        ike_id = self._ike_id(req)
        self.rekey_ike(ike_id)
        rec = self.ike_sas[ike_id]
        return {"rekeying": ike_id, "ike": rec.peer, "spi_i": f"{rec.spi_i:016x}", "spi_r": f"{rec.spi_r:016x}"}

    async def _cmd_terminate(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("child") is not None:
            spi = self._child_spi(req)
            self.delete_child(spi)
            return {"deleting": f"{spi:08x}"}
        ike_id = self._ike_id(req)
        self.terminate(ike_id)
        timeout = float(req.get("timeout", 5.0))
        deadline = self.now() + min(max(timeout, 0.0), 60.0)
        while self.ike_sas[ike_id].state != "DELETED" and self.now() < deadline:
            await asyncio.sleep(0.02)
        return {"ike_id": ike_id, "state": self.ike_sas[ike_id].state}

    async def _cmd_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"stats": self.stats()}

    async def _cmd_list_conns(self, req: dict[str, Any]) -> dict[str, Any]:
        conns = []
        for p in self.config.core.peers:
            conns.append({"name": p.name, "remote_addr": p.remote_addr, "remote_port": p.remote_port,
                          "local_id": str(p.local_id), "remote_id": str(p.remote_id) if p.remote_id else None,
                          "ike_proposals": list(p.ike_proposals), "auth": p.auth,
                          "children": [{"name": c.name, "local_ts": [str(t) for t in c.local_ts],
                                        "remote_ts": [str(t) for t in c.remote_ts],
                                        "esp_proposals": list(c.esp_proposals), "mode": c.mode}
                                       for c in p.children]})
        return {"conns": conns}


_HANDLERS: dict[type, Callable[[Daemon, Any], None]] = {
    IkeSaEstablished: Daemon._ike_established,
    IkeSaRekeyed: Daemon._ike_rekeyed,
    IkeSaTerminated: Daemon._ike_terminated,
    AuthenticationFailed: Daemon._auth_failed,
    ChildSaEstablished: Daemon._child_established,
    ChildSaRekeyed: Daemon._child_rekeyed,
    ChildSaDeleted: Daemon._child_deleted,
    ChildSaFailed: Daemon._child_failed,
}

_COMMANDS: dict[str, Callable[[Daemon, dict[str, Any]], Any]] = {
    "list-sas": Daemon._cmd_list_sas,
    "initiate": Daemon._cmd_initiate,
    "rekey": Daemon._cmd_rekey,
    "terminate": Daemon._cmd_terminate,
    "stats": Daemon._cmd_stats,
    "list-conns": Daemon._cmd_list_conns,
}
