"""ike.daemon: SA installation into esp, make-before-break rekeys, lifetimes back to the core, control socket.

The protocol core is replaced by a scripted one that emits the events a real negotiation would (mirrored for
the two sides), so what is tested here is the daemon's own job: mapping ChildSaEstablished to esp SAs that
really interoperate (side A encrypts, side B decrypts, over loopback UDP), switching SAs in the right order,
and reporting.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built (python setup.py build_ext --inplace)")

from esp import Direction, Mode, Sa, UdpEncap
from ike.config import DaemonConfig
from ike.core_config import CoreConfig, Identity, TrafficSelector
from ike.daemon import ControlError, Daemon, sa_params, selectors_for
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaEstablished,
    IkeSaTerminated,
)

TIMEOUT = 5.0
SUITES = {"aes128gcm16": (20, 0), "aes256-sha256": (32, 32), "chacha20poly1305": (36, 0)}


def _ipv4(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + payload


def _inner(i: int, size: int = 100, *, back: bool = False) -> bytes:
    """An inner UDP packet from A's network to B's (``back``: the other way)."""
    body = i.to_bytes(4, "big") + os.urandom(size)
    src, dst = ("10.2.0.1", "10.1.0.1") if back else ("10.1.0.1", "10.2.0.1")
    return _ipv4(src, dst, struct.pack("!HHHH", 1000, 2000, 8 + len(body), 0) + body)


def mirrored(suite: str, a: tuple[str, int], b: tuple[str, int], *, spi_a: int, spi_b: int, ike_id: int = 1,
             encap: bool = True, replaces: tuple[int, int] | None = None, **kw: Any
             ) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    """The two views of one negotiated CHILD_SA: A receives on spi_a, B on spi_b."""
    ek, ik = SUITES[suite]
    k_ab, k_ba, i_ab, i_ba = os.urandom(ek), os.urandom(ek), os.urandom(ik), os.urandom(ik)
    ts_a, ts_b = (TrafficSelector.from_cidr("10.1.0.0/24"),), (TrafficSelector.from_cidr("10.2.0.0/24"),)
    common = dict(peer="p", child="net", suite=suite, esn=False, mode="tunnel", encap=encap, rekey_time=3600,
                  life_time=3960, rekey_bytes=0, life_bytes=0, rekey_packets=0, life_packets=0)
    common.update(kw)
    ev_a = ChildSaEstablished(ike_id=ike_id, spi_in=spi_a, spi_out=spi_b, local_ts=ts_a, remote_ts=ts_b,
                              local_addr=a, remote_addr=b, initiator=True,
                              replaces=replaces[0] if replaces else None,
                              enc_key_in=k_ba, enc_key_out=k_ab, integ_key_in=i_ba, integ_key_out=i_ab, **common)
    ev_b = ChildSaEstablished(ike_id=ike_id, spi_in=spi_b, spi_out=spi_a, local_ts=ts_b, remote_ts=ts_a,
                              local_addr=b, remote_addr=a, initiator=False,
                              replaces=replaces[1] if replaces else None,
                              enc_key_in=k_ab, enc_key_out=k_ba, integ_key_in=i_ab, integ_key_out=i_ba, **common)
    return ev_a, ev_b


# -- the mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_sa_params_mapping_interoperates(suite: str) -> None:
    a, b = ("192.0.2.1", 4500), ("198.51.100.2", 4501)
    ev_a, ev_b = mirrored(suite, a, b, spi_a=0x1111, spi_b=0x2222)
    a_in, a_out = sa_params(ev_a)
    b_in, b_out = sa_params(ev_b)
    assert (a_in.spi, a_in.direction, a_out.spi, a_out.direction) == (0x1111, Direction.IN, 0x2222, Direction.OUT)
    assert (a_out.src, a_out.dst) == ("192.0.2.1", "198.51.100.2") and (a_in.src, a_in.dst) == (a_out.dst, a_out.src)
    assert a_out.encap == UdpEncap(4500, 4501) and a_in.encap == UdpEncap(4501, 4500)
    assert a_out.mode is Mode.TUNNEL and a_in.replay_window == 64 and a_out.suite.name == suite
    sender, receiver = Sa(a_out), Sa(b_in)
    for i in range(5):
        pkt = _inner(i)
        assert receiver.decrypt(sender.encrypt(pkt)) == pkt
    pkt = _inner(99, back=True)
    assert Sa(a_in).decrypt(Sa(b_out).encrypt(pkt)) == pkt


def test_sa_params_without_encap_and_lifetimes() -> None:
    ev, _ = mirrored("aes128gcm16", ("192.0.2.1", 500), ("192.0.2.2", 500), spi_a=1000, spi_b=2000, encap=False,
                     rekey_bytes=1000, life_bytes=2000, rekey_packets=10, life_packets=20, esn=True)
    p_in, p_out = sa_params(ev, replay_window=0)
    assert p_in.encap is None and p_out.encap is None and p_in.esn and p_in.replay_window == 0
    assert (p_out.lifetime.soft_bytes, p_out.lifetime.hard_bytes) == (1000, 2000)
    assert (p_in.lifetime.soft_packets, p_in.lifetime.hard_packets) == (10, 20)


def test_selectors_for_ranges_ports_and_families() -> None:
    lt = (TrafficSelector("10.0.0.0", "10.0.0.5"), TrafficSelector.from_cidr("fd00::/64"))
    rt = (TrafficSelector("10.9.0.0", "10.9.0.255", 17, 53, 53),)
    sels = selectors_for(lt, rt)
    # 10.0.0.0-10.0.0.5 = 10.0.0.0/30 + 10.0.0.4/31; the IPv6 local selector has no IPv4 partner
    assert [(str(s.src), str(s.dst), s.proto, s.dport) for s in sels] == [
        ("10.0.0.0/30", "10.9.0.0/24", 17, (53, 53)), ("10.0.0.4/31", "10.9.0.0/24", 17, (53, 53))]
    assert selectors_for((TrafficSelector.from_cidr("10.0.0.0/8", protocol=6),), rt) == []


# -- a scripted core -----------------------------------------------------------------------------------


class ScriptedCore:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.calls: list[tuple] = []
        self.next_id = 1
        self.on_initiate: Any = None

    def receive_datagram(self, data, addr, local_addr, now):
        self.calls.append(("rx", data))

    def datagrams_to_send(self, now):
        return []

    def get_timer(self):
        return None

    def handle_timer(self, now):
        pass

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def initiate(self, peer, now, child=None):
        ike_id = self.next_id
        self.next_id += 1
        self.calls.append(("initiate", peer))
        if self.on_initiate:
            self.events.extend(self.on_initiate(ike_id))
        return ike_id

    def __getattr__(self, name):
        if name in ("rekey_child", "rekey_ike", "delete_child", "terminate", "child_sa_soft_expired"):
            return lambda *a: self.calls.append((name, *a[:-1]))
        raise AttributeError(name)


def _config(tmp: Path, name: str) -> DaemonConfig:
    from ike.core_config import ChildConfig, PeerConfig
    child = ChildConfig("net", (TrafficSelector.from_cidr("10.1.0.0/24"),), (TrafficSelector.from_cidr("10.2.0.0/24"),))
    peer = PeerConfig(name="p", local_id=Identity("fqdn", f"{name}.test"), remote_addr="127.0.0.1",
                      auth="psk", remote_auth="psk", psk=b"0123456789", children=(child,))
    return DaemonConfig(core=CoreConfig(peers=(peer,)), addresses=("127.0.0.1",), port=500, nat_port=4500,
                        control_socket=tmp / f"{name}.sock", key_log=None)


class Pair:
    """Two daemons with scripted cores on loopback, B collecting what it decrypts."""

    async def start(self, tmp: Path, control: bool = False) -> Pair:
        self.core_a, self.core_b = ScriptedCore(), ScriptedCore()
        self.got_a: list[bytes] = []
        self.got_b: list[bytes] = []
        self.a = Daemon(_config(tmp, "a"), dispatcher=self.core_a,
                        on_packets=lambda pk, ch: self.got_a.extend(pk))
        self.b = Daemon(_config(tmp, "b"), dispatcher=self.core_b,
                        on_packets=lambda pk, ch: self.got_b.extend(pk))
        from ike.aio import open_udp_socket
        self.addr_a = (await self.a.start(sockets=[open_udp_socket("127.0.0.1", 0)], control=control))[0]
        self.addr_b = (await self.b.start(sockets=[open_udp_socket("127.0.0.1", 0)], control=control))[0]
        return self

    def emit(self, ev_a: Any, ev_b: Any) -> None:
        self.core_a.events.append(ev_a)
        self.core_b.events.append(ev_b)
        self.a.endpoint.transmit()
        self.b.endpoint.transmit()

    async def stop(self) -> None:
        await self.a.stop(delete=False)
        await self.b.stop(delete=False)


async def _until(pred, what: str) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _spis_on_wire(daemon: Daemon) -> set[int]:
    return {c.spi_out for c in daemon.children.values() if c.outbound_active}


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256"])
def test_traffic_and_make_before_break_rekey(tmp_path: Path, suite: str) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        ev_a, ev_b = mirrored(suite, p.addr_a, p.addr_b, spi_a=0xA0000001, spi_b=0xB0000001)
        p.emit(ev_a, ev_b)
        assert set(p.a.children) == {0xA0000001} and set(p.b.children) == {0xB0000001}
        sent = [_inner(i) for i in range(50)]
        assert p.a.send(sent) == 50
        assert p.a.send([_inner(0, back=True)]) == 0  # no policy for B->A traffic at A: not sent
        await _until(lambda: len(p.got_b) == 50, "50 packets at B")
        assert p.got_b == sent

        # Rekey: both sides learn the new CHILD_SA; outbound stays on the old SPI until ChildSaRekeyed.
        new_a, new_b = mirrored(suite, p.addr_a, p.addr_b, spi_a=0xA0000002, spi_b=0xB0000002,
                                replaces=(0xA0000001, 0xB0000001))
        p.emit(new_a, new_b)
        assert _spis_on_wire(p.a) == {0xB0000001}
        assert p.a.send([_inner(100)]) == 1
        await _until(lambda: len(p.got_b) == 51, "a packet on the old SA")
        assert p.a.children[0xA0000001].sa_out.counters.packets == 51

        def rekeyed(ev):
            return ChildSaRekeyed(ike_id=1, peer="p", child="net", old_spi_in=ev.replaces, old_spi_out=0,
                                  spi_in=ev.spi_in, spi_out=ev.spi_out)

        p.emit(rekeyed(new_a), rekeyed(new_b))
        assert _spis_on_wire(p.a) == {0xB0000002}
        assert p.a.send([_inner(101)]) == 1
        await _until(lambda: len(p.got_b) == 52, "a packet on the new SA")
        assert p.a.children[0xA0000002].sa_out.counters.packets == 1
        # B still accepts on the old inbound SA (packets in flight) until the delete
        assert 0xB0000001 in p.b.dataplane.sad.snapshot.inbound_by_spi

        p.emit(ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=0xA0000001, spi_out=0xB0000001, reason="rekeyed"),
               ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=0xB0000001, spi_out=0xA0000001, reason="rekeyed"))
        assert set(p.a.children) == {0xA0000002} and set(p.b.children) == {0xB0000002}
        # ... and for a grace period after it (packets sent before A switched may still be on the wire), then not
        assert 0xB0000001 in p.b.dataplane.sad.snapshot.inbound_by_spi
        await _until(lambda: 0xB0000001 not in p.b.dataplane.sad.snapshot.inbound_by_spi, "the old inbound SA gone")
        back = _inner(7, back=True)
        assert p.b.send([back]) == 1
        await _until(lambda: len(p.got_a) == 1, "B to A on the new SA")
        assert p.got_a == [back] and len(p.got_b) == 52
        await p.stop()

    asyncio.run(main())


def test_rekey_without_rekeyed_event_switches_on_delete(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x100, spi_b=0x200))
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x101, spi_b=0x201, replaces=(0x100, 0x200)))
        p.emit(ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=0x100, spi_out=0x200, reason="rekeyed"),
               ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=0x200, spi_out=0x100, reason="rekeyed"))
        assert _spis_on_wire(p.a) == {0x201}
        assert p.a.send([_inner(1)]) == 1
        await _until(lambda: len(p.got_b) == 1, "traffic after the switch")
        await p.stop()

    asyncio.run(main())


def test_rekey_collision_binds_only_the_winner(tmp_path: Path) -> None:
    """RFC 7296 2.8.1 as the core reports it on the winning side: two successors of one CHILD_SA, outbound moves
    to the winner, the old SA is deleted, then the loser. The policy's outbound SA must be the winner's all along
    (the loser was never bound), so no packet leaves with an SPI the peer is about to forget."""
    async def main() -> None:
        p = await Pair().start(tmp_path)
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x100, spi_b=0x200))
        win_a, win_b = mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x101, spi_b=0x201, replaces=(0x100, 0x200))
        lose_a, lose_b = mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x102, spi_b=0x202,
                                  replaces=(0x100, 0x200))
        p.emit(win_a, win_b)
        p.emit(lose_a, lose_b)
        p.emit(ChildSaRekeyed(ike_id=1, peer="p", child="net", old_spi_in=0x100, old_spi_out=0x200, spi_in=0x101,
                              spi_out=0x201),
               ChildSaRekeyed(ike_id=1, peer="p", child="net", old_spi_in=0x200, old_spi_out=0x100, spi_in=0x201,
                              spi_out=0x101))
        policy = p.a.children[0x101].policy

        def bound(d: Daemon) -> int:
            return d.dataplane.sad.snapshot.outbound[policy if d is p.a else p.b.children[0x201].policy].sa.spi

        seen = []
        for spi_a, spi_b, why in ((0x100, 0x200, "rekeyed"), (0x102, 0x202, "rekey collision")):
            p.emit(ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=spi_a, spi_out=spi_b, reason=why),
                   ChildSaDeleted(ike_id=1, peer="p", child="net", spi_in=spi_b, spi_out=spi_a, reason=why))
            seen.append((bound(p.a), bound(p.b)))
            assert 0x202 not in p.a.dataplane.sad.snapshot.outbound_by_spi  # the loser never went outbound
        assert seen == [(0x201, 0x101), (0x201, 0x101)]
        assert set(p.a.children) == {0x101} and _spis_on_wire(p.a) == {0x201}
        assert p.a.send([_inner(1)]) == 1
        await _until(lambda: len(p.got_b) == 1, "traffic on the winner")
        assert p.b.dataplane.counters().get("NO_SA", 0) == 0 if isinstance(p.b.dataplane.counters(), dict) else True
        await p.stop()

    asyncio.run(main())


def test_tampered_and_unknown_esp_are_counted_drops(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x300, spi_b=0x400))
        sock = p.a.endpoint._sockets[0].sock
        esp = p.a.children[0x300].sa_out.params
        good = Sa(esp).encrypt(_inner(1))
        body = bytearray(good[28:])  # strip outer IPv4 + UDP
        body[-1] ^= 1
        sock.sendto(bytes(body), p.addr_b)                      # tampered ICV
        sock.sendto(b"\x00\x00\x99\x99" + bytes(40), p.addr_b)  # unknown SPI
        st = p.b.endpoint.stats
        await _until(lambda: p.b.counters["esp_in_dropped"] == 1 and st["esp_unknown_spi"] == 1, "two drops")
        assert p.got_b == [] and p.b.children[0x400].sa_in.counters.auth_failed == 1
        # the tampered packet is ESP of a known SA (the data plane drops it); the other one is not ESP
        assert st["esp_in"] == 1 and p.b.stats()["endpoint"]["esp_unknown_spi"] == 1
        await p.stop()

    asyncio.run(main())


def test_soft_lifetime_from_esp_reaches_the_core(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x500, spi_b=0x600, rekey_packets=5,
                         life_packets=1000))
        assert p.a.send([_inner(i) for i in range(8)]) == 8
        await _until(lambda: ("child_sa_soft_expired", 0x500) in p.core_a.calls, "the soft expiry at A (out)")
        await _until(lambda: ("child_sa_soft_expired", 0x600) in p.core_b.calls, "the soft expiry at B (in)")
        assert p.core_a.calls.count(("child_sa_soft_expired", 0x500)) == 1
        await p.stop()

    asyncio.run(main())


def test_ike_terminated_removes_everything(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        p.emit(*mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0x700, spi_b=0x800))
        p.emit(IkeSaTerminated(ike_id=1, peer="p", spi_i=1, spi_r=2, reason="deleted by peer"),
               IkeSaTerminated(ike_id=1, peer="p", spi_i=1, spi_r=2, reason="deleted"))
        assert p.a.children == {} and len(p.a.dataplane.sad) == 0
        assert p.a.dataplane.spd.snapshot.policies == () or len(p.a.dataplane.spd.snapshot.policies) == 0
        assert p.a.send([_inner(1)]) == 0
        await p.stop()

    asyncio.run(main())


def _established(ike_id: int, a: tuple[str, int], b: tuple[str, int]) -> IkeSaEstablished:
    return IkeSaEstablished(ike_id=ike_id, peer="p", spi_i=0x1122, spi_r=0x3344, initiator=True, local_addr=a,
                            remote_addr=b, local_id=Identity("fqdn", "a.test"), remote_id=Identity("fqdn", "b.test"),
                            proposal="aes128gcm16-prfsha256-ecp256", auth_method="ecdsa", nat_local=False,
                            nat_remote=False)


def test_control_socket(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path, control=True)

        def negotiated(ike_id: int):
            ev_a, _ = mirrored("aes128gcm16", p.addr_a, p.addr_b, spi_a=0xAA00 + ike_id, spi_b=0xBB00 + ike_id,
                               ike_id=ike_id)
            return [_established(ike_id, p.addr_a, p.addr_b), ev_a]

        p.core_a.on_initiate = negotiated
        path = p.a.control_path
        assert path is not None and oct(path.stat().st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(path))

        async def ask(obj: Any) -> dict:
            writer.write((obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n")
            await writer.drain()
            return json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))

        r = await ask({"cmd": "initiate", "ike": "p", "timeout": 2})
        assert r == {"ok": True, "ike_id": 1, "state": "ESTABLISHED", "child": "net", "spi_in": "0000aa01",
                     "spi_out": "0000bb01"}
        r = await ask({"cmd": "list-sas"})
        (sa,) = r["ike_sas"]
        assert sa["name"] == "p" and sa["state"] == "ESTABLISHED" and sa["remote_id"] == "b.test"
        (child,) = sa["child_sas"]
        assert child["spi_in"] == "0000aa01" and child["suite"] == "aes128gcm16" and child["packets_out"] == 0
        assert child["local_ts"] == ["10.1.0.0/24"] and child["rekey_in"] <= 3600
        assert (await ask({"cmd": "rekey", "child": "net"})) == {"ok": True, "rekeying": "0000aa01"}
        assert ("rekey_child", 0xAA01) in p.core_a.calls
        assert (await ask({"cmd": "rekey", "ike": "p"}))["ok"]
        assert (await ask({"cmd": "frobnicate"}))["error"].startswith("unknown command 'frobnicate'")
        assert (await ask(b"{not json"))["error"].startswith("not JSON")
        assert (await ask(b"[" * 30000 + b"]" * 30000))["error"] == "not a request: JSON nested too deep"
        assert (await ask({"cmd": "initiate", "ike": "nobody"}))["error"] == "no peer named 'nobody'"
        assert (await ask({"cmd": "rekey", "child": "zz"}))["error"] == "no CHILD_SA 'zz'"
        assert "stats" in await ask({"cmd": "stats"})
        assert (await ask({"cmd": "list-conns"}))["conns"][0]["name"] == "p"
        writer.write(b"x" * (70 * 1024) + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert json.loads(line)["error"] == "request too long"
        writer.close()
        await p.stop()
        assert not path.exists()

    asyncio.run(main())


def test_initiate_failure_reported(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path)
        from ike.events import AuthenticationFailed
        p.core_a.on_initiate = lambda ike_id: [AuthenticationFailed(ike_id=ike_id, peer="p", remote_addr=p.addr_b,
                                                                    reason="untrusted", local_side=True)]
        with pytest.raises(ControlError, match="authentication failed: untrusted"):
            await p.a.initiate_and_wait("p", timeout=1)
        p.core_a.on_initiate = None
        with pytest.raises(ControlError, match="not established within"):
            await p.a.initiate_and_wait("p", timeout=0.05)
        await p.stop()

    asyncio.run(main())



def test_start_action_start_keeps_the_peer_up(tmp_path: Path) -> None:
    """start_action = "start": initiated at start, re-initiated (with backoff) after a loss, but not after an
    operator's terminate."""
    import ike.daemon as daemon_mod

    async def main() -> None:
        core = ScriptedCore()
        cfg = _config(tmp_path, "a")
        from dataclasses import replace as dc_replace
        cfg = dc_replace(cfg, auto_start=("p",))
        d = Daemon(cfg, dispatcher=core)
        from ike.aio import open_udp_socket
        old_delay = daemon_mod.RESTART_DELAY
        daemon_mod.RESTART_DELAY = 0.05
        try:
            await d.start(sockets=[open_udp_socket("127.0.0.1", 0)], control=False)
            assert core.calls.count(("initiate", "p")) == 1
            core.events.append(_established(1, ("127.0.0.1", 1), ("127.0.0.1", 2)))
            d.endpoint.transmit()
            core.events.append(IkeSaTerminated(ike_id=1, peer="p", spi_i=1, spi_r=2, reason="deleted by peer"))
            d.endpoint.transmit()
            await _until(lambda: core.calls.count(("initiate", "p")) == 2, "the re-initiation")
            core.events.append(_established(2, ("127.0.0.1", 1), ("127.0.0.1", 2)))
            d.endpoint.transmit()
            d.terminate(2)
            core.events.append(IkeSaTerminated(ike_id=2, peer="p", spi_i=1, spi_r=2, reason="deleted"))
            d.endpoint.transmit()
            await asyncio.sleep(0.3)
            assert core.calls.count(("initiate", "p")) == 2  # the operator's terminate stands
        finally:
            daemon_mod.RESTART_DELAY = old_delay
            await d.stop(delete=False)

    asyncio.run(main())


def test_control_socket_stale_and_in_use(tmp_path: Path) -> None:
    import socket as socket_mod

    async def main() -> None:
        from ike.aio import open_udp_socket
        cfg = _config(tmp_path, "a")
        stale = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
        stale.bind(str(cfg.control_socket))  # a crashed daemon's socket: nobody listens
        stale.close()
        first = Daemon(cfg, dispatcher=ScriptedCore())
        await first.start(sockets=[open_udp_socket("127.0.0.1", 0)])
        assert (await first.handle_request({"cmd": "list-sas"})) == {"ok": True, "ike_sas": []}
        second = Daemon(cfg, dispatcher=ScriptedCore())
        with pytest.raises(OSError, match="in use by another daemon"):
            await second.start(sockets=[open_udp_socket("127.0.0.1", 0)])
        second.endpoint.close()
        await first.stop(delete=False)
        assert not cfg.control_socket.exists()

    asyncio.run(main())
