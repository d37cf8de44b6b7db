"""IKEv1 in the daemon: two real daemons (ike.v1 core, the esp data plane) on loopback, configured from TOML with
``version = 1``; the same sockets also answer IKEv2 for another peer.

Evidence: main mode + quick mode establish through the daemon's sockets, NAT-T floats the ISAKMP SA to the
NAT-T port (``encap = true`` fakes the NAT, as charon's option does), the CHILD_SAs are installed crosswise with
UDP encapsulation and carry traffic both ways byte for byte, ``list-sas`` says IKEv1, the key log gets the
``ikev1_decryption_table`` row and the ``esp_sa`` rows, and garbage on the sockets is counted, not fatal.
"""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built (python setup.py build_ext --inplace)")

from ike.daemon import Daemon
from ike.listing import format_sas
from tests.ike.test_daemon_e2e import DAEMON_CONF, TIMEOUT, Site, _children, _ipv4_udp, _until, start_pair

CONF = DAEMON_CONF + """

[peers.{peer}1]
version = 1
local_addr = "127.0.0.1"
remote_addr = "127.0.0.1"
remote_port = {remote_port}
remote_nat_port = {remote_nat_port}
local_id = "{name}.test"
remote_id = "{peer}.test"
auth = "psk"
psk = "v1-lab-secret-0123"
ike_proposals = ["aes256-sha256-modp2048"]
encap = {encap}

[peers.{peer}1.children.net]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["aes128-sha256-modp2048"]

[peers.{peer}2]
local_addr = "127.0.0.1"
remote_addr = "127.0.0.1"
remote_port = {remote_port}
remote_nat_port = {remote_nat_port}
local_id = "{name}2.test"
remote_id = "{peer}2.test"
auth = "psk"
remote_auth = "psk"
psk = "v2-lab-secret-0123"
ike_proposals = ["aes128gcm16-prfsha256-ecp256"]
encap = true

[peers.{peer}2.children.net]
local_ts = ["{local2}"]
remote_ts = ["{remote2}"]
esp_proposals = ["aes128gcm16"]
"""


async def _pair(tmp: Path, encap_a: bool = True) -> tuple[Site, Site]:
    nets = {"a": ("10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"),
            "b": ("10.2.0.0/24", "10.1.0.0/24", "10.4.0.0/24", "10.3.0.0/24")}

    def render(name: str, peer: str, ports: dict[str, Any]) -> str:
        local, remote, local2, remote2 = nets[name]
        return CONF.format(**ports, key_log=f'key_log = "keys-{name}"', local=local, remote=remote, local2=local2,
                           remote2=remote2, encap="true" if (encap_a and name == "a") else "false")

    return await start_pair(tmp, render)


def _v1(d: Daemon) -> list[dict[str, Any]]:
    return [s for s in d.list_sas() if s["version"] == 1]


def _v1_children(d: Daemon) -> list[Any]:
    return [c for c in _children(d) if d.core.v1.owns(c.event.ike_id)]


def test_two_daemons_speak_ikev1_and_ikev2_on_the_same_sockets(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await _pair(tmp_path)
        try:
            r = await a.daemon.initiate_and_wait("b1", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED" and r["child"] == "net", r
            await _until(lambda: _children(b.daemon), "the responder's CHILD_SA")
            (ca,), (cb,) = _children(a.daemon), _children(b.daemon)
            assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
            assert ca.event.enc_key_out == cb.event.enc_key_in and ca.event.integ_key_in == cb.event.integ_key_out
            # NAT-T floated the ISAKMP SA to the NAT-T ports; ESP goes in UDP between them
            nat_a, nat_b = a.daemon.config.nat_port, b.daemon.config.nat_port
            assert ca.event.encap and ca.event.local_addr[1] == nat_a and ca.event.remote_addr[1] == nat_b
            assert cb.event.encap and cb.event.local_addr[1] == nat_b and cb.event.remote_addr[1] == nat_a
            assert ca.event.suite == "aes128-sha256"

            # traffic both ways, byte for byte
            out = [_ipv4_udp("10.1.0.5", "10.2.0.7", bytes([i]) * (40 + i)) for i in range(20)]
            assert a.daemon.send(out) == 20
            await _until(lambda: len(b.got) == 20, "b to receive 20 packets")
            assert b.got == out
            back = [_ipv4_udp("10.2.0.7", "10.1.0.5", b"reply %d" % i) for i in range(5)]
            assert b.daemon.send(back) == 5
            await _until(lambda: len(a.got) == 5, "a to receive 5 packets")
            assert a.got == back

            # list-sas: IKEv1, the cookies as SPIs, the floated ports, the CHILD_SA in UDP
            (sa,) = _v1(a.daemon)
            assert sa["state"] == "ESTABLISHED" and sa["initiator"] and sa["remote_port"] == nat_b
            assert sa["proposal"] == "aes256-sha256-modp2048" and sa["auth"] == "psk" and sa["encap_forced"]
            assert sa["child_sas"][0]["encap"] and sa["child_sas"][0]["packets_out"] == 20
            text = format_sas(a.daemon.list_sas())
            assert f"b1: #{sa['ike_id']}, ESTABLISHED, IKEv1, {sa['spi_i']}_i* {sa['spi_r']}_r" in text, text
            assert "TUNNEL-in-UDP" in text

            # the same sockets answer IKEv2 for the other peer
            r2 = await a.daemon.initiate_and_wait("b2", timeout=TIMEOUT)
            assert r2["state"] == "ESTABLISHED" and r2["ike_id"] != sa["ike_id"]
            versions = sorted(s["version"] for s in b.daemon.list_sas())
            assert versions == [1, 2], b.daemon.list_sas()

            # key log: Wireshark's ikev1_decryption_table row (cookie_i, phase-1 key) and esp_sa rows
            (session,) = [x.session for x in b.daemon.core.v1._sas.values()]
            rows = (tmp_path / "keys-b" / "ikev1_decryption_table").read_text().splitlines()
            assert rows == [f"{session.cky_i.hex()},{session.keys.enc_key.hex()}"]
            esp = (tmp_path / "keys-a" / "esp_sa").read_text()
            assert f"0x{ca.spi_out:08x}" in esp and f"0x{ca.event.enc_key_out.hex()}" in esp
            assert oct((tmp_path / "keys-b" / "ikev1_decryption_table").stat().st_mode & 0o777) == "0o600"

            # hostile datagrams: an unknown cookie, a truncated ISAKMP header, an unknown major version
            port_b = b.daemon.endpoint.addresses[0][1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (bytes(8) * 2 + b"\x01\x10\x05\x00" + bytes(4) + (28).to_bytes(4, "big"),
                             b"\x00" * 17 + b"\x10", bytes(17) + b"\x30" + bytes(10)):
                    s.sendto(junk, ("127.0.0.1", port_b))
            await _until(lambda: b.daemon.core.stats["dropped_unknown_version"] >= 1
                         and b.daemon.core.stats["v1_dropped_unknown_cookie"] >= 1, "the drops to be counted")
            assert _v1(b.daemon)[0]["state"] == "ESTABLISHED"

            # rekey on the control socket: a new quick mode, both sides install the new pair before the old goes;
            # traffic sent meanwhile and after arrives
            r = await a.daemon.handle_request({"cmd": "rekey", "child": sa["child_sas"][0]["spi_in"]})
            assert r["ok"], r
            await _until(lambda: [c.spi_in for c in _v1_children(a.daemon)] not in ([], [ca.spi_in])
                         and len(_v1_children(a.daemon)) == 1 and len(_v1_children(b.daemon)) == 1
                         and _v1_children(b.daemon)[0].spi_in != cb.spi_in, "the rekeyed CHILD_SA on both sides")
            (na,), (nb,) = _v1_children(a.daemon), _v1_children(b.daemon)
            assert (na.spi_in, na.spi_out) == (nb.spi_out, nb.spi_in) and na.event.replaces == ca.spi_in
            b.got.clear()
            assert a.daemon.send(out) == 20
            await _until(lambda: len(b.got) == 20, "b to receive 20 packets on the new CHILD_SA")
            assert b.got == out

            # an operator's terminate sends DELETE: the peer removes the ISAKMP SA and its ESP SAs too
            a.daemon.terminate(sa["ike_id"])
            assert not _v1(a.daemon) and all(c.event.ike_id != sa["ike_id"] for c in a.daemon.children.values())
            await _until(lambda: not _v1(b.daemon) and not _v1_children(b.daemon), "b to act on the DELETE")
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())


def test_without_a_nat_nothing_floats(tmp_path: Path) -> None:
    """Neither side forces encapsulation and loopback has no NAT: the NAT-D hashes match, the ISAKMP SA stays on
    the IKE ports and quick mode negotiates plain tunnel mode (ESP not in UDP)."""
    async def main() -> None:
        a, b = await _pair(tmp_path, encap_a=False)
        try:
            r = await a.daemon.initiate_and_wait("b1", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED", r
            (sa,) = _v1(a.daemon)
            assert sa["remote_port"] == b.daemon.endpoint.addresses[0][1] and not sa["nat_local"]
            assert not sa["nat_remote"] and not sa["child_sas"][0]["encap"]
        finally:
            await a.daemon.stop(delete=False)
            await b.daemon.stop(delete=False)

    asyncio.run(main())
