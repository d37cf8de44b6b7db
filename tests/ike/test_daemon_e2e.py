"""Two real daemons (the real IKE core, the real esp data plane) on loopback, configured from TOML.

Certificate authentication, UDP-encapsulated ESP on the NAT-T sockets, traffic both ways checked byte for byte,
a CHILD_SA rekey under traffic with no packet lost, an IKE_SA rekey, and a delete from the responder side.
Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built (python setup.py build_ext --inplace)")

from ike.aio import open_udp_socket
from ike.config import parse_config
from ike.daemon import Daemon
from tests.interop.strongswan import LabPki

TIMEOUT = 10.0

#: the ``[daemon]`` section every two-daemon test starts from; ``{key_log}`` is a whole line or empty
DAEMON_CONF = """
[daemon]
port = {port}
nat_port = {nat_port}
control_socket = "{name}.sock"
{key_log}
"""

CONF = DAEMON_CONF + """

[ca-profiles.lab]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.me]
cert = "{name}.pem"
key = "{name}.key"

[peers.{peer}]
local_addr = "127.0.0.1"
remote_addr = "127.0.0.1"
remote_port = {remote_port}
remote_nat_port = {remote_nat_port}
remote_id = "{peer}.test"
ike_proposals = ["{ike}"]
encap = true

[peers.{peer}.children.net]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["{esp}"]
"""


def _ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + udp


async def _until(pred, what: str, timeout: float = TIMEOUT) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Site:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.got: list[bytes] = []


async def start_pair(tmp: Path, render: Callable[[str, str, dict[str, Any]], str]) -> tuple[Site, Site]:
    """Daemons "a" and "b" on loopback sockets of their own (IKE and NAT-T, ports the kernel picks), each
    configured from the TOML ``render(name, peer, ports)`` returns; ``ports`` holds the ``port``, ``nat_port``,
    ``remote_port`` and ``remote_nat_port`` the templates take, and the ``name`` and ``peer``."""
    socks = {n: (open_udp_socket("127.0.0.1", 0), open_udp_socket("127.0.0.1", 0)) for n in ("a", "b")}
    ports = {n: (s[0].getsockname()[1], s[1].getsockname()[1]) for n, s in socks.items()}
    sites = {}
    for name, peer in (("a", "b"), ("b", "a")):
        text = render(name, peer, {"port": ports[name][0], "nat_port": ports[name][1], "name": name, "peer": peer,
                                   "remote_port": ports[peer][0], "remote_nat_port": ports[peer][1]})
        cfg = parse_config(text, base=tmp)
        site = Site(None)  # type: ignore[arg-type]
        site.daemon = Daemon(cfg, on_packets=lambda pk, ch, s=site: s.got.extend(pk))
        await site.daemon.start(sockets=list(socks[name]), control=False)
        sites[name] = site
    return sites["a"], sites["b"]


async def _pair(tmp: Path, kind: str, ike: str, esp: str, key_log: bool = False) -> tuple[Site, Site]:
    pki = LabPki(kind)
    (tmp / "ca.pem").write_bytes(pki.ca.cert_pem())
    nets = {"a": ("10.1.0.0/24", "10.2.0.0/24"), "b": ("10.2.0.0/24", "10.1.0.0/24")}

    def render(name: str, peer: str, ports: dict[str, Any]) -> str:
        cred = pki.issue(name, f"{name}.test")
        (tmp / f"{name}.pem").write_bytes(cred.cert_pem())
        cred.write_key(tmp / f"{name}.key")
        return CONF.format(**ports, ike=ike, esp=esp, local=nets[name][0], remote=nets[name][1],
                           key_log=f'key_log = "keys-{name}"' if key_log else "")

    return await start_pair(tmp, render)


def _children(d: Daemon) -> list[Any]:
    return [c for c in d.children.values() if c.state == "INSTALLED"]


@pytest.mark.parametrize("kind,ike,esp", [
    ("ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
    ("rsa", "aes256-sha256-modp2048", "aes256-sha256"),
])
def test_two_daemons_tunnel(tmp_path: Path, kind: str, ike: str, esp: str) -> None:
    async def main() -> None:
        a, b = await _pair(tmp_path, kind, ike, esp, key_log=True)
        try:
            r = await a.daemon.initiate_and_wait("b", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED" and r["child"] == "net"
            await _until(lambda: _children(b.daemon), "the responder's CHILD_SA")
            (ca,), (cb,) = _children(a.daemon), _children(b.daemon)
            assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
            assert ca.event.enc_key_out == cb.event.enc_key_in and ca.event.enc_key_in == cb.event.enc_key_out
            assert ca.event.integ_key_out == cb.event.integ_key_in and ca.event.suite == esp
            # encap = true: the IKE_SA and its ESP floated to b's NAT-T port (remote_nat_port), not its IKE port
            assert ca.event.encap and ca.event.remote_addr[1] == b.daemon.endpoint.addresses[1][1]

            forth = [_ipv4_udp("10.1.0.1", "10.2.0.9", os.urandom(200) + i.to_bytes(4, "big")) for i in range(64)]
            back = [_ipv4_udp("10.2.0.9", "10.1.0.1", os.urandom(300) + i.to_bytes(4, "big")) for i in range(64)]
            assert a.daemon.send(forth) == 64 and b.daemon.send(back) == 64
            await _until(lambda: len(b.got) == 64 and len(a.got) == 64, "traffic both ways")
            assert b.got == forth and a.got == back

            # CHILD_SA rekey under traffic: nothing lost, the new SPIs carry on.
            old = ca.spi_in
            a.daemon.rekey_child(old)
            sent = 0
            for i in range(200):
                sent += a.daemon.send([forth[i % 64]])
                await asyncio.sleep(0)
                if old not in a.daemon.children and i > 20:
                    break
            await _until(lambda: old not in a.daemon.children and old not in [c.spi_out for c in _children(b.daemon)],
                         "the old CHILD_SA to go")
            (na,), (nb,) = _children(a.daemon), _children(b.daemon)
            assert na.spi_in != old and (na.spi_in, na.spi_out) == (nb.spi_out, nb.spi_in)
            assert a.daemon.send(forth[:10]) == 10
            sent += 10
            await _until(lambda: len(b.got) == 64 + sent, f"{sent} packets after the rekey")
            assert na.sa_out.counters.packets >= 10

            # IKE_SA rekey keeps the CHILD_SA.
            (ike_id,) = [s["ike_id"] for s in a.daemon.list_sas()]
            spi_before = a.daemon.list_sas()[0]["spi_i"]
            a.daemon.rekey_ike(ike_id)
            await _until(lambda: a.daemon.list_sas()[0]["spi_i"] != spi_before, "the IKE_SA rekey")
            assert b.daemon.send(back[:5]) == 5
            await _until(lambda: len(a.got) == 69, "traffic after the IKE rekey")

            sas = a.daemon.list_sas()
            assert sas[0]["state"] == "ESTABLISHED" and sas[0]["child_sas"][0]["packets_out"] >= 10

            # The key log has what Wireshark needs for both IKE_SAs and all CHILD_SAs seen.
            keys = (tmp_path / "keys-a" / "esp_sa").read_text().splitlines()
            assert any(f"0x{na.spi_out:08x}" in line for line in keys)
            assert len((tmp_path / "keys-a" / "ikev2_decryption_table").read_text().splitlines()) == 2

            # Delete from the responder side.
            (b_ike,) = [s["ike_id"] for s in b.daemon.list_sas()]
            b.daemon.terminate(b_ike)
            await _until(lambda: not a.daemon.list_sas() and not a.daemon.children, "the initiator to drop all")
            assert len(a.daemon.dataplane.sad) == 0
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())


def test_wrong_ca_is_refused_and_daemon_survives(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await _pair(tmp_path, "ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16")
        try:
            # b now trusts another CA only: a's certificate must be refused, nothing installed.
            other = LabPki("ecdsa")
            from dataclasses import replace

            from ike.config import CaProfileConfig, make_validator
            from pki.profile import RevocationPolicy
            bad = make_validator([CaProfileConfig("x", (other.ca.cert,), RevocationPolicy(mode="disable"))])
            core = b.daemon.core
            peer = replace(core.config.peers[0], validator=bad)
            core.config = replace(core.config, peers=(peer,))
            b.daemon.config = replace(b.daemon.config, core=core.config)
            with pytest.raises(Exception, match="(?i)auth|terminated"):
                await a.daemon.initiate_and_wait("b", timeout=TIMEOUT)
            assert not a.daemon.children and not b.daemon.children
            assert len(b.daemon.dataplane.sad) == 0
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())


def test_soft_packet_lifetime_from_esp_rekeys(tmp_path: Path) -> None:
    """esp counts packets; at rekey_packets it signals the daemon, the core rekeys, traffic goes on."""
    async def main() -> None:
        pki = LabPki("ecdsa")
        (tmp_path / "ca.pem").write_bytes(pki.ca.cert_pem())
        socks = {n: (open_udp_socket("127.0.0.1", 0), open_udp_socket("127.0.0.1", 0)) for n in ("a", "b")}
        ports = {n: (s[0].getsockname()[1], s[1].getsockname()[1]) for n, s in socks.items()}
        sites = {}
        for name, peer, local, remote in (("a", "b", "10.1.0.0/24", "10.2.0.0/24"),
                                          ("b", "a", "10.2.0.0/24", "10.1.0.0/24")):
            cred = pki.issue(name, f"{name}.test")
            (tmp_path / f"{name}.pem").write_bytes(cred.cert_pem())
            cred.write_key(tmp_path / f"{name}.key")
            text = CONF.format(port=ports[name][0], nat_port=ports[name][1], name=name, peer=peer,
                               remote_port=ports[peer][0], remote_nat_port=ports[peer][1], ike="aes128gcm16-prfsha256-ecp256", esp="aes128gcm16",
                               local=local, remote=remote, key_log="")
            text += 'rekey_packets = 100\nlife_packets = 1000\n'
            site = Site(None)  # type: ignore[arg-type]
            site.daemon = Daemon(parse_config(text, base=tmp_path), on_packets=lambda pk, ch, s=site: s.got.extend(pk))
            await site.daemon.start(sockets=list(socks[name]), control=False)
            sites[name] = site
        a, b = sites["a"], sites["b"]
        try:
            await a.daemon.initiate_and_wait("b", timeout=TIMEOUT)
            await _until(lambda: _children(b.daemon), "the responder's CHILD_SA")
            (first,) = _children(a.daemon)
            assert first.event.rekey_packets == 100 and first.sa_out.params.lifetime.soft_packets == 100
            pkt = _ipv4_udp("10.1.0.1", "10.2.0.9", b"x" * 100)
            sent = 0
            for _ in range(30):  # 300 packets in bursts; the rekey happens on the way
                sent += a.daemon.send([pkt] * 10)
                await asyncio.sleep(0.01)
            await _until(lambda: first.spi_in not in a.daemon.children and len(_children(a.daemon)) == 1,
                         "the rekey started by the soft packet limit")
            await _until(lambda: len(b.got) == sent, f"all {sent} packets")
            (second,) = _children(a.daemon)
            assert second.spi_in != first.spi_in
            assert first.sa_out.counters.packets >= 100
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())


def _ipv6_udp(src: str, dst: str, payload: bytes) -> bytes:
    import ipaddress as ip
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, ip.ip_address(src).packed,
                       ip.ip_address(dst).packed) + udp


def test_ipv6_outer_and_inner(tmp_path: Path) -> None:
    """IKE and ESP-in-UDP over ::1, IPv6 traffic selectors, packets both ways."""
    try:
        probe = open_udp_socket("::1", 0)
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def main() -> None:
        pki = LabPki("ecdsa")
        (tmp_path / "ca.pem").write_bytes(pki.ca.cert_pem())
        socks = {n: (open_udp_socket("::1", 0), open_udp_socket("::1", 0)) for n in ("a", "b")}
        ports = {n: (s[0].getsockname()[1], s[1].getsockname()[1]) for n, s in socks.items()}
        sites = {}
        for name, peer, local, remote in (("a", "b", "fd00:a::/64", "fd00:b::/64"), ("b", "a", "fd00:b::/64", "fd00:a::/64")):
            cred = pki.issue(name, f"{name}.test")
            (tmp_path / f"{name}.pem").write_bytes(cred.cert_pem())
            cred.write_key(tmp_path / f"{name}.key")
            text = CONF.format(port=ports[name][0], nat_port=ports[name][1], name=name, peer=peer,
                               remote_port=ports[peer][0], remote_nat_port=ports[peer][1], ike="aes256gcm16-prfsha384-ecp384", esp="aes256gcm16",
                               local=local, remote=remote, key_log="").replace('"127.0.0.1"', '"::1"')
            site = Site(None)  # type: ignore[arg-type]
            site.daemon = Daemon(parse_config(text, base=tmp_path), on_packets=lambda pk, ch, s=site: s.got.extend(pk))
            await site.daemon.start(sockets=list(socks[name]), control=False)
            sites[name] = site
        a, b = sites["a"], sites["b"]
        try:
            await a.daemon.initiate_and_wait("b", timeout=TIMEOUT)
            await _until(lambda: _children(b.daemon), "the responder's CHILD_SA")
            (ca,) = _children(a.daemon)
            assert ca.event.local_addr[0] == "::1" and ca.sa_out.params.dst == "::1"
            forth = [_ipv6_udp("fd00:a::1", "fd00:b::9", bytes([i]) * 300) for i in range(20)]
            back = [_ipv6_udp("fd00:b::9", "fd00:a::1", bytes([i]) * 200) for i in range(20)]
            assert a.daemon.send(forth) == 20 and b.daemon.send(back) == 20
            await _until(lambda: len(a.got) == 20 and len(b.got) == 20, "IPv6 traffic both ways")
            assert b.got == forth and a.got == back
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())


def test_garbage_on_both_ports_then_a_tunnel(tmp_path: Path) -> None:
    """Random datagrams, truncated and oversized IKE headers, marker-only and ESP-looking junk hit both of the
    responder's ports: every one is counted and dropped, and the daemon then negotiates normally."""
    import random
    import socket

    async def main() -> None:
        a, b = await _pair(tmp_path, "ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16")
        rng = random.Random(4500)
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            ports = [addr for addr in b.daemon.endpoint.addresses]
            header = bytes(8) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4)
            samples = [b"", b"\xff", b"\x00" * 4, b"\x00" * 3]
            samples += [rng.randbytes(rng.randrange(1, 1500)) for _ in range(300)]
            samples += [header + (28 + n).to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 64)) for n in range(50)]
            samples += [header + (0xFFFFFFF0).to_bytes(4, "big")]
            for i, data in enumerate(samples):
                for port_addr in ports:
                    payload = data if port_addr[1] == ports[0][1] or i % 2 else b"\x00\x00\x00\x00" + data
                    junk.sendto(payload, port_addr)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            st = b.daemon.endpoint.stats
            assert st["core_errors"] == 0 and st["esp_handler_errors"] == 0
            assert st["ike_in"] + st["esp_in"] + st["malformed"] + st["keepalives_in"] > 0
            assert st["esp_in"] == 0 and st["esp_unknown_spi"] > 0  # no SA yet: none of the junk is ESP
            assert not b.daemon.children and len(b.daemon.dataplane.sad) == 0
            r = await a.daemon.initiate_and_wait("b", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED"
            pkt = _ipv4_udp("10.1.0.1", "10.2.0.9", b"after the storm")
            assert a.daemon.send([pkt]) == 1
            await _until(lambda: b.got == [pkt], "a packet through the tunnel")
        finally:
            junk.close()
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())
