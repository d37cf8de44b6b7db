"""The espresso daemon with ``version = 1`` (IKEv1, PSK) against strongSwan charon, as an operator runs it:
``python -m ike daemon --config X`` with a ``[gateway]`` (TUN + ESP threads) in a namespace, driven over its
control socket; charon with kernel-libipsec in another namespace.

Evidence: both roles establish main mode and quick mode, the CHILD_SA carries pings through the tunnel (ESP in
UDP: NAT-T floats because espresso fakes a NAT with ``encap = true``, as charon's libipsec needs); then the same
through a real NAT (nftables masquerade in a router namespace), where NAT-D finds the NAT and the ISAKMP SA
floats to 4500 behind it; and two espresso daemons speaking IKEv1 to each other over their gateways.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.interop import strongswan as ss
from tests.interop.test_gateway import Topology, build_topology, ping, unique
from tests.interop.test_gateway_ike import ROOT, IkeGateway
from tests.interop.test_ikev1_strongswan import PSK, _PskCharon, _V1Conn
from tests.support import require, require_root, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CONF = """
[daemon]
addresses = ["{local}"]
control_socket = "{name}.sock"
retransmit_timeout = "1s"
{daemon_extra}
[peers.{peer}]
version = 1
local_addr = "{local}"
remote_addr = "{remote}"
local_id = "{local_id}"
remote_id = "{remote_id}"
{auth}
ike_proposals = ["{ike}"]
encap = {encap}
{extra}
[peers.{peer}.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["{esp}"]

[gateway]
tun_name = "{tun}"
routes = ["{remote_ts}"]
"""


def _conf(**kw: str) -> str:
    """The daemon's TOML: by default PSK with a key log and charon's proposals (PFS); ``daemon_extra`` (sections
    after ``[daemon]``), ``auth`` (the peer's auth lines), ``extra`` (more peer lines), ``ike``, ``esp`` vary it."""
    kw.setdefault("daemon_extra", f'key_log = "keys-{kw["name"]}"\n')
    kw.setdefault("auth", f'auth = "psk"\npsk = "{PSK.decode()}"')
    kw.setdefault("extra", "")
    kw.setdefault("ike", "aes128-sha256-modp2048")
    kw.setdefault("esp", "aes128-sha256-modp2048")
    return CONF.format(**kw)


def _conf_to_charon(a: ss.Site, b: ss.Site, **kw: str) -> str:
    """``_conf`` for espresso in ``a`` with charon's ``v1`` connection (s.test, see _V1Conn) in ``b``."""
    return _conf(local=a.outer, remote=b.outer, name="esp", peer="swan", local_id="e.test", remote_id="s.test",
                 local_ts=f"{a.inner}/32", remote_ts=f"{b.inner}/32", encap="true", tun=unique("ev1"), **kw)


class _Charon(_PskCharon):
    """charon with the IKEv1 PSK connection of test_ikev1_strongswan (ids s.test / e.test)."""


@pytest.fixture
def lab(tmp_path: Path):
    require_root()
    require_tool("swanctl")
    yield from ss.charon_lab(tmp_path / "lab")


def _gateway(tmp: Path, ns: str, local: str, remote: str, inner_l: str, inner_r: str, encap: bool) -> IkeGateway:
    conf = _conf(local=local, remote=remote, name="esp", peer="swan", local_id="e.test", remote_id="s.test",
                 local_ts=f"{inner_l}/32", remote_ts=f"{inner_r}/32", encap=str(encap).lower(), tun=unique("ev1"))
    return IkeGateway(ns, tmp, "esp", conf)


def _charon_sa(ch: ss.Charon) -> dict:
    sas = [s["v1"] for s in ch.list_sas() if "v1" in s]
    assert len(sas) == 1, sas
    return sas[0]


def _charon_installed(ch: ss.Charon) -> None:
    """Wait for charon's CHILD_SA: IKEv1's QM3 is not acknowledged, so our first packets can reach charon before
    it has processed QM3 and installed the SA (the commit bit of RFC 2409 5.5 is what would close that gap)."""
    ch.wait_for(lambda: any(s.get("v1", {}).get("child-sas") for s in ch.list_sas()) or None,
                "charon to install the CHILD_SA")


def _establish(gw: IkeGateway, ch: ss.Charon, initiator: str) -> dict:
    """The ISAKMP SA and its CHILD_SA up on both sides: the daemon's, and charon's (see _charon_installed), so
    that a test may send traffic at once and count every packet."""
    if initiator == "espresso":
        r = gw.control({"cmd": "initiate", "ike": "swan", "timeout": 15})
        assert r["ok"] and r["state"] == "ESTABLISHED", (r, ch.tail(60))
    else:
        r = ch.initiate("net", ike="v1", timeout=15)
        assert r.returncode == 0, r.stdout + r.stderr + ch.tail(60)
    (child,) = gw.wait(gw.children, "the CHILD_SA on the espresso side")
    _charon_installed(ch)
    return child


def _psk_lab(lab: ss.Lab, tmp_path: Path, child_extra: str = "") -> tuple[ss.Site, ss.Site, ss.Charon, IkeGateway]:
    """espresso's daemon (site a, forced encapsulation) and charon (site b) with the PSK connection."""
    a, b = lab.pair()
    ch = _Charon(tmp_path / "charon", b.netns, log_levels={"ike": 2, "chd": 2})
    lab.charons.append(ch)
    ch.connections.append(_V1Conn(b.outer, a.outer, "-modp2048", child_extra=child_extra))
    ch.start()
    return a, b, ch, _gateway(tmp_path, a.netns.name, a.outer, b.outer, a.inner, b.inner, encap=True)


@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_espresso_daemon_ikev1_with_charon_ping(lab, tmp_path, initiator):
    a, b, ch, gw = _psk_lab(lab, tmp_path)
    try:
        child = _establish(gw, ch, initiator)
        assert child["encap"] and child["suite"] == "aes128-sha256", child
        p = ss.ping(a, b.inner, count=5, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        p = ss.ping(b, a.inner, count=3, timeout=10)
        assert p.returncode == 0, p.stdout + p.stderr
        sas = gw.control({"cmd": "list-sas"})["ike_sas"]
        (sa,) = sas
        assert sa["version"] == 1 and sa["state"] == "ESTABLISHED" and sa["initiator"] == (initiator == "espresso")
        assert sa["remote_port"] == 4500 and sa["child_sas"][0]["packets_in"] >= 8
        v1 = _charon_sa(ch)
        assert v1["version"] == "1" and v1["state"] == "ESTABLISHED", v1
        (kid,) = v1["child-sas"].values()
        assert kid["encap"] == "yes" and {kid["spi-in"], kid["spi-out"]} == {child["spi_in"], child["spi_out"]}
        # the key log: the ISAKMP SA's row and the ESP SAs' rows for Wireshark
        keys = tmp_path / "keys-esp"
        (row,) = (keys / "ikev1_decryption_table").read_text().splitlines()
        assert row.startswith(sa["spi_i"] + ",")
        esp = (keys / "esp_sa").read_text()
        assert f"0x{child['spi_in']}" in esp and f"0x{child['spi_out']}" in esp
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH"):
        assert stats["inbound"][bad] == 0, (bad, stats["inbound"])


def _nat_lab(lab: ss.Lab) -> tuple[ss.Site, ss.Netns, ss.Site]:
    """espresso (inside, 10.77.1.2) -- router with nftables masquerade -- charon (outside, 10.77.2.2)."""
    inside, router, outside = lab.netns(), lab.netns(), lab.netns()
    links = []
    for a_ns, b_ns, net in ((inside, router, "10.77.1"), (router, outside, "10.77.2")):
        ia, ib = unique("nva"), unique("nvb")
        ss.run(["ip", "link", "add", ia, "netns", a_ns.name, "type", "veth", "peer", "name", ib, "netns", b_ns.name])
        a_ns.run(["ip", "addr", "add", f"{net}.{2 if a_ns is inside else 1}/24", "dev", ia])
        b_ns.run(["ip", "addr", "add", f"{net}.{1 if a_ns is inside else 2}/24", "dev", ib])
        for ns, i in ((a_ns, ia), (b_ns, ib)):
            ns.run(["ip", "link", "set", i, "up"])
        links.append((ia, ib))
    inside.run(["ip", "route", "add", "default", "via", "10.77.1.1"])
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    wan = links[1][0]
    router.run(["nft", "add", "table", "ip", "nat"])
    router.run(["nft", "add", "chain", "ip", "nat", "post", "{ type nat hook postrouting priority 100 ; }"])
    router.run(["nft", "add", "rule", "ip", "nat", "post", "oifname", wan, "masquerade"])
    for ns, inner in ((inside, "10.98.1.1"), (outside, "10.98.2.1")):
        ns.run(["ip", "addr", "add", f"{inner}/32", "dev", "lo"])
    return (ss.Site(inside, "10.77.1.2", "10.98.1.1", links[0][0]), router,
            ss.Site(outside, "10.77.2.2", "10.98.2.1", links[1][1]))


def test_nat_t_through_an_nftables_masquerade(lab, tmp_path):
    """No forced encapsulation: the NAT-D hashes find the masquerade, the ISAKMP SA floats to 4500 behind it,
    quick mode negotiates UDP-encapsulated tunnel mode and pings cross the NAT in both directions."""
    require_tool("nft")
    inside, router, outside = _nat_lab(lab)
    ch = _Charon(tmp_path / "charon", outside.netns, log_levels={"ike": 2, "chd": 2})
    lab.charons.append(ch)
    ch.connections.append(_V1Conn(outside.outer, "%any", "-modp2048"))
    ch.start()
    gw = _gateway(tmp_path, inside.netns.name, inside.outer, outside.outer, inside.inner, outside.inner,
                  encap=False)
    try:
        child = _establish(gw, ch, "espresso")
        assert child["encap"], child
        (sa,) = gw.control({"cmd": "list-sas"})["ike_sas"]
        assert sa["nat_local"] and not sa["encap_forced"] and sa["local_port"] == 4500, sa
        p = ss.ping(inside, outside.inner, count=5, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        log = ch.log()
        assert "local host is behind NAT" not in log and "remote host is behind NAT" in log, ch.tail(80)
        # the NAT really rewrote: charon sees the router's address, and both sides are on the NAT-T port
        v1 = _charon_sa(ch)
        assert v1["remote-host"] == "10.77.2.1" and v1["nat-remote"] == "yes" and v1["local-port"] == "4500", v1
        assert sa["remote_port"] == 4500
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


def _topo_conf(name: str, peer: str, local: str, remote: str, lts: str, rts: str, encap: bool) -> str:
    return _conf(local=local, remote=remote, name=name, peer=peer, local_id=f"{name}.test",
                 remote_id=f"{peer}.test", local_ts=lts, remote_ts=rts, encap=str(encap).lower(),
                 tun=unique("ev1"))


def test_two_espresso_daemons_speak_ikev1(tmp_path):
    """Two espresso gateways (four namespaces: a host behind each) with version = 1: ping both ways."""
    require_root()
    require_tool("ip")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    topo: Topology = build_topology()
    try:
        a = IkeGateway(topo.gw_a, tmp_path, "gwa", _topo_conf("gwa", "gwb", "10.97.0.1", "10.97.0.2",
                                                                "10.98.1.0/24", "10.98.2.0/24", True))
        try:
            b = IkeGateway(topo.gw_b, tmp_path, "gwb", _topo_conf("gwb", "gwa", "10.97.0.2", "10.97.0.1",
                                                                    "10.98.2.0/24", "10.98.1.0/24", False))
        except BaseException:
            a.stop(kill=True)
            raise
        try:
            r = a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})
            assert r["ok"] and r["state"] == "ESTABLISHED", r
            (ca,) = a.wait(a.children, "the initiator's CHILD_SA")
            (cb,) = b.wait(b.children, "the responder's CHILD_SA")
            assert (ca["spi_in"], ca["spi_out"]) == (cb["spi_out"], cb["spi_in"]) and ca["encap"] and cb["encap"]
            p = ping(topo.host_a, "10.98.2.2", count=5)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
            assert ping(topo.host_b, "10.98.1.2", count=3).returncode == 0
            (sa,) = b.control({"cmd": "list-sas"})["ike_sas"]
            assert sa["version"] == 1 and not sa["initiator"] and sa["nat_remote"]
        finally:
            stats_a = a.stop()
            stats_b = b.stop()
    finally:
        topo.close()
    for s in (stats_a, stats_b):
        assert s["tracebacks"] == 0, s["stderr"][-3000:]
        for bad in ("AUTH_FAILED", "REPLAYED", "POLICY_MISMATCH"):
            assert s["inbound"][bad] == 0, (bad, s)


#: what the certificate gateway adds after ``[daemon]``, and its peer's auth lines
CERT_SECTIONS = """
[pki]
crls = ["root.crl", "sub.crl"]

[certificates.e]
cert = "e.pem"
key = "e.key"
chain = ["sub.pem"]

[ca-profiles.root]
ca_certs = ["root.pem"]
"""
CERT_AUTH = """auth = "pubkey"
remote_auth = "pubkey"
certificate = "e"
ca_profiles = ["root"]
revocation = "strict"
"""


def _cert_gateway(tmp: Path, pki, a: ss.Site, b: ss.Site) -> IkeGateway:  # type: ignore[no-untyped-def]
    _cert_files(tmp, pki)
    conf = _conf_to_charon(a, b, daemon_extra=CERT_SECTIONS, auth=CERT_AUTH)
    return IkeGateway(a.netns.name, tmp, "esp", conf)


def _cert_files(tmp: Path, pki) -> None:  # type: ignore[no-untyped-def]
    """What CERT_SECTIONS names: the daemon's certificate and key, the intermediate, the root and both CRLs."""
    from cryptography.hazmat.primitives import serialization

    e = pki.creds["e"]
    (tmp / "e.pem").write_bytes(e.cert.public_bytes(serialization.Encoding.PEM))
    e.write_key(tmp / "e.key")
    (tmp / "sub.pem").write_bytes(pki.sub.ca.cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "root.pem").write_bytes(pki.root.ca.cert.public_bytes(serialization.Encoding.PEM))
    for name, crl in zip(("root.crl", "sub.crl"), pki.crls()):
        (tmp / name).write_bytes(crl.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("initiator", "kind"), [("espresso", "ecdsa"), ("strongswan", "rsa")])
def test_espresso_daemon_ikev1_with_certificates_through_an_intermediate(lab, tmp_path, initiator, kind):
    """``auth = "pubkey"`` on a version = 1 peer: the daemon's certificate (issued by an intermediate it sends in
    CERT), the root as ca-profile, local CRLs with strict revocation; charon likewise. Pings cross; list-sas
    names the signature method; rekey and terminate go through the IKEv1 session (quick mode, DELETE)."""
    from tests.ike.v1.sigpki import V1Pki
    from tests.interop.test_ikev1_certs import _charon as cert_charon

    pki = V1Pki(kind)
    a, b = lab.pair()
    ch = cert_charon(lab, tmp_path, pki, b, a)
    gw = _cert_gateway(tmp_path, pki, a, b)
    try:
        child = _establish(gw, ch, initiator)
        p = ss.ping(a, b.inner, count=5, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        (sa,) = gw.control({"cmd": "list-sas"})["ike_sas"]
        assert sa["version"] == 1 and sa["auth"] == ("ecdsa-256" if kind == "ecdsa" else "rsa"), sa
        assert f"authentication of 'e.test' with {'ECDSA_WITH_NULL' if kind == 'ecdsa' else 'RSA_EMSA_PKCS1_NULL'}"\
               f" successful" in ch.log(), ch.tail(60)
        if initiator == "espresso":  # the quick-mode initiator rekeys: make-before-break, pings keep crossing
            r = gw.control({"cmd": "rekey", "child": child["spi_in"]})
            assert r["ok"], r
            gw.wait(lambda: [c for c in gw.children() if c["spi_in"] != child["spi_in"]], "the rekeyed CHILD_SA")
            p = ss.ping(a, b.inner, count=3, timeout=10)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        r = gw.control({"cmd": "terminate", "ike_id": sa["ike_id"]})
        assert r["ok"], r
        ch.wait_for(lambda: not [s for s in ch.list_sas() if "v1" in s] or None, "charon to delete its ISAKMP SA")
        assert "received DELETE for" in ch.log(), ch.tail(60)
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


def test_espresso_daemon_ikev1_refuses_a_revoked_charon(lab, tmp_path):
    """The intermediate's CRL (a local [pki] crls file, revocation = "strict") revokes charon's certificate: the
    daemon's initiate fails with the reason, and charon hears AUTHENTICATION-FAILED."""
    from tests.ike.v1.sigpki import V1Pki
    from tests.interop.test_ikev1_certs import _charon as cert_charon

    pki = V1Pki("ecdsa", revoked=("s",))
    a, b = lab.pair()
    ch = cert_charon(lab, tmp_path, pki, b, a)
    gw = _cert_gateway(tmp_path, pki, a, b)
    try:
        r = gw.control({"cmd": "initiate", "ike": "swan", "timeout": 15})
        assert not r["ok"] and "revoked" in r["error"], r
        ch.wait_for(lambda: "received AUTHENTICATION_FAILED" in ch.log() or None, "charon to hear the refusal")
        assert not gw.children()
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


#: a peer before charon's, for anyone (%any), that expects another identity: the daemon must pass it over
DECOY = """
[peers.decoy]
version = 1
remote_addr = "%any"
local_id = "e.test"
remote_id = "x.test"
auth = "pubkey"
remote_auth = "pubkey"
certificate = "e"
ca_profiles = ["root"]
ike_proposals = ["aes128-sha256-modp2048"]

[peers.decoy.children.net]
local_ts = ["10.77.0.0/24"]
remote_ts = ["10.78.0.0/24"]
esp_proposals = ["aes128-sha256-modp2048"]
"""


def test_charon_is_told_from_another_wildcard_peer_by_its_certificate_identity(lab, tmp_path):
    """Two ``version = 1`` peers for %any with certificates, the decoy first: charon (s.test) initiates, and the
    daemon takes its identity from main mode's fifth message to choose charon's peer, as strongSwan itself does
    ("switching to peer config"); list-sas names it and pings cross the tunnel."""
    from tests.ike.v1.sigpki import V1Pki
    from tests.interop.test_ikev1_certs import _charon as cert_charon

    pki = V1Pki("ecdsa")
    a, b = lab.pair()
    ch = cert_charon(lab, tmp_path, pki, b, a)
    _cert_files(tmp_path, pki)
    conf = _conf(local=a.outer, remote="%any", name="esp", peer="swan", local_id="e.test", remote_id="s.test",
                 local_ts=f"{a.inner}/32", remote_ts=f"{b.inner}/32", encap="true", tun=unique("ev1"),
                 daemon_extra=CERT_SECTIONS + DECOY, auth=CERT_AUTH)
    gw = IkeGateway(a.netns.name, tmp_path, "esp", conf)
    try:
        _establish(gw, ch, "strongswan")
        _charon_installed(ch)
        p = ss.ping(a, b.inner, count=3, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        (sa,) = gw.control({"cmd": "list-sas"})["ike_sas"]
        assert sa["name"] == "swan" and sa["version"] == 1 and not sa["initiator"], sa
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


def _cli(gw: IkeGateway, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line beside the daemon (``python -m ike rekey ...``), on its control socket."""
    return subprocess.run([sys.executable, "-m", "ike", args[0], "--socket", str(gw.tmp / f"{gw.name}.sock"),
                           *args[1:]], cwd=str(ROOT), capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _flood_until(site: ss.Site, dst: str, stop: threading.Event, runs: list) -> threading.Thread:
    """Fast pings in the background (runs of 50 echoes 20 ms apart, back to back) until ``stop`` is set, at most
    60 s; ``runs`` gets each run's CompletedProcess. The flood lasts as long as what the test does under it, however
    slow the machine: a flood of a fixed count ended before the rekey did on a loaded machine (seen at load 14)."""
    def run() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            runs.append(site.netns.run(["ping", "-n", "-q", "-c", "50", "-i", "0.02", "-W", "2", "-I", site.inner,
                                        dst], check=False, timeout=60))
    t = threading.Thread(target=run)
    t.start()
    return t


def _counts(p: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_ikev1_rekey_under_traffic_isakmp_rekey_and_delete_with_charon(lab, tmp_path, initiator):
    """``python -m ike rekey`` on the IKEv1 CHILD_SA during a 20 ms ping flood: every echo comes back (the new
    ESP SAs are installed before the old ones go); an ISAKMP rekey (espresso's main mode when it initiated);
    ``terminate`` sends DELETE and charon removes its SAs."""
    a, b, ch, gw = _psk_lab(lab, tmp_path)
    try:
        child = _establish(gw, ch, initiator)
        assert ss.ping(a, b.inner, count=2, timeout=10).returncode == 0
        stop, runs = threading.Event(), []  # type: ignore[var-annotated]
        t = _flood_until(a, b.inner, stop, runs)
        try:
            gw.wait(lambda: sum(c["packets_in"] for c in gw.children()) >= 2 + 10, "the flood to cross the tunnel")
            r = _cli(gw, "rekey", "--child", child["spi_in"])
            assert r.returncode == 0, r.stdout + r.stderr
            new = gw.wait(lambda: [c for c in gw.children()
                                   if c["spi_in"] != child["spi_in"] and c["outbound_active"]], "the rekeyed CHILD_SA")
            gw.wait(lambda: all(c["spi_in"] != child["spi_in"] for c in gw.children()), "the old CHILD_SA to go")
            assert t.is_alive(), "the flood ended (its 60 s bound) before the rekey: not under traffic"
        finally:
            stop.set()
            t.join(90)
        counts = [_counts(p) for p in runs]
        sent, got = sum(c[0] for c in counts), sum(c[1] for c in counts)
        assert sent >= 50 and got == sent, (counts, [p.stdout for p in runs if _counts(p)[1] != _counts(p)[0]])
        (kid,) = _charon_sa(ch)["child-sas"].values()
        assert {kid["spi-in"], kid["spi-out"]} == {new[0]["spi_in"], new[0]["spi_out"]}, kid

        if initiator == "espresso":  # the ISAKMP SA: a new main mode, charon moves to the new cookies
            old = _charon_sa(ch)
            r = _cli(gw, "rekey", "--ike", "swan")
            assert r.returncode == 0, r.stdout + r.stderr
            ch.wait_for(lambda: [s for s in ch.list_sas() if "v1" in s and s["v1"]["state"] == "ESTABLISHED"
                                 and s["v1"]["initiator-spi"] != old["initiator-spi"]]
                        and len([s for s in ch.list_sas() if "v1" in s]) == 1, "charon on the new ISAKMP SA")
            assert ss.ping(a, b.inner, count=3, timeout=10).returncode == 0

        r = _cli(gw, "terminate", "--ike", "swan")
        assert r.returncode == 0, r.stdout + r.stderr
        ch.wait_for(lambda: not [s for s in ch.list_sas() if "v1" in s], "charon to act on our DELETE")
        assert "received DELETE" in ch.log() or "deleting" in ch.log(), ch.tail(40)
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH"):
        assert stats["inbound"][bad] == 0, (bad, stats["inbound"])


def test_charon_rekeys_the_esp_sas_with_a_quick_mode_of_its_own_under_traffic(lab, tmp_path):
    """charon's CHILD_SA lifetime is the shorter (rekey at 6 s): charon starts the new quick mode to the daemon,
    which answered charon's first one too, during a 20 ms ping flood; every echo comes back and both ends end up
    on the same new SPIs."""
    a, b, ch, gw = _psk_lab(lab, tmp_path, child_extra="        rekey_time = 6s\n        life_time = 30s\n"
                                                      "        rand_time = 0s\n")
    try:
        child = _establish(gw, ch, "strongswan")
        _charon_installed(ch)
        stop, runs = threading.Event(), []  # type: ignore[var-annotated]
        t = _flood_until(a, b.inner, stop, runs)  # across charon's rekey at 6 s
        new = gw.wait(lambda: [c for c in gw.children() if c["spi_in"] != child["spi_in"] and c["outbound_active"]],
                      "charon's rekeyed CHILD_SA", timeout=20)
        time.sleep(1.0)  # traffic on the new SAs too
        stop.set()
        t.join(70)
        counts = [_counts(r) for r in runs]
        sent, got = sum(c[0] for c in counts), sum(c[1] for c in counts)
        assert sent >= 250 and got == sent, (sent, got, [r.stdout for r in runs], gw.counters(), ch.tail(40))
        assert "rekeying" in ch.log() or "CHILD_SA net{2} established" in ch.log(), ch.tail(40)
        kids = _charon_sa(ch)["child-sas"].values()
        assert {(k["spi-in"], k["spi-out"]) for k in kids} >= {(new[0]["spi_out"], new[0]["spi_in"])}, kids
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH"):
        assert stats["inbound"][bad] == 0, (bad, stats["inbound"])


def test_ikev1_dpd_takes_a_vanished_charon_down(lab, tmp_path):
    """dpd_delay on both sides; charon is SIGKILLed (no DELETE): the daemon's R-U-THERE go unanswered and it
    removes the ISAKMP SA and the ESP SAs within the DPD bound (1 s delay, growing retries: well under 30 s)."""
    a, b = lab.pair()
    ch = _Charon(tmp_path / "charon", b.netns)
    lab.charons.append(ch)
    ch.connections.append(_V1Conn(b.outer, a.outer, "-modp2048", extra="    dpd_delay = 1s\n"))
    ch.start()
    conf = _conf_to_charon(a, b, extra='dpd_delay = "1s"\n')
    gw = IkeGateway(a.netns.name, tmp_path, "esp", conf)
    try:
        _establish(gw, ch, "espresso")
        assert ss.ping(a, b.inner, count=2, timeout=10).returncode == 0
        os.killpg(ch.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        gw.wait(lambda: not gw.control({"cmd": "list-sas"})["ike_sas"], "DPD to take the dead peer down", timeout=40)
        assert time.monotonic() - t0 < 40 and not gw.children()
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


@pytest.mark.parametrize(("ike", "esp", "suite"), [
    ("aes256-sha384-ecp384", "aes256gcm16-ecp256", "aes256gcm16"),
    ("aes128-sha256-modp3072", "aes256-sha512-modp4096", "aes256-sha512"),
    ("aes256-sha512-ecp521", "aes128-sha384", "aes128-sha384"),
])
def test_ikev1_algorithms_with_charon(lab, tmp_path, ike, esp, suite):
    """IKEv1 with the issue's algorithms beyond the defaults: SHA-384/512 and ECP 384/521 in phase 1, AES-GCM
    (RFC 4106) and HMAC-SHA-384/512 (RFC 4868 truncation) for ESP, MODP 3072/4096 and ECP 256 for PFS; pings
    cross, so both ends derived the same ESP keys for the same transform."""
    a, b = lab.pair()
    ch = _Charon(tmp_path / "charon", b.netns)
    lab.charons.append(ch)
    ch.connections.append(_V1Conn(b.outer, a.outer, ike=ike, esp=esp))
    ch.start()
    conf = _conf_to_charon(a, b, ike=ike, esp=esp)
    gw = IkeGateway(a.netns.name, tmp_path, "esp", conf)
    try:
        child = _establish(gw, ch, "espresso")
        assert child["suite"] == suite, child
        p = ss.ping(a, b.inner, count=3, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
