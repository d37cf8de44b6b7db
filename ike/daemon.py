"""The IKE daemon: the sans-I/O core, the UDP adapter, the ESP data plane and a control socket, wired in one loop.

Why this module is only wiring: the protocol core must not know the data plane (as charon reaches libipsec only
through kernel_ipsec), so the installation of CHILD_SAs into esp and the ESP traffic live in :mod:`ike.kernel`,
the operator's socket and its commands in :mod:`ike.control`, the key log in :mod:`ike.keylog`. The daemon keeps
the IKE_SA records an operator sees, turns the core's events into calls on those pieces, feeds the data plane's
soft lifetime signals (bytes, packets) back to the core as ``child_sa_soft_expired`` and keeps
``start_action = "start"`` peers up.

Without root and without a TUN device, ESP travels in UDP on the NAT-T socket the adapter owns: received ESP is
decrypted in batches by the data plane and the inner packets go to ``on_packets``; :meth:`Daemon.send` encrypts
inner packets and sends them. ``python -m ike demo`` runs on exactly this path.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esp.dataplane import Dataplane

from .aio import IkeEndpoint, open_udp_socket
from .config import DaemonConfig
from .control import MAX_CONTROL_LINE, ControlError, ControlServer, handle_request
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
from .kernel import (
    REPLAY_WINDOW,
    InstalledChild,
    InstallError,
    Kernel,
    make_gateway,
    sa_params,
    selectors_for,
)
from .keylog import KeyLog
from .ready import Readiness
from .v1.daemon_events import V1KeysDerived

__all__ = ["MAX_CONTROL_LINE", "ControlError", "Daemon", "InstalledChild", "make_gateway", "sa_params", "selectors_for",
           "utc_wall_clock"]

log = logging.getLogger("ike.daemon")

#: First delay before re-initiating a lost start_action = "start" peer, doubled per failure up to the max.
RESTART_DELAY = 5.0
RESTART_DELAY_MAX = 120.0
#: Deleted IKE_SAs remembered (for a late ``initiate`` reply or ``terminate`` status); older ones are dropped.
MAX_DELETED_RECORDS = 256
#: How long ``stop()`` waits for the peers to answer our DELETEs.
STOP_GRACE = 2.0


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
                 backend: str | None = None, gateway: Any = None, readiness: Readiness | None = None) -> None:
        if dispatcher is None:
            from .dispatcher import Dispatcher
            core_cfg = config.core
            if core_cfg.wall_clock is None:  # the daemon owns the clocks; the core reads none
                core_cfg = dataclasses.replace(core_cfg, wall_clock=utc_wall_clock)
            if any(p.version == 1 for p in core_cfg.peers):
                # IKEv1 peers: one core answering both versions on the same sockets (ike.v1.adapter)
                from .v1.adapter import VersionDispatcher
                dispatcher = VersionDispatcher(core_cfg)
            else:
                dispatcher = Dispatcher(core_cfg)
        self.config = config
        self.core = dispatcher
        #: an esp.gateway.Gateway (TUN + ESP threads) whose data plane we key; it owns the NAT-T port
        self.gateway = gateway
        if gateway is not None:
            dataplane = gateway.dataplane
        self.dataplane = dataplane if dataplane is not None else Dataplane()
        self.dataplane.on_event = self._dataplane_event
        self.key_log = key_log if key_log is not None else (KeyLog(config.key_log) if config.key_log else None)
        self.kernel = Kernel(self.dataplane, now=self.now, send_esp_many=self._send_esp_many,
                             call_later=self._call_later, on_packets=on_packets, replay_window=replay_window,
                             backend=backend)
        self.endpoint = IkeEndpoint(self.core, on_event=self._on_event, on_esp=self.kernel.on_esp,
                                    plain_ports=config.core.plain_ports, esp_spi_known=self.kernel.esp_spi_known)
        self.ike_sas: dict[int, IkeSaRecord] = {}
        self.events: list[IkeEvent] = []  # recent events, bounded (for tests and `list-sas --events`)
        #: every event ever, by class name: the exchanges' outcomes (metrics read it, ike.metrics)
        self.event_counts: collections.Counter[str] = collections.Counter()
        self.max_events = 1000
        #: peers kept up (start_action = "start"): re-initiated after a loss, with backoff
        self._keep_up: set[str] = set()
        self._restart: dict[str, asyncio.TimerHandle] = {}
        self._backoff: dict[str, float] = {}
        self._operator_terminated: set[int] = set()
        self._outcomes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.control = ControlServer(self.handle_request)
        #: where readiness is announced (systemd's notify socket, a ready file); None: nowhere
        self.readiness = readiness
        self.started_at: float | None = None  # loop time when start() finished: sockets bound, ready
        self._stopped: asyncio.Event | None = None

    # -- life cycle ----------------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    # The installed CHILD_SAs and the ESP counters are the kernel's; these names are what operators' tools,
    # metrics and tests read.
    @property
    def children(self) -> dict[int, InstalledChild]:
        return self.kernel.children

    @property
    def _by_out(self) -> dict[int, int]:
        return self.kernel.by_out

    @property
    def counters(self) -> dict[str, int]:
        return self.kernel.counters

    @property
    def on_packets(self) -> Callable[[list[bytes], InstalledChild | None], None] | None:
        return self.kernel.on_packets

    @on_packets.setter
    def on_packets(self, fn: Callable[[list[bytes], InstalledChild | None], None] | None) -> None:
        self.kernel.on_packets = fn

    @property
    def control_path(self) -> Path | None:
        return self.control.path

    def _call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_later(delay, fn, *args)

    def _send_esp_many(self, items: list[Any]) -> int:
        return self.endpoint.send_esp_many(items)

    def send(self, packets: list[bytes]) -> int:
        """Encrypt inner IP packets by the SPD and send the ESP-in-UDP result; returns how many left."""
        return self.kernel.send(packets)

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
            await self.control.start(self.config.control_socket)
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
        self.started_at = self.now()
        if self.readiness is not None:
            self.readiness.ready(self.status())
        return self.endpoint.addresses

    async def run(self) -> None:
        """Serve until :meth:`stop` (or a signal handler calling it)."""
        assert self._stopped is not None, "start() first"
        await self._stopped.wait()

    async def stop(self, *, delete: bool = True, grace: float = STOP_GRACE) -> None:
        """Send DELETE for every IKE_SA (as charon does on SIGTERM), wait up to ``grace`` for the answers, close."""
        self._keep_up.clear()  # nothing is re-initiated from here on
        if self.readiness is not None:
            self.readiness.stopping()
        self.started_at = None
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
            self.kernel.uninstall(child)
        await self.control.close()
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
        if self.key_log is not None and isinstance(ev, (IkeKeysDerived, ChildSaEstablished, V1KeysDerived)):
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
            self.kernel.uninstall(child)
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
        try:
            self.kernel.install(ev)
        except InstallError as exc:  # refuse loudly, tear the CHILD_SA down
            log.error("CHILD_SA %s{%08x}: %s", ev.child, ev.spi_in, exc)
            with contextlib.suppress(Exception):
                self.endpoint.call(self.core.delete_child, ev.spi_in)
            self._fail(self._record(ev), f"CHILD_SA {ev.child}: {exc}")
            return
        ts = " === ".join(", ".join(str(t) for t in side) for side in (ev.local_ts, ev.remote_ts))
        log.info("CHILD_SA %s{%d} established with SPIs %08x_i %08x_o and TS %s", ev.child, ev.ike_id,
                 ev.spi_in, ev.spi_out, ts)
        rec = self._record(ev)
        self._wake(rec, {"ike_id": ev.ike_id, "state": rec.state, "child": ev.child,
                         "spi_in": f"{ev.spi_in:08x}", "spi_out": f"{ev.spi_out:08x}"})

    def _child_rekeyed(self, ev: ChildSaRekeyed) -> None:
        new = self.children.get(ev.spi_in)
        if new is None:
            log.warning("ChildSaRekeyed for unknown CHILD_SA %08x", ev.spi_in)
            return
        self.kernel.activate_outbound(new, self.children.get(ev.old_spi_in))

    def _child_deleted(self, ev: ChildSaDeleted) -> None:
        if self.kernel.deleted(ev) is not None:
            log.info("CHILD_SA %s{%d} with SPIs %08x_i %08x_o deleted (%s)", ev.child, ev.ike_id, ev.spi_in,
                     ev.spi_out, ev.reason)

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
        child = self.kernel.expired_child(ev)
        if child is None:
            return
        spi_in = child.spi_in
        log.info("CHILD_SA %s{%08x}: %s %s lifetime reached (%s)", child.event.child, spi_in,
                 "hard" if ev.hard else "soft", ev.reason.value, ev.direction)
        try:
            if ev.hard:
                self.endpoint.call(self.core.delete_child, spi_in)
            else:
                self.endpoint.call(self.core.child_sa_soft_expired, spi_in)
        except Exception:
            log.exception("core refused the expiry of %08x", spi_in)

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
                "name": rec.peer, "ike_id": rec.ike_id, "state": rec.state,
                "version": getattr(infos.get(rec.ike_id), "version", 2),
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
                                 if peer is not None and peer.rekey_time and peer.version == 2 else None),
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

    def status(self) -> dict[str, Any]:
        """Whether the daemon serves, and where: what ``status``, the ready file and systemd's STATUS= show."""
        now = self.now() if self._loop is not None else None
        ready = self.started_at is not None and not (self._stopped is not None and self._stopped.is_set())
        return {
            "ready": ready, "pid": os.getpid(),
            "uptime": round(now - self.started_at, 1) if ready and now is not None and self.started_at else 0.0,
            "config": str(self.config.source) if self.config.source is not None else None,
            "listening": [[h, p] for h, p in self.endpoint.addresses],
            "control_socket": str(self.control_path) if self.control_path is not None else None,
            "peers": [p.name for p in self.config.core.peers],
            "ike_sas": sum(1 for r in self.ike_sas.values() if r.state == "ESTABLISHED"),
            "child_sas": sum(1 for c in self.children.values() if c.state == "INSTALLED"),
        }

    def stats(self) -> dict[str, Any]:
        dp = self.dataplane.counters()
        return {"endpoint": dict(self.endpoint.stats), "esp": dict(self.counters),
                "dataplane_in": {k: v for k, v in dp.inbound.items() if v},
                "dataplane_out": {k: v for k, v in dp.outbound.items() if v},
                "core": dict(getattr(self.core, "stats", {}) or {}),
                **({"gateway": {k: v for k, v in self.gateway.stats.as_dict().items() if k != "errors"}}
                   if self.gateway is not None else {})}

    # -- control socket ------------------------------------------------------------------------------------
    async def handle_request(self, line: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """One control request -> one reply (ike.control's command table); never raises."""
        return await handle_request(self, line)


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
