"""ike.aio on real loopback sockets with a scripted core: demux, marker, keepalives, ESP, the one timer.

A fake driver stands in for the Dispatcher so the adapter's own rules are tested alone: what reaches the core,
what leaves the sockets, when the timer fires. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from ike.aio import KEEPALIVE, NON_ESP_MARKER, IkeEndpoint
from ike.connection import Datagram
from ike.events import ChildSaFailed

TIMEOUT = 5.0


def _ike(body: bytes = b"") -> bytes:
    """An IKE message with a valid header (version 2.0, length right) and ``body`` as its payloads."""
    return bytes(range(1, 9)) + bytes(8) + bytes([0, 0x20, 37, 0x08]) + bytes(4) + \
        (28 + len(body)).to_bytes(4, "big") + body


class FakeDriver:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int], tuple[str, int], float]] = []
        self.outbox: list[Datagram] = []
        self.events: list[Any] = []
        self.timer: float | None = None
        self.timer_calls: list[float] = []
        self.raise_on_receive = False

    def receive_datagram(self, data, addr, local_addr, now):
        if self.raise_on_receive:
            raise RuntimeError("core bug")
        self.received.append((data, addr, local_addr, now))

    def datagrams_to_send(self, now):
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        self.timer_calls.append(now)
        self.timer = None
        self.events.append(ChildSaFailed(ike_id=1, peer="p", child="c", reason="timer"))

    def next_event(self):
        return self.events.pop(0) if self.events else None


class Peer(asyncio.DatagramProtocol):
    """The other side: a plain UDP socket collecting what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


async def _setup(plain: bool = False):
    loop = asyncio.get_running_loop()
    drv = FakeDriver()
    esp: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
    events: list[Any] = []

    def on_esp(packets, local):
        esp.extend((d, a, local) for d, a in packets)

    ep = IkeEndpoint(drv, on_event=events.append, on_esp=on_esp)
    local = await ep.listen("127.0.0.1", 0)
    if plain:
        ep.close()
        ep = IkeEndpoint(drv, on_event=events.append, on_esp=on_esp, plain_ports={local[1]})
        local = await ep.listen("127.0.0.1", local[1])
    peer = Peer()
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    return drv, ep, local, peer, transport, esp, events


async def _until(pred, what: str) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_demux_on_nat_port() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup()
        me = tr.get_extra_info("sockname")
        ike = _ike(b"\x11" * 8)
        tr.sendto(NON_ESP_MARKER + ike, local)          # IKE with marker
        tr.sendto(KEEPALIVE, local)                       # NAT keepalive
        tr.sendto(b"\xc0\xff\xee\x01" + b"\x00" * 20, local)  # ESP: SPI first
        tr.sendto(b"\x01\x02", local)                     # too short for anything
        tr.sendto(NON_ESP_MARKER, local)                  # marker and nothing else
        await _until(lambda: sum(ep.stats[k] for k in ("ike_in", "keepalives_in", "esp_in", "malformed")) == 5,
                     "five datagrams")
        assert [r[0] for r in drv.received] == [ike]
        assert drv.received[0][1] == (me[0], me[1]) and drv.received[0][2] == local
        assert esp == [(b"\xc0\xff\xee\x01" + b"\x00" * 20, (me[0], me[1]), local)]
        assert ep.stats["keepalives_in"] == 1 and ep.stats["malformed"] == 2
        ep.close()
        tr.close()

    asyncio.run(main())


def test_junk_on_nat_port_is_not_counted_as_esp() -> None:
    """Undecodable datagrams on the NAT-T port are counted as what they are: the marker (SPI 0) without a
    valid IKE header after it is malformed, so is anything shorter than an ESP header, and ESP framing with an
    SPI the data plane has no SA for is esp_unknown_spi. None of it reaches the core or the data plane."""
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup()
        ep.esp_spi_known = lambda spi: spi == 0xC0FFEE01
        junk = [NON_ESP_MARKER + b"\x11" * 28,                      # marker, then no IKE header (version 1.1)
                NON_ESP_MARKER + _ike(b"xy")[:-1],                   # header length is not the datagram's
                NON_ESP_MARKER + _ike()[:27],                        # shorter than an IKE header
                b"\x01\x02\x03\x04\x05\x06\x07",                    # shorter than an ESP header
                b"\x00\x00\x01\x00" + bytes(30),                     # ESP framing, no SA with SPI 0x100
                b"\x00\x00\x00\x09" + bytes(30)]                     # reserved SPI (RFC 4303 2.1): no SA
        for d in junk:
            tr.sendto(d, local)
        tr.sendto(b"\xc0\xff\xee\x01" + bytes(20), local)             # ESP of a known SA
        tr.sendto(NON_ESP_MARKER + _ike(), local)                     # IKE
        kinds = ("ike_in", "esp_in", "malformed", "esp_unknown_spi")
        await _until(lambda: sum(ep.stats[k] for k in kinds) == 8, "eight datagrams")
        assert ep.stats["malformed"] == 4 and ep.stats["esp_unknown_spi"] == 2
        assert ep.stats["esp_in"] == 1 and ep.stats["ike_in"] == 1
        assert [r[0] for r in drv.received] == [_ike()]
        assert [e[0] for e in esp] == [b"\xc0\xff\xee\x01" + bytes(20)]
        ep.close()
        tr.close()

    asyncio.run(main())


def test_plain_port_has_no_marker() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup(plain=True)
        tr.sendto(b"\x00\x00\x00\x00" + b"\x22" * 24, local)   # on port 500 even this is IKE, unchanged
        tr.sendto(b"\xc0\xff\xee\x01" + b"\x00" * 20, local)
        await _until(lambda: len(drv.received) == 2, "two IKE messages")
        assert drv.received[0][0] == b"\x00\x00\x00\x00" + b"\x22" * 24
        assert esp == []
        ep.close()
        tr.close()

    asyncio.run(main())


def test_send_adds_marker_and_esp_goes_raw() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup()
        me = tr.get_extra_info("sockname")
        drv.outbox = [Datagram(b"IKE-A", (me[0], me[1]), local[1], True),
                      Datagram(b"IKE-B", (me[0], me[1]), local[1], False),
                      Datagram(b"lost", (me[0], me[1]), 1, True)]  # no socket on port 1
        ep.transmit()
        assert ep.send_esp(b"\x00\x00\x10\x01ESP", (me[0], me[1]), local[1])
        assert ep.send_keepalive((me[0], me[1]), local[1])
        got = [await asyncio.wait_for(peer.queue.get(), TIMEOUT) for _ in range(4)]
        assert got == [NON_ESP_MARKER + b"IKE-A", b"IKE-B", b"\x00\x00\x10\x01ESP", KEEPALIVE]
        assert ep.stats["no_socket"] == 1 and ep.stats["ike_out"] == 2
        assert not ep.send_esp(b"x" * 8, ("::1", 4500), local[1])  # no IPv6 socket
        ep.close()
        tr.close()

    asyncio.run(main())


def test_one_timer_rearmed_from_get_timer() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, events = await _setup()
        loop = asyncio.get_running_loop()
        drv.timer = loop.time() + 10.0
        ep.transmit()
        drv.timer = loop.time() + 0.05                 # the core moves its deadline earlier
        ep.transmit()
        await _until(lambda: drv.timer_calls, "the timer")
        assert len(drv.timer_calls) == 1 and drv.timer_calls[0] >= drv.timer_calls[0]
        assert ep.stats["timer_fired"] == 1
        assert [e.reason for e in events] == ["timer"]  # events drained after the timer
        await asyncio.sleep(0.1)
        assert ep.stats["timer_fired"] == 1              # the 10 s deadline was cancelled, none pending
        ep.close()
        tr.close()

    asyncio.run(main())


def test_core_and_handler_errors_are_contained() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, events = await _setup()

        def bad_esp(packets, local):
            raise ValueError("data plane bug")

        ep.on_esp = bad_esp
        drv.raise_on_receive = True
        tr.sendto(NON_ESP_MARKER + _ike(b"x"), local)
        tr.sendto(b"\x00\x00\x00\x09" + b"y" * 28, local)
        await _until(lambda: ep.stats["core_errors"] == 1 and ep.stats["esp_handler_errors"] == 1, "two errors")
        drv.raise_on_receive = False
        tr.sendto(NON_ESP_MARKER + _ike(b"z"), local)
        await _until(lambda: len(drv.received) == 1, "the endpoint to keep working")
        ep.close()
        tr.close()

    asyncio.run(main())


def test_call_appends_now_and_transmits() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, events = await _setup()
        me = tr.get_extra_info("sockname")
        seen = []

        def initiate(name, now):
            seen.append((name, now))
            drv.outbox.append(Datagram(b"INIT", (me[0], me[1]), local[1], True))
            return 7

        assert ep.call(initiate, "peer") == 7
        assert seen and seen[0][0] == "peer"
        assert await asyncio.wait_for(peer.queue.get(), TIMEOUT) == NON_ESP_MARKER + b"INIT"
        ep.close()
        tr.close()

    asyncio.run(main())


def test_add_socket_and_ipv6() -> None:
    async def main() -> None:
        drv = FakeDriver()
        ep = IkeEndpoint(drv)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        local = await ep.add_socket(s)
        assert ep.addresses == [local]
        try:
            v6 = await ep.listen("::1", 0)
        except OSError:
            pytest.skip("no IPv6 loopback")
        assert v6[0] == "::1"
        ep.close()
        assert ep.addresses == []

    asyncio.run(main())


def test_esp_burst_reaches_the_data_plane_in_batches() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup()
        batches: list[int] = []

        def on_esp(packets, local_):
            batches.append(len(packets))
            esp.extend(packets)

        ep.on_esp = on_esp
        for i in range(200):
            tr.sendto((i + 1).to_bytes(4, "big") + b"\x00" * 60, local)
        await _until(lambda: len(esp) == 200, "200 ESP packets")
        assert [int.from_bytes(d[:4], "big") for d, _ in esp] == list(range(1, 201))
        assert sum(batches) == 200 and len(batches) < 200
        ep.close()
        tr.close()

    asyncio.run(main())


def test_esp_before_an_ike_message_is_delivered_first() -> None:
    async def main() -> None:
        drv, ep, local, peer, tr, esp, _ = await _setup()
        order: list[str] = []
        ep.on_esp = lambda packets, local_: order.extend("esp" for _ in packets)
        real = drv.receive_datagram
        drv.receive_datagram = lambda *a: (order.append("ike"), real(*a))
        for i in range(5):
            tr.sendto(b"\x00\x00\x01\x00" + bytes(30), local)
        tr.sendto(NON_ESP_MARKER + _ike(b"DELETE"), local)
        tr.sendto(b"\x00\x00\x01\x00" + bytes(30), local)
        await _until(lambda: len(order) == 7, "seven datagrams")
        assert order == ["esp"] * 5 + ["ike", "esp"]
        ep.close()
        tr.close()

    asyncio.run(main())
