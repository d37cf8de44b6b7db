"""Gateways keyed by IKE: espresso's IKE daemon drives the gateway's data plane (TUN + ESP-in-UDP threads).

* two espresso gateways, each with its own certificate enrolled over SCEP from espresso's CA service, in four namespaces
  (inner networks behind each gateway): ping, a bulk TCP transfer with a CHILD_SA rekey in the middle (no byte
  lost, the hash matches, the new SPIs carry the traffic), then one side stopped: the other removes its SAs;
* espresso gateway vs strongSwan (charon with kernel-libipsec, UDP encapsulation forced), both directions of
  initiation: ping and a bulk transfer through the tunnel.

Each espresso gateway is the product as an operator runs it: ``python -m ike daemon --config gw.toml`` with a
``[gateway]`` section, in its namespace. The daemon starts an ``esp.gateway.Gateway`` (TUN device, NAT-T port
shared with IKE through ``ike_socket``: the kernel steers IKE to the daemon's socket and ESP to the data
threads) and installs each CHILD_SA into the gateway's data plane; the test drives it over its control socket.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.interop.test_gateway import Topology, build_topology, bulk_transfer, ping, unique
from tests.support import require, require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.interop, pytest.mark.slow]

CONF = """
[daemon]
addresses = ["{local}"]
port = 500
nat_port = 4500
control_socket = "{name}.sock"
retransmit_timeout = "1s"
retransmit_tries = 2

[ca-profiles.lab]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.me]
cert = "{name}.pem"
key = "{name}.key"

[peers.{peer}]
local_addr = "{local}"
remote_addr = "{remote}"
remote_id = "{peer_id}"
ike_proposals = ["aes128gcm16-prfsha256-ecp256"]
encap = true
dpd_delay = "1s"

[peers.{peer}.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["{esp}"]
{child_extra}

[gateway]
tun_name = "{tun}"
routes = ["{remote_ts}"]
{gateway_extra}
"""


def espresso_pki(tmp: Path, names: list[str]) -> None:
    """An espresso CA (pki.ca, its SQLite database under tmp/ca) issues each gateway's certificate from a CSR."""
    from cryptography.hazmat.primitives import serialization

    from pki.ca import CertificateAuthority
    from pki.certs import SubjectAltNames
    from pki.csr import build_csr
    from pki.keys import generate_private_key, parse_key_spec

    ca = CertificateAuthority.init(tmp / "ca", "CN=espresso gateway test CA, O=espresso")
    (tmp / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = generate_private_key(parse_key_spec("ecdsa"))
        csr = build_csr(key, f"CN={name}.espresso.test, O=espresso", SubjectAltNames(dns=(f"{name}.espresso.test",)))
        cert = ca.issue(csr, "ipsec")
        (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile = tmp / f"{name}.key"
        keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        keyfile.chmod(0o600)
    ca.close()


def scep_enrolled_pki(tmp: Path, names: list[str]) -> None:
    """Each gateway enrolls like a router: its own pki store, an RSA key pair, the CA certificate and then its
    local certificate over SCEP (challenge password) from espresso's CA service on loopback."""
    from cryptography.hazmat.primitives import serialization

    from pki.ca import CertificateAuthority
    from pki.certs import SubjectAltNames
    from pki.profile import CaProfile, RevocationMode, RevocationPolicy
    from pki.service import CaService
    from pki.store import Store

    svc = CaService(tmp / "ca", challenge="otp-gateways")
    CertificateAuthority.init(tmp / "ca", "CN=espresso gateway CA, O=espresso", key_type="rsa").close()
    svc.start()
    try:
        for name in names:
            store = Store(tmp / f"store-{name}")
            store.add_profile(CaProfile("lab", enrollment_url=f"{svc.url}/scep", retry=2, retry_interval=0,
                                        revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
            store.generate_key_pair(name, "rsa", 2048)
            [ca_cert] = store.enroll_ca_certificate("lab")
            cert = store.enroll_local_certificate(name, "lab", f"CN={name}.espresso.test,O=espresso",
                                                  SubjectAltNames.build(dns=[f"{name}.espresso.test"]),
                                                  "otp-gateways")
            (tmp / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
            (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            keyfile = tmp / f"{name}.key"
            keyfile.write_bytes(store.private_key(name).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            keyfile.chmod(0o600)
    finally:
        svc.stop()


class IkeGateway:
    """``python -m ike daemon --config X`` (with a ``[gateway]`` section: TUN + ESP threads) in a namespace;
    ``control()`` talks to it over its unix socket; ``stop()`` returns its last data-plane counters."""

    def __init__(self, ns: str, tmp: Path, name: str, conf: str) -> None:
        self.name = name
        self.tmp = tmp
        path = tmp / f"{name}.toml"
        path.write_text(conf)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "ike", "daemon", "--config",
                                      str(path)], cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.last: dict = {}
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.proc.communicate(timeout=5)[1][-3000:]}")
            try:
                if self.control({"cmd": "list-conns"}, timeout=2)["ok"]:
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{name} did not start: {self.proc.communicate(timeout=5)[1][-3000:]}")
            time.sleep(0.1)

    def control(self, req: dict, timeout: float = 20.0) -> dict:
        from ike.__main__ import request

        return request(self.tmp / f"{self.name}.sock", req, timeout=timeout)

    def children(self) -> list[dict]:
        sas = self.control({"cmd": "list-sas"})["ike_sas"]
        return [c for s in sas for c in s["child_sas"] if c["state"] == "INSTALLED"]

    def counters(self) -> dict:
        st = self.control({"cmd": "stats"})["stats"]
        self.last = {"inbound": collections.Counter(st["dataplane_in"]),
                     "outbound": collections.Counter(st["dataplane_out"]), "gateway": st.get("gateway", {})}
        return self.last

    def wait(self, pred, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: timed out waiting for {what}")

    def stop(self, kill: bool = False) -> dict:
        """Counters just before the stop (SIGTERM: the daemon sends DELETE; SIGKILL: nothing), with
        ``stderr`` (the daemon's log) and ``tracebacks`` (how many Python tracebacks it logged)."""
        if self.proc.poll() is None:
            if not kill:
                with contextlib.suppress(Exception):
                    self.counters()
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return {**self.last, "stderr": err, "tracebacks": err.count("Traceback")}


@pytest.fixture
def topo():
    require_root()
    require_tool("ip")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    t = build_topology()
    try:
        yield t
    finally:
        t.close()


def _pair(topo: Topology, tmp: Path, esp: str = "aes128gcm16", child_extra: str = "",
          scep: bool = False, gateway_extra: str = "") -> tuple[IkeGateway, IkeGateway]:
    (scep_enrolled_pki if scep else espresso_pki)(tmp, ["gwa", "gwb"])
    sides = {
        "gwa": ("gwb", "10.97.0.1", "10.97.0.2", "10.98.1.0/24", "10.98.2.0/24", topo.gw_a),
        "gwb": ("gwa", "10.97.0.2", "10.97.0.1", "10.98.2.0/24", "10.98.1.0/24", topo.gw_b),
    }
    gws = {}
    try:
        for name, (peer, local, remote, lts, rts, ns) in sides.items():
            conf = CONF.format(local=local, remote=remote, name=name, peer=peer, peer_id=f"{peer}.espresso.test",
                               local_ts=lts, remote_ts=rts, esp=esp, child_extra=child_extra,
                               tun=unique("eik"), gateway_extra=gateway_extra)
            gws[name] = IkeGateway(ns, tmp, name, conf)
    except BaseException:
        for g in gws.values():
            g.stop(kill=True)
        raise
    return gws["gwa"], gws["gwb"]


def test_two_espresso_gateways_with_certificates_rekey_mid_transfer_and_peer_stop(topo, tmp_path):
    a, b = _pair(topo, tmp_path, scep=True)  # certificates enrolled over SCEP from espresso's CA
    try:
        r = a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})
        assert r["ok"] and r["state"] == "ESTABLISHED", r
        (ca,) = a.wait(a.children, "the initiator's CHILD_SA")
        (cb,) = b.wait(b.children, "the responder's CHILD_SA")
        assert (ca["spi_in"], ca["spi_out"]) == (cb["spi_out"], cb["spi_in"]) and ca["encap"]
        p = ping(topo.host_a, "10.98.2.2", count=5)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
        assert ping(topo.host_b, "10.98.1.2", count=3).returncode == 0

        # bulk transfer, paced so that the CHILD_SA rekey lands in its middle
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=bulk_transfer(topo, 24 << 20, seed=11, rate=4e6)))
        t.start()
        time.sleep(1.0)
        old_spi = ca["spi_in"]
        assert a.control({"cmd": "rekey", "child": old_spi})["ok"]
        new = a.wait(lambda: [c for c in a.children() if c["spi_in"] != old_spi and c["outbound_active"]],
                     "the rekeyed CHILD_SA")
        a.wait(lambda: all(c["spi_in"] != old_spi for c in a.children()), "the old CHILD_SA to be deleted")
        assert t.is_alive(), "the transfer ended before the rekey: not mid-transfer"
        t.join(90)
        assert not t.is_alive()
        sent, got, _ = result["r"]
        assert sent == got and got.startswith(str(24 << 20)), (sent, got)
        (after,) = a.children()
        assert after["spi_in"] == new[0]["spi_in"] and after["packets_out"] > 1000  # the new SA carried data

        # stop B (SIGTERM: its daemon sends DELETE): A notices and removes the IKE_SA and its ESP SAs
        stats_b = b.stop()
        a.wait(lambda: not a.control({"cmd": "list-sas"})["ike_sas"], "A to remove the IKE_SA of the stopped peer")
        st = a.control({"cmd": "stats"})["stats"]
        assert ping(topo.host_a, "10.98.2.2", count=1).returncode != 0  # no SA, no tunnel
    finally:
        stats_a = a.stop()
        b.stop(kill=True)
    assert stats_b["tracebacks"] == 0 and stats_a["tracebacks"] == 0, stats_b["stderr"][-3000:]
    for s in (stats_a, stats_b):
        assert s["inbound"]["AUTH_FAILED"] == 0 and s["inbound"]["REPLAYED"] == 0, s
        assert s["inbound"]["POLICY_MISMATCH"] == 0
    # the last ping met no SA (or, the CHILD_SA's policy being gone with it, no policy): dropped, counted
    assert stats_a["outbound"]["NO_SA"] + stats_a["outbound"]["DISCARDED"] >= 1 and st is not None


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no_offload"])
def test_tcp_across_child_rekey_with_and_without_offloads(topo, tmp_path, offload):
    """The daemon's [gateway] runs the gateway's probed path: ``offload = true`` (UDP GSO/GRO, TUN TSO/USO
    where the kernel grants them) and ``offload = false`` (one packet per call) both carry a TCP transfer
    across a CHILD_SA rekey without losing a byte, and the daemon's stats say which offloads were used."""
    a, b = _pair(topo, tmp_path, gateway_extra=f"offload = {str(offload).lower()}\nbatch_size = 64")
    try:
        assert a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})["state"] == "ESTABLISHED"
        (ca,) = a.wait(a.children, "the CHILD_SA")
        b.wait(b.children, "the responder's CHILD_SA")
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=bulk_transfer(topo, 16 << 20, seed=17, rate=4e6)))
        t.start()
        time.sleep(1.0)
        assert a.control({"cmd": "rekey", "child": ca["spi_in"]})["ok"]
        a.wait(lambda: [c for c in a.children() if c["spi_in"] != ca["spi_in"] and c["outbound_active"]],
               "the rekeyed CHILD_SA")
        assert t.is_alive(), "the transfer ended before the rekey: not mid-transfer"
        t.join(90)
        assert not t.is_alive()
        sent, got, _ = result["r"]
        assert sent == got and got.startswith(str(16 << 20)), (sent, got)
        gws = [g.counters()["gateway"] for g in (a, b)]
    finally:
        stats_a = a.stop()
        stats_b = b.stop()
    for s in (stats_a, stats_b):
        assert s["tracebacks"] == 0, s["stderr"][-3000:]
        for bad in ("AUTH_FAILED", "REPLAYED", "POLICY_MISMATCH"):
            assert s["inbound"][bad] == 0, (bad, s)
    for g, s in zip(gws, (stats_a, stats_b)):
        # the daemon's start log says which offloads are on
        assert f"offloads: {', '.join(g['offloads']) or 'none'}" in s["stderr"], s["stderr"][-2000:]
        assert g["tun_mtu"] < 1500 and g["outer_mtu"] == 1500  # mtu unset: the path's MTU less ESP's overhead
        assert g["too_big"] == 0 and g["fragmented"] == 0
        if not offload:
            assert g["offloads"] == [] and g["gso_trains"] == 0 and g["gro_trains"] == 0, g
        else:
            assert g["offloads"], g  # this kernel (>= 4.18) grants UDP GSO at least
            if "udp_gso" in g["offloads"]:
                assert g["gso_trains"] > 0 and g["gso_datagrams"] > g["gso_trains"], g
            if "udp_gro" in g["offloads"]:
                assert g["gro_trains"] > 0, g


def test_byte_lifetime_in_the_data_plane_drives_rekeys_under_traffic(topo, tmp_path):
    """rekey_bytes = 2 MB: the data plane's soft-expiry event (SaExpired) reaches the daemon, which rekeys the
    CHILD_SA while 12 MB flow; every rekey is make-before-break, so the transfer's hash still matches."""
    a, b = _pair(topo, tmp_path, child_extra='rekey_bytes = "2M"\nlife_bytes = "64M"')
    try:
        assert a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})["state"] == "ESTABLISHED"
        a.wait(a.children, "the CHILD_SA")
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=bulk_transfer(topo, 12 << 20, seed=13, rate=4e6)))
        t.start()
        spis: set[str] = set()
        deadline = time.monotonic() + 60
        while t.is_alive() and time.monotonic() < deadline:
            spis.update(c["spi_in"] for c in a.children())
            time.sleep(0.1)
        t.join(30)
        sent, got, _ = result["r"]
        assert sent == got and got.startswith(str(12 << 20)), (sent, got)
        assert len(spis) >= 3, spis  # 12 MB at 2 MB per SA: several generations of SAs carried the data
    finally:
        stats_a = a.stop()
        stats_b = b.stop()
    for s in (stats_a, stats_b):
        assert s["tracebacks"] == 0, s["stderr"][-3000:]
        for bad in ("AUTH_FAILED", "REPLAYED", "EXPIRED", "POLICY_MISMATCH"):
            assert s["inbound"][bad] == 0 and s["outbound"][bad] == 0, (bad, s)
        # Both sides hit the soft limit at once, so most rekeys here are RFC 7296 2.8.1 collisions; the daemon
        # may leave a policy without an outbound SA for an instant (a few NO_SA drops, TCP resends them).
        assert s["outbound"]["NO_SA"] <= 32, s["outbound"]


def test_dead_peer_is_detected_and_its_sas_removed(topo, tmp_path):
    """SIGKILL one side (no DELETE): DPD (dpd_delay 1 s, two 1 s retransmits) finds it dead; SAs go."""
    a, b = _pair(topo, tmp_path)
    try:
        assert a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})["state"] == "ESTABLISHED"
        assert ping(topo.host_a, "10.98.2.2", count=2).returncode == 0
        b.stop(kill=True)
        a.wait(lambda: not a.control({"cmd": "list-sas"})["ike_sas"], "DPD to declare the peer dead", timeout=30)
    finally:
        stats_a = a.stop()
        b.stop(kill=True)
    assert stats_a["tracebacks"] == 0, stats_a["stderr"][-3000:]


# ------------------------------------------------------------------------------------------------------------
# espresso gateway <-> strongSwan (charon, kernel-libipsec), both directions of initiation


@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_espresso_gateway_with_strongswan(tmp_path, initiator):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from tests.interop import strongswan as ss
    from tests.interop.test_gateway import bulk_between

    ok, why = ss.charon_available()
    require(ok, why)
    espresso_pki(tmp_path, ["esp", "swan"])
    with ss.Lab(tmp_path / "lab") as lab:
        a, b = lab.pair()  # a: espresso, b: strongSwan; inner addresses on lo (10.98.1.1 / 10.98.2.1)
        ch = lab.charon(b, "swan")
        ch.add_ca(ss.Credential("ca", None, x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes()), ""))
        cred = ss.Credential("swan", load_pem_private_key((tmp_path / "swan.key").read_bytes(), None),
                             x509.load_pem_x509_certificate((tmp_path / "swan.pem").read_bytes()),
                             "swan.espresso.test")
        cert = ch.add_credential(cred)
        ch.connections.append(ss.Connection(
            "esp", b.outer, a.outer, "swan.espresso.test", "esp.espresso.test", cert,
            [ss.Child("net", f"{b.inner}/32", f"{a.inner}/32", esp_proposals="aes128gcm16")]))
        ch.start()
        conf = CONF.format(local=a.outer, remote=b.outer, name="esp", peer="swan", peer_id="swan.espresso.test",
                           local_ts=f"{a.inner}/32", remote_ts=f"{b.inner}/32", esp="aes128gcm16",
                           child_extra="", tun=unique("eik"), gateway_extra="")
        gw = IkeGateway(a.netns.name, tmp_path, "esp", conf)
        try:
            if initiator == "espresso":
                r = gw.control({"cmd": "initiate", "ike": "swan", "timeout": 10})
                assert r["ok"] and r["state"] == "ESTABLISHED", (r, ch.tail())
            else:
                r = ch.initiate("net", ike="esp")
                assert r.returncode == 0, r.stdout + r.stderr + ch.tail()
            (child,) = gw.wait(gw.children, "the CHILD_SA on the espresso side")
            assert child["encap"], child  # kernel-libipsec forces ESP in UDP
            p = a.netns.run(["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", "-w", "10", "-I", a.inner, b.inner],
                            check=False, timeout=20)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail()
            sent, got, _ = bulk_between(a.netns.name, b.netns.name, b.inner, 8 << 20, src=a.inner, seed=5)
            assert sent == got and got.startswith(str(8 << 20)), (sent, got)
            sent, got, _ = bulk_between(b.netns.name, a.netns.name, a.inner, 4 << 20, src=b.inner, seed=6)
            assert sent == got and got.startswith(str(4 << 20)), (sent, got)
            swan = ch.list_sas()
            assert "ESTABLISHED" in json.dumps(swan), swan
        finally:
            stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
    assert stats["inbound"]["OK"] > (4 << 20) // 1400 and stats["outbound"]["OK"] > (8 << 20) // 1400
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH"):
        assert stats["inbound"][bad] == 0, (bad, stats["inbound"])
