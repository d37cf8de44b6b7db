"""The asyncio UDP adapter around the sans-I/O IKE core (aioquic's asyncio/protocol.py, for IKE).

Why it exists: the core (:class:`ike.dispatcher.Dispatcher`) never touches a socket or a clock. This module owns
the sockets and the one timer, and nothing else: it feeds datagrams and ``loop.time()`` in, sends what
``datagrams_to_send`` returns, re-arms a single ``call_at`` from ``get_timer()`` and hands the core's events to
the daemon.

Demultiplexing (RFC 3948, RFC 7296 2.23), per receiving socket:

- on the plain IKE port (500 unless configured otherwise) every datagram is an IKE message;
- on any other port a datagram that starts with the 4-byte zero non-ESP marker is IKE (the marker is
  stripped) if a valid IKEv2 or IKEv1 (ISAKMP) header follows, a single 0xFF byte is a NAT keepalive (counted, dropped), and
  anything else of ESP size is UDP-encapsulated ESP (the SPI comes first) and goes to the data plane's
  ``on_esp`` callback (``esp_in``), unless ``esp_spi_known`` says no SA has that SPI (``esp_unknown_spi``,
  dropped here: junk is not counted as ESP);
- anything else (shorter than an ESP header, the marker without a valid IKE header) is counted as malformed
  and dropped. Nothing a peer sends can raise out of the adapter.

Sending prepends the marker when the core says so (``Datagram.marker``). ESP from the data plane leaves
through :meth:`IkeEndpoint.send_esp` on the socket of the NAT-T port, without a marker.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .connection import Datagram
from .errors import ParseError
from .events import IkeEvent
from .message import pull_header
from .v1.message import pull_header as pull_isakmp_header

__all__ = ["KEEPALIVE", "MIN_ESP_LEN", "NON_ESP_MARKER", "Driver", "IkeEndpoint", "open_udp_socket"]

log = logging.getLogger("ike.aio")

NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"
#: SPI + sequence number: the shortest datagram that can be ESP.
MIN_ESP_LEN = 8
#: Largest UDP payload we hand to anyone (bigger ones cannot exist on the wire anyway).
MAX_DATAGRAM = 65535
#: Seconds between NAT keepalives (RFC 3948 4: 20 s by default).
KEEPALIVE_INTERVAL = 20.0
#: Socket buffer we ask for (the kernel caps it at net.core.rmem_max/wmem_max): ESP arrives in bursts.
SOCKET_BUFFER = 4 << 20
#: Datagrams read from one socket per readiness callback: ESP arrives in batches for the data plane, and
#: one busy socket cannot starve the others or the timer.
READ_BURST = 256


class Driver(Protocol):
    """What the adapter needs from the core (``ike.dispatcher.Dispatcher`` has it)."""

    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int],
                         now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[Datagram]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> IkeEvent | None: ...


#: ``on_esp(packets, local)``: the ESP datagrams (each with its sender) read in one go from the socket ``local``.
EspHandler = Callable[[list[tuple[bytes, tuple[str, int]]], tuple[str, int]], None]
EventHandler = Callable[[IkeEvent], None]


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port); IPv6 sockets are v6-only so both families can bind.

    No SO_REUSEADDR/SO_REUSEPORT: on Linux they let a second daemon bind the same UDP port and silently steal
    half of the IKE traffic; a port already taken must fail loudly ("port in use"). (The gateway shares its
    NAT-T port between IKE and ESP on purpose, with its own SO_REUSEPORT sockets, not with this function.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:  # best effort
                pass
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"UDP {host}[{port}]: port in use (another IKE daemon?)") from None
        raise
    return sock


@dataclass
class _Socket:
    sock: socket.socket
    local: tuple[str, int]
    plain: bool  # IKE without marker (port 500)


class IkeEndpoint:
    """All IKE sockets of one daemon around one core.

    ``plain_ports``: ports on which IKE carries no non-ESP marker (RFC 7296: only 500). ``on_event`` gets every
    core event after each driver call; ``on_esp(esp, remote, local)`` gets UDP-encapsulated ESP. The handlers
    are called synchronously in the loop; an exception in one is logged and counted, never fatal.
    ``esp_spi_known(spi)``: whether the data plane has an inbound SA with that SPI (None: every SPI goes on).
    """

    def __init__(self, driver: Driver, *, on_event: EventHandler | None = None, on_esp: EspHandler | None = None,
                 plain_ports: Iterable[int] = (500,), loop: asyncio.AbstractEventLoop | None = None,
                 esp_spi_known: Callable[[int], bool] | None = None) -> None:
        self.driver = driver
        self.on_event = on_event
        self.on_esp = on_esp
        self.esp_spi_known = esp_spi_known
        self.plain_ports = frozenset(plain_ports)
        self._loop = loop
        self._sockets: list[_Socket] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self.stats: Counter[str] = Counter()

    # -- setup ------------------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind (host, port) (port 0: any); returns the bound address."""
        return await self.add_socket(open_udp_socket(host, port))

    async def add_socket(self, sock: socket.socket) -> tuple[str, int]:
        """Use an already bound UDP socket (e.g. one created inside another network namespace)."""
        sock.setblocking(False)
        name = sock.getsockname()
        local = (name[0], name[1])
        entry = _Socket(sock, local, local[1] in self.plain_ports)
        self.loop.add_reader(sock.fileno(), self._read_ready, entry)
        self._sockets.append(entry)
        return local

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.local for s in self._sockets]

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for s in self._sockets:
            try:
                self.loop.remove_reader(s.sock.fileno())
            except (RuntimeError, ValueError):  # loop already closed
                pass
            s.sock.close()
        self._sockets.clear()

    # -- receive ----------------------------------------------------------------------------------------
    def _read_ready(self, sock: _Socket) -> None:
        esp: list[tuple[bytes, tuple[str, int]]] = []
        for _ in range(READ_BURST):
            try:
                data, addr = sock.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors surface here (ECONNREFUSED); nothing to read
                self.stats["icmp_errors"] += 1
                log.debug("socket %s:%d: %s", *sock.local, exc)
                break
            if self._closed:
                return
            self._classify(sock, data, (addr[0], addr[1]), esp)
        if esp:
            self._esp_received(esp, sock.local)

    def _classify(self, sock: _Socket, data: bytes, addr: tuple[str, int],
                  esp: list[tuple[bytes, tuple[str, int]]]) -> None:
        if sock.plain:
            self._ike_in_order(data, addr, sock.local, esp)
        elif data[:4] == NON_ESP_MARKER:  # SPI 0: not ESP (RFC 3948 2.2); IKE only with a valid header
            ike = data[4:]
            try:  # IKEv2, or IKEv1 (ISAKMP, RFC 3947) by the major version in byte 17
                (pull_isakmp_header if len(ike) > 17 and ike[17] >> 4 == 1 else pull_header)(ike)
            except ParseError:
                self.stats["malformed"] += 1
                return
            self._ike_in_order(ike, addr, sock.local, esp)
        elif data == KEEPALIVE:
            self.stats["keepalives_in"] += 1
        elif len(data) >= MIN_ESP_LEN:
            if self.esp_spi_known is not None and not self.esp_spi_known(int.from_bytes(data[:4], "big")):
                self.stats["esp_unknown_spi"] += 1
                return
            self.stats["esp_in"] += 1
            esp.append((data, addr))
        else:
            self.stats["malformed"] += 1

    def _ike_in_order(self, data: bytes, addr: tuple[str, int], local: tuple[str, int],
                      esp: list[tuple[bytes, tuple[str, int]]]) -> None:
        """ESP read before this IKE message is handed over first: a DELETE must not overtake the packets
        that were sent on the SA before it."""
        if esp:
            self._esp_received(list(esp), local)
            esp.clear()
        self._ike_received(data, addr, local)

    def _esp_received(self, packets: list[tuple[bytes, tuple[str, int]]], local: tuple[str, int]) -> None:
        if self.on_esp is None:
            self.stats["esp_dropped"] += len(packets)
            return
        try:
            self.on_esp(packets, local)
        except Exception:  # the data plane's problem; count it, keep IKE running
            self.stats["esp_handler_errors"] += 1
            log.exception("ESP handler failed")

    def _ike_received(self, data: bytes, addr: tuple[str, int], local: tuple[str, int]) -> None:
        self.stats["ike_in"] += 1
        try:
            self.driver.receive_datagram(data, addr, local, self.now())
        except Exception:  # the core promises not to raise; if it does, drop the datagram, not the daemon
            self.stats["core_errors"] += 1
            log.exception("IKE core raised on a datagram from %s:%d", *addr)
        self.transmit()

    # -- drive ------------------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a core command with ``now`` appended (``call(d.initiate, "peer")``), then send and re-arm."""
        try:
            return fn(*args, self.now(), **kwargs)
        finally:
            self.transmit()

    def transmit(self) -> None:
        """Deliver the core's events, send what it has queued and re-arm the timer.

        Events first: a message that completes an exchange (IKEv1's QM3, an IKE_AUTH or CREATE_CHILD_SA response)
        lets the peer send on the new SAs at once, so the handlers install them before it goes out."""
        if self._closed:
            return
        self._drain_events()
        now = self.now()
        try:
            datagrams = self.driver.datagrams_to_send(now)
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("IKE core raised in datagrams_to_send")
            datagrams = []
        for dg in datagrams:
            self.send_datagram(dg)
        self._drain_events()
        self._arm_timer()

    def send_datagram(self, dg: Datagram) -> None:
        sock = self._socket_for(dg.local_port, dg.addr[0])
        if sock is None:
            self.stats["no_socket"] += 1
            log.warning("no socket on port %d for %s; IKE message dropped", dg.local_port, dg.addr[0])
            return
        payload = NON_ESP_MARKER + dg.data if dg.marker else dg.data
        if len(payload) > MAX_DATAGRAM:
            self.stats["too_large"] += 1
            return
        if self._sendto(sock, payload, dg.addr):
            self.stats["ike_out"] += 1

    def send_esp(self, esp: bytes, addr: tuple[str, int], local_port: int) -> bool:
        """Send one UDP-encapsulated ESP packet (SPI first, no marker) from our ``local_port`` socket."""
        sock = self._socket_for(local_port, addr[0])
        if sock is None or self._closed:
            self.stats["esp_no_socket"] += 1
            return False
        if not self._sendto(sock, esp, addr):
            return False
        self.stats["esp_out"] += 1
        return True

    def send_esp_many(self, items: list[tuple[Any, tuple[str, int], int]]) -> int:
        """Send a burst of ESP-in-UDP packets ``(esp, remote, local_port)``; returns how many left. ``esp`` may
        be any bytes-like object (a memoryview into the data plane's output batch: no copy)."""
        if self._closed:
            return 0
        sent = 0
        socks: dict[tuple[int, bool], _Socket | None] = {}
        for data, addr, port in items:
            key = (port, ":" in addr[0])
            if key not in socks:
                socks[key] = self._socket_for(port, addr[0])
            sock = socks[key]
            if sock is None:
                self.stats["esp_no_socket"] += 1
                continue
            try:
                sock.sock.sendto(data, addr)
                sent += 1
            except (BlockingIOError, InterruptedError):
                self.stats["send_dropped"] += 1
            except OSError as exc:
                self.stats["send_errors"] += 1
                log.debug("sendto %s:%d failed: %s", addr[0], addr[1], exc)
        self.stats["esp_out"] += sent
        return sent

    def send_keepalive(self, addr: tuple[str, int], local_port: int) -> bool:
        """A NAT keepalive (RFC 3948 2.3): one 0xFF byte from the NAT-T socket."""
        sock = self._socket_for(local_port, addr[0])
        if sock is None or self._closed:
            return False
        if not self._sendto(sock, KEEPALIVE, addr):
            return False
        self.stats["keepalives_out"] += 1
        return True

    def _sendto(self, sock: _Socket, data: bytes, addr: tuple[str, int]) -> bool:
        """UDP is lossy anyway: a full socket buffer or an unreachable peer is a counted drop, never an error."""
        try:
            sock.sock.sendto(data, addr)
            return True
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += 1
        except OSError as exc:
            self.stats["send_errors"] += 1
            log.debug("sendto %s:%d failed: %s", addr[0], addr[1], exc)
        return False

    def _socket_for(self, port: int, remote_host: str) -> _Socket | None:
        v6 = ":" in remote_host
        for s in self._sockets:
            if s.local[1] == port and (":" in s.local[0]) == v6:
                return s
        return None

    def _drain_events(self) -> None:
        for _ in range(100_000):  # bounded: the core cannot make us spin
            try:
                ev = self.driver.next_event()
            except Exception:
                self.stats["core_errors"] += 1
                log.exception("IKE core raised in next_event")
                return
            if ev is None:
                return
            self.stats["events"] += 1
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:
                    self.stats["event_handler_errors"] += 1
                    log.exception("event handler failed on %s", type(ev).__name__)

    def _arm_timer(self) -> None:
        try:
            at = self.driver.get_timer()
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("IKE core raised in get_timer")
            at = None
        if at == self._timer_at and (at is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and not self._closed:
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.stats["timer_fired"] += 1
        try:
            self.driver.handle_timer(self.now())
        except Exception:
            self.stats["core_errors"] += 1
            log.exception("IKE core raised in handle_timer")
        self.transmit()
