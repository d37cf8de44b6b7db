"""espresso's IKE daemon against strongSwan 5.9 (charon + kernel-libipsec) in network namespaces.

espresso runs in this process with its UDP sockets created inside one namespace; charon runs in the other,
joined by a veth pair. The evidence, for each case:

- the IKE_SA and CHILD_SA come up (espresso as initiator and as responder; ECDSA and RSA certificates;
  AES-GCM and AES-CBC/HMAC-SHA-256);
- the CHILD_SA keys charon derived (its log at level 4) equal those espresso installed into its esp SAs, and
  the SPIs pair up;
- ping from charon's side to espresso's inner address is answered through the tunnel: charon's libipsec
  encrypts, espresso's data plane decrypts, a tiny responder here answers, espresso encrypts, libipsec decrypts;
- CHILD_SA and IKE_SA rekeys (from either side) keep it working, with keys that again match;
- a delete from either side removes the SAs on both.
"""
from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.interop import strongswan as ss
from tests.support import NotifySocket, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

TIMEOUT = 15.0
E_INNER, S_INNER = "10.98.1.1", "10.98.2.1"

CONF = """
[daemon]
port = 500
nat_port = 4500
control_socket = "ike.sock"
key_log = "keys"

[ca-profiles.lab]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.me]
cert = "e.pem"
key = "e.key"

[peers.s]
local_addr = "{local}"
remote_addr = "{remote}"
remote_id = "s.test"
ike_proposals = ["{ike}"]

[peers.s.children.net]
local_ts = ["{e_inner}/32"]
remote_ts = ["{s_inner}/32"]
esp_proposals = ["{esp}"]
"""


@pytest.fixture
def lab(tmp_path: Path):
    pytest.importorskip("esp._core", reason="esp._core is not built")
    yield from ss.charon_lab(tmp_path)


# -- a minimal host behind espresso: answers ICMP echo requests ----------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def echo_reply(pkt: bytes) -> bytes | None:
    if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 1:
        return None
    hl = (pkt[0] & 0x0F) * 4
    icmp = pkt[hl:]
    if icmp[0] != 8:
        return None
    icmp = b"\x00\x00\x00\x00" + icmp[4:]
    icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
    hdr = bytearray(pkt[:hl])
    hdr[12:16], hdr[16:20] = pkt[16:20], pkt[12:16]
    hdr[8] = 64
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", _csum(bytes(hdr)))
    return bytes(hdr) + icmp


class EchoDaemon:
    """The espresso daemon of ``cfg`` in namespace ``site`` (sockets on ``ports``, 500/4500, there), answering
    pings that reach it through its CHILD_SAs."""

    def __init__(self, cfg: Any, site: ss.Site, ports: tuple[int, int] = (500, 4500)) -> None:
        from ike.daemon import Daemon

        self.site = site
        self.inner: list[bytes] = []
        self.daemon = Daemon(cfg, on_packets=self._packets)
        self.sockets = ss.netns_sockets(site.netns, [(site.outer, port) for port in ports])

    def _packets(self, packets: list[bytes], child: Any) -> None:
        self.inner.extend(packets)
        replies = [r for r in (echo_reply(p) for p in packets) if r is not None]
        if replies:
            self.daemon.send(replies)

    async def start(self) -> None:
        await self.daemon.start(sockets=self.sockets, control=False)

    async def establish(self, ch: ss.Charon, role: str = "initiator") -> None:
        """Bring up connection "s" with charon's "gw", espresso initiating (``role`` "initiator") or charon
        ("responder"), and wait until both sides have the CHILD_SA installed."""
        if role == "initiator":
            r = await self.daemon.initiate_and_wait("s", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED", r
        else:
            proc = await asyncio.to_thread(ch.initiate, "net", ike="gw", timeout=10)
            assert proc.returncode == 0, proc.stdout + proc.stderr + ch.tail()
        await _wait(lambda: self.installed() and _charon_child(ch), "both CHILD_SAs", ch)

    def installed(self) -> list[Any]:
        return [c for c in self.daemon.children.values() if c.state == "INSTALLED"]

    def events(self, kind: type) -> list[Any]:
        return [e for e in self.daemon.events if isinstance(e, kind)]


class Espresso(EchoDaemon):
    """An :class:`EchoDaemon` with a certificate for e.test from the lab's PKI and the config ``conf``
    (CONF: a peer "s" towards charon, certificates from ``workdir``)."""

    def __init__(self, lab: ss.Lab, site: ss.Site, peer: ss.Site, pki: ss.LabPki, ike: str, esp: str,
                 workdir: Path, conf: str = CONF, ports: tuple[int, int] = (500, 4500)) -> None:
        from ike.config import parse_config

        workdir.mkdir(parents=True, exist_ok=True)
        cred = pki.issue("e", "e.test")
        (workdir / "ca.pem").write_bytes(pki.ca.cert_pem())
        (workdir / "e.pem").write_bytes(cred.cert_pem())
        cred.write_key(workdir / "e.key")
        cfg = parse_config(conf.format(local=site.outer, remote=peer.outer, ike=ike, esp=esp, e_inner=E_INNER,
                                       s_inner=S_INNER), base=workdir)
        self.workdir = workdir
        super().__init__(cfg, site, ports)


def _charon(lab: ss.Lab, site: ss.Site, peer: ss.Site, pki: ss.LabPki, ike: str, esp: str, kind: str) -> ss.Charon:
    ch = lab.charon(site, "charon", log_levels={"chd": 4, "ike": 4})
    ch.add_ca(pki.ca)
    cert = ch.add_credential(pki.issue("s", "s.test", kind))
    ch.connections.append(ss.Connection(
        "gw", site.outer, peer.outer, "s.test", "e.test", cert,
        [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike))
    ch.start()
    return ch


async def _wait(pred, what: str, ch: ss.Charon, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n--- charon log tail ---\n{ch.tail(60)}")
        await asyncio.sleep(0.05)


async def _ping(site: ss.Site) -> str:
    proc = await asyncio.to_thread(ss.ping, site, E_INNER, count=3)
    return proc.stdout


def _charon_child(ch: ss.Charon) -> dict | None:
    sas = ss.ike_sas(ch.list_sas())
    if "gw" not in sas or sas["gw"].get("state") != "ESTABLISHED":
        return None
    kids = [c for c in ss.child_sas(sas["gw"]) if c.get("state") == "INSTALLED"]
    return kids[0] if len(kids) == 1 else None


def _check_keys(ch: ss.Charon, e: Espresso, we_initiated_child: bool) -> None:
    """The last CHILD_SA charon logged has espresso's SPIs (crossed) and the same KEYMAT."""
    (mine,) = e.installed()
    logged = [k for k in ss.child_keys(ch.log()) if k.spi_in == mine.spi_out]
    assert logged, f"charon logged no CHILD_SA with SPI {mine.spi_out:08x}"
    k = logged[-1]
    assert (k.spi_in, k.spi_out) == (mine.spi_out, mine.spi_in)
    # encr_i protects initiator -> responder traffic of the exchange that created the CHILD_SA
    ev = mine.event
    if we_initiated_child:
        assert (ev.enc_key_out, ev.enc_key_in) == (k.encr_i, k.encr_r)
        assert (ev.integ_key_out, ev.integ_key_in) == (k.integ_i, k.integ_r)
    else:
        assert (ev.enc_key_out, ev.enc_key_in) == (k.encr_r, k.encr_i)
        assert (ev.integ_key_out, ev.integ_key_in) == (k.integ_r, k.integ_i)


def _holds(check, *args: Any) -> bool:
    try:
        check(*args)
        return True
    except AssertionError:
        return False


async def _eventually(ch: ss.Charon, check, *args: Any) -> None:
    """charon writes its log a moment after the state we polled for: let a check settle (bounded), then run
    it once more so a real mismatch fails with its own message."""
    deadline = time.monotonic() + 5
    while not _holds(check, *args) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    check(*args)


def _check_ike_keys(ch: ss.Charon, e: Espresso) -> None:
    """Every IKE_SA key set espresso derived (IkeKeysDerived) appears in charon's log (SK_e*, SK_a*)."""
    from ike.events import IkeKeysDerived
    logged = ss.ike_keys(ch.log())
    assert logged
    for ev in e.events(IkeKeysDerived):
        match = [k for k in logged if k.get("Sk_ei") == ev.sk_ei and k.get("Sk_er") == ev.sk_er]
        assert match, (f"charon never derived the IKE keys espresso has for {ev.spi_i:016x}: espresso "
                       f"SK_ei={ev.sk_ei.hex()} SK_er={ev.sk_er.hex()}; charon: "
                       + "; ".join(" ".join(f"{n}={v.hex()}" for n, v in k.items()) for k in logged)
                       + f" espresso ai={ev.sk_ai.hex()} ar={ev.sk_ar.hex()}")
        if ev.sk_ai:
            assert match[0].get("Sk_ai") == ev.sk_ai and match[0].get("Sk_ar") == ev.sk_ar


def _days(n: float):  # noqa: ANN202 - a timedelta for the refusal table
    import datetime
    return datetime.timedelta(days=n)


CASES = [
    pytest.param("initiator", "ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", id="espresso-initiator-ecdsa-gcm"),
    pytest.param("responder", "rsa", "aes256-sha256-modp2048", "aes256-sha256", id="espresso-responder-rsa-cbc"),
    pytest.param("initiator", "rsa", "aes256-sha256-modp2048", "aes256-sha256", id="espresso-initiator-rsa-cbc"),
    pytest.param("responder", "ecdsa", "aes256gcm16-prfsha384-ecp384", "aes256gcm16",
                 id="espresso-responder-ecdsa-gcm256"),
]


@pytest.mark.parametrize("role,kind,ike,esp", CASES)
def test_tunnel_with_strongswan(lab: ss.Lab, tmp_path: Path, role: str, kind: str, ike: str, esp: str) -> None:
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        site_e.netns.run(["ip", "addr", "del", f"{E_INNER}/32", "dev", "lo"])  # espresso's inner host is virtual
        pki = ss.LabPki(kind)
        ch = _charon(lab, site_s, site_e, pki, ike, esp, kind)
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso")
        await e.start()
        try:
            await e.establish(ch, role)
            child = _charon_child(ch)
            assert child is not None and child["encap"] == "yes"
            await _eventually(ch, _check_keys, ch, e, role == "initiator")
            await _eventually(ch, _check_ike_keys, ch, e)

            out = await _ping(site_s)
            assert " 0% packet loss" in out, out + ch.tail()
            (mine,) = e.installed()
            assert mine.sa_in.counters.packets >= 3 and mine.sa_out.counters.packets >= 3
            child = _charon_child(ch)
            assert int(child["packets-in"]) >= 3 and int(child["packets-out"]) >= 3

            # The key log is there for Wireshark, one line per direction.
            esp_sa = (e.workdir / "keys" / "esp_sa").read_text()
            assert f"0x{mine.spi_out:08x}" in esp_sa and f"0x{mine.spi_in:08x}" in esp_sa

            # CHILD_SA rekey: espresso starts one, then charon does.
            old = mine.spi_in
            e.daemon.rekey_child(old)
            await _wait(lambda: old not in e.daemon.children and len(e.installed()) == 1 and _charon_child(ch),
                        "espresso's CHILD_SA rekey", ch)
            await _eventually(ch, _check_keys, ch, e, True)
            assert " 0% packet loss" in await _ping(site_s)

            old = e.installed()[0].spi_in
            proc = await asyncio.to_thread(ch.swanctl, "--rekey", "--child", "net", check=False)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            await _wait(lambda: old not in e.daemon.children and len(e.installed()) == 1 and _charon_child(ch),
                        "charon's CHILD_SA rekey", ch)
            await _eventually(ch, _check_keys, ch, e, False)
            assert " 0% packet loss" in await _ping(site_s)

            # IKE_SA rekey from both sides; the CHILD_SA survives and the new IKE keys match.
            (sa,) = e.daemon.list_sas()
            spi = sa["spi_i"]
            e.daemon.rekey_ike(sa["ike_id"])
            await _wait(lambda: e.daemon.list_sas() and e.daemon.list_sas()[0]["spi_i"] != spi
                        and ss.ike_sas(ch.list_sas()).get("gw", {}).get("initiator-spi") == e.daemon.list_sas()[0]["spi_i"],
                        "espresso's IKE_SA rekey", ch)
            spi = e.daemon.list_sas()[0]["spi_i"]
            proc = await asyncio.to_thread(ch.swanctl, "--rekey", "--ike", "gw", check=False)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            await _wait(lambda: e.daemon.list_sas() and e.daemon.list_sas()[0]["spi_i"] != spi
                        and ss.ike_sas(ch.list_sas()).get("gw", {}).get("initiator-spi") == e.daemon.list_sas()[0]["spi_i"],
                        "charon's IKE rekey", ch)
            await _eventually(ch, _check_ike_keys, ch, e)
            assert " 0% packet loss" in await _ping(site_s)

            # Delete from one side (espresso for one case, charon for the other); both end up empty.
            if role == "initiator":
                (sa,) = e.daemon.list_sas()
                e.daemon.terminate(sa["ike_id"])
            else:
                proc = await asyncio.to_thread(ch.swanctl, "--terminate", "--ike", "gw", "--timeout", "5", check=False)
                assert proc.returncode == 0, proc.stdout + proc.stderr
            await _wait(lambda: not e.daemon.list_sas() and "gw" not in ss.ike_sas(ch.list_sas()), "the delete", ch)
            assert not e.daemon.children and len(e.daemon.dataplane.sad) == 0
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


def test_untrusted_certificate_refused(lab: ss.Lab, tmp_path: Path) -> None:
    """charon presents a certificate from a CA espresso does not trust: AUTHENTICATION_FAILED goes back,
    nothing is installed, and the daemon then accepts the same peer with a good certificate."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        rogue = ss.LabPki("ecdsa", name="rogue CA")
        ike, esp = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2})
        ch.add_ca(pki.ca)
        ch.add_ca(rogue.ca)
        good = ch.add_credential(pki.issue("s", "s.test"))
        bad = ch.add_credential(rogue.issue("rogue", "s.test"))
        for name, cert in (("gw", good), ("bad", bad)):
            ch.connections.append(ss.Connection(
                name, site_s.outer, site_e.outer, "s.test", "e.test", cert,
                [ss.Child(f"net-{name}", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso")
        await e.start()
        try:
            from ike.events import AuthenticationFailed
            proc = await asyncio.to_thread(ch.initiate, "net-bad", ike="bad", timeout=10)
            assert proc.returncode != 0
            assert "received AUTHENTICATION_FAILED notify error" in ch.log(), ch.tail()
            (failed,) = e.events(AuthenticationFailed)
            assert failed.local_side and "untrusted" in failed.reason.lower(), failed
            assert not e.daemon.children and len(e.daemon.dataplane.sad) == 0

            proc = await asyncio.to_thread(ch.initiate, "net-gw", ike="gw", timeout=10)
            assert proc.returncode == 0, proc.stdout + ch.tail()
            await _wait(lambda: e.installed(), "the CHILD_SA with the good certificate", ch)
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


GATEWAY_CONF = """
[daemon]
addresses = ["{local}"]
control_socket = "{sock}"

[gateway]
tun_name = "{tun}"
tun_addresses = ["{e_inner}/32"]

[ca-profiles.lab]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.me]
cert = "e.pem"
key = "e.key"

[peers.s]
local_addr = "{local}"
remote_addr = "{remote}"
remote_id = "s.test"

[peers.s.children.net]
local_ts = ["{e_inner}/32"]
remote_ts = ["{s_inner}/32"]
esp_proposals = ["aes128gcm16"]
"""


def test_daemon_command_with_tun_gateway(lab: ss.Lab, tmp_path: Path) -> None:
    """The product path: `python -m ike daemon` with a [gateway] (TUN device + esp threads) in a namespace,
    controlled with the CLI; a kernel ping from espresso's side crosses the tunnel to charon's side."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
    site_e.netns.run(["ip", "addr", "del", f"{E_INNER}/32", "dev", "lo"])  # the TUN device carries it
    pki = ss.LabPki("ecdsa")
    ch = _charon(lab, site_s, site_e, pki, "aes128gcm16-prfsha256-ecp256", "aes128gcm16", "ecdsa")
    work = tmp_path / "espresso"
    work.mkdir()
    cred = pki.issue("e", "e.test")
    (work / "ca.pem").write_bytes(pki.ca.cert_pem())
    (work / "e.pem").write_bytes(cred.cert_pem())
    cred.write_key(work / "e.key")
    sock = work / "ike.sock"
    conf = work / "ike.toml"
    conf.write_text(GATEWAY_CONF.format(local=site_e.outer, remote=site_s.outer, sock=sock, tun=ss.unique("esp"),
                                        e_inner=E_INNER, s_inner=S_INNER))
    notify = NotifySocket()  # systemd's protocol: READY=1 once configured and bound, no polling
    proc = subprocess.Popen(["ip", "netns", "exec", site_e.netns.name, sys.executable, "-m", "ike", "daemon",
                             "--config", str(conf)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=notify.env())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ike", *args, "--socket", str(sock)], cwd=root,
                              capture_output=True, text=True, timeout=30)

    try:
        notify.wait_ready(proc, TIMEOUT)
        r = cli("initiate", "--ike", "s", "--timeout", "10")
        if r.returncode != 0:
            proc.kill()
            raise AssertionError(r.stderr + "\n--- espresso ---\n" + proc.communicate()[0] + ch.tail())
        pinged = ss.ping(site_e, S_INNER, count=3)
        assert " 0% packet loss" in pinged.stdout, pinged.stdout + ch.tail()
        listing = cli("list-sas").stdout
        assert "net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" in listing, listing
        child = _charon_child(ch)
        assert child is not None and int(child["packets-in"]) >= 3 and int(child["packets-out"]) >= 3
        proc.send_signal(__import__("signal").SIGTERM)  # charon-like: DELETE sent, then exit
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, out
        for _ in range(100):
            if "gw" not in ss.ike_sas(ch.list_sas()):
                break
            time.sleep(0.05)
        assert "gw" not in ss.ike_sas(ch.list_sas()), ch.tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        notify.close()


STORE_CONF = """
[daemon]
port = 500
nat_port = 4500
control_socket = "ike.sock"

[pki]
store = "store"
fetch_revocation = false

[certificates.me]
cert = "e.pem"
key = "e.key"

[peers.s]
local_addr = "{local}"
remote_addr = "{remote}"
remote_id = "s.test"
ca_profiles = ["lab"]
ike_proposals = ["{ike}"]

[peers.s.children.net]
local_ts = ["{e_inner}/32"]
remote_ts = ["{s_inner}/32"]
esp_proposals = ["{esp}"]
"""


def test_revoked_certificate_refused(lab: ss.Lab, tmp_path: Path) -> None:
    """The peer's certificate is on the CRL of espresso's ca-profile (a `python -m pki` store): refused with
    AUTHENTICATION_FAILED and nothing installed; a certificate of the same CA that is not revoked works."""
    from cryptography.hazmat.primitives import serialization

    from pki.profile import CaProfile, RevocationPolicy
    from pki.store import Store

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        ike, esp = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
        revoked, good = pki.issue("revoked", "s.test"), pki.issue("good", "s.test")
        store = Store(tmp_path / "espresso" / "store")
        store.add_profile(CaProfile("lab", revocation=RevocationPolicy(mode="crl")))
        store.load_ca_certificate("lab", pki.ca.cert_pem())
        store.load_crl("lab", pki.crl([revoked.cert]).public_bytes(serialization.Encoding.DER))
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2})
        ch.add_ca(pki.ca)
        for name, cred in (("bad", revoked), ("gw", good)):
            ch.connections.append(ss.Connection(
                name, site_s.outer, site_e.outer, "s.test", "e.test", ch.add_credential(cred),
                [ss.Child(f"net-{name}", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso", conf=STORE_CONF)
        await e.start()
        try:
            from ike.events import AuthenticationFailed
            proc = await asyncio.to_thread(ch.initiate, "net-bad", ike="bad", timeout=10)
            assert proc.returncode != 0
            assert "received AUTHENTICATION_FAILED notify error" in ch.log(), ch.tail()
            (failed,) = e.events(AuthenticationFailed)
            assert failed.local_side and "revoked" in failed.reason.lower(), failed
            assert not e.daemon.children and len(e.daemon.dataplane.sad) == 0

            proc = await asyncio.to_thread(ch.initiate, "net-gw", ike="gw", timeout=10)
            assert proc.returncode == 0, proc.stdout + ch.tail()
            await _wait(lambda: e.installed(), "the CHILD_SA with the certificate that is not revoked", ch)
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


async def _start_capture(site: ss.Site, pcap: Path):  # type: ignore[no-untyped-def]
    """tcpdump on ``site``'s link, writing UDP to ``pcap``; returns once it captures."""
    import subprocess

    tcpdump = require_tool("tcpdump")
    cap = subprocess.Popen(["ip", "netns", "exec", site.netns.name, tcpdump, "-i", site.ifname, "-U", "-n",
                            "--immediate-mode", "-w", str(pcap), "udp"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    for _ in range(100):  # tcpdump writes the file header once it captures
        if pcap.exists() and pcap.stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    return cap


async def _stop_capture(cap) -> str:  # type: ignore[no-untyped-def]
    import signal

    await asyncio.sleep(0.3)  # let tcpdump write what it has read
    cap.send_signal(signal.SIGINT)
    cap.wait(timeout=10)
    return cap.stderr.read().decode()


def test_key_log_decrypts_a_real_capture(lab: ss.Lab, tmp_path: Path) -> None:
    """tcpdump on espresso's link while it talks to charon; tshark, given only espresso's key log, shows the
    IKE_AUTH payloads and the ICMP inside the ESP."""
    import subprocess

    tshark = require_tool("tshark")

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        ike, esp = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
        ch = _charon(lab, site_s, site_e, pki, ike, esp, "ecdsa")
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso")
        pcap = tmp_path / "link.pcap"
        cap = await _start_capture(site_e, pcap)
        try:
            await e.start()
            await e.establish(ch)
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)
            capture_log = await _stop_capture(cap)
        profile = tmp_path / "wireshark"
        profile.mkdir()
        for name in ("esp_sa", "ikev2_decryption_table"):
            (profile / name).write_bytes((e.workdir / "keys" / name).read_bytes())
        env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
        shown = subprocess.run([tshark, "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE", "-V"],
                               capture_output=True, text=True, timeout=60, env=env)
        assert shown.returncode == 0 and shown.stdout, shown.stderr + capture_log
        out = shown.stdout
        assert "Identification - Initiator" in out and "ID_FQDN: e.test" in out and "ID_FQDN: s.test" in out
        assert out.count("Internet Control Message Protocol") >= 6  # 3 requests + 3 replies, decrypted
        assert "Echo (ping) reply" in out
        _ike_pcap_matches_tshark(pcap, e.workdir / "keys", tshark, env, tmp_path, ch.log())

    asyncio.run(main())


def _ike_pcap(*args: str):  # type: ignore[no-untyped-def]
    """``python -m ike pcap ARGS`` as a user runs it; asserts it succeeded."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ike", "pcap", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert proc.returncode == 0, proc.stderr
    return proc


def _ike_pcap_matches_tshark(pcap: Path, keys: Path, tshark: str, env: dict, tmp_path: Path, charon_log: str
                             ) -> None:
    """``python -m ike pcap show`` and tshark, given the same key log, see the same exchanges: exchange type,
    message id and payload list of every IKE message; each ``parsed`` line is the one charon itself logged when it
    parsed or generated that message; ``pcap decrypt`` writes IKE and ESP in clear."""
    import re
    import subprocess

    from ike.constants import ExchangeType, PayloadType
    from ike.listing import CHARON_PAYLOADS

    shown = _ike_pcap("show", str(pcap), "--keys", str(keys))
    ours = []
    for m in re.finditer(r"parsed (\w+) (request|response) (\d+) \[ (.*?) \]", shown.stdout):
        names = ["N" if n.startswith("N(") else n for n in m.group(4).split()]
        ours.append((m.group(1), int(m.group(3)), names))
    fields = subprocess.run([tshark, "-n", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=|",
                             "-e", "isakmp.exchangetype", "-e", "isakmp.messageid", "-e", "isakmp.typepayload"],
                            capture_output=True, text=True, timeout=60, env=env)
    theirs = []
    for line in fields.stdout.splitlines():
        ex, mid, types = line.split("|")
        names = [CHARON_PAYLOADS[int(x)] for x in types.split(",")
                 if int(x) >= PayloadType.SA and int(x) not in (PayloadType.SK, PayloadType.SKF)]
        theirs.append((ExchangeType(int(ex)).name, int(mid, 0), names))
    assert len(ours) >= 4 and ours == theirs, (shown.stdout, fields.stdout)
    charon_says = re.findall(r"(?:parsed|generating) (\w+ (?:request|response) \d+ \[ .*? \])", charon_log)
    assert re.findall(r"parsed (\w+ (?:request|response) \d+ \[ .*? \])", shown.stdout) == charon_says
    assert "IDi 'e.test'" in shown.stdout and "IDr 's.test'" in shown.stdout
    assert "certificate \"" in shown.stdout and "selected proposal: IKE:AES_GCM_16" in shown.stdout
    clear = tmp_path / "clear.pcap"
    dec = _ike_pcap("decrypt", str(pcap), str(clear), "--keys", str(keys))
    nokeys = dict(env, HOME=str(tmp_path / "nohome"), XDG_CONFIG_HOME=str(tmp_path / "nohome"))
    text = subprocess.run([tshark, "-n", "-r", str(clear), "-V"], capture_output=True, text=True, timeout=60,
                          env=nokeys).stdout
    assert "ID_FQDN: e.test" in text and "Encrypted and Authenticated" not in text
    assert text.count("Echo (ping) reply") >= 3, dec.stderr


REFUSALS = [
    # (case, what charon uses for the bad attempt, the notify charon must receive, espresso's event reason)
    ("expired", dict(valid_from=-_days(3), valid_for=_days(1)), "AUTHENTICATION_FAILED", "expired"),
    ("not-yet-valid", dict(valid_from=_days(2), valid_for=_days(1)), "AUTHENTICATION_FAILED", "not"),
    ("unexpected-identity", dict(fqdn="t.test"), "AUTHENTICATION_FAILED", None),  # espresso wants s.test
    ("ike-proposal", dict(proposals="aes128-sha1-modp1024"), "NO_PROPOSAL_CHOSEN", None),
    ("esp-proposal", dict(esp="aes128ctr-sha1"), "NO_PROPOSAL_CHOSEN", None),
]


@pytest.mark.parametrize("case,bad,notify,reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(lab: ss.Lab, tmp_path: Path, case: str, bad: dict, notify: str, reason: str | None) -> None:
    """charon initiates with one thing wrong: it receives the right error notify, espresso installs nothing
    and stays up, and the same charon then gets a tunnel with a good connection."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        ike, esp = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        fqdn = bad.get("fqdn", "s.test")
        bad_cred = pki.issue("bad", fqdn, valid_from=bad.get("valid_from"), valid_for=bad.get("valid_for"))
        good_cert = ch.add_credential(pki.issue("good", "s.test"))
        bad_cert = ch.add_credential(bad_cred)
        ch.connections.append(ss.Connection(
            "bad", site_s.outer, site_e.outer, fqdn, "e.test", bad_cert,
            [ss.Child("net-bad", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=bad.get("esp", esp))],
            proposals=bad.get("proposals", ike)))
        ch.connections.append(ss.Connection(
            "gw", site_s.outer, site_e.outer, "s.test", "e.test", good_cert,
            [ss.Child("net-gw", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso")
        await e.start()
        try:
            from ike.events import AuthenticationFailed
            proc = await asyncio.to_thread(ch.initiate, "net-bad", ike="bad", timeout=10)
            assert proc.returncode != 0, proc.stdout
            await _wait(lambda: f"received {notify} notify" in ch.log(), f"charon to receive {notify}", ch)
            assert not e.installed() and len(e.daemon.dataplane.sad) == 0
            if reason is not None:
                (failed,) = e.events(AuthenticationFailed)
                assert failed.local_side and reason in failed.reason.lower(), failed
            proc = await asyncio.to_thread(ch.initiate, "net-gw", ike="gw", timeout=10)
            assert proc.returncode == 0, proc.stdout + ch.tail()
            await _wait(lambda: e.installed(), "the CHILD_SA of the good connection", ch)
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


def _fragmenting_charon(lab: ss.Lab, site_s: ss.Site, site_e: ss.Site, pki: ss.LabPki, ike: str, esp: str,
                        **kw: Any) -> ss.Charon:
    """charon as s.test with `fragmentation = yes`, started; ``kw`` goes to :meth:`ss.Lab.charon`."""
    ch = lab.charon(site_s, "charon", **kw)
    ch.add_ca(pki.ca)
    cert = ch.add_credential(pki.issue("s", "s.test"))
    ch.connections.append(ss.Connection(
        "gw", site_s.outer, site_e.outer, "s.test", "e.test", cert,
        [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike,
        extra="fragmentation = yes"))
    ch.start()
    return ch


def test_fragmented_ike_auth_both_ways(lab: ss.Lab, tmp_path: Path) -> None:
    """RSA-4096 certificates and a small fragment size on espresso: espresso's IKE_AUTH goes in RFC 7383
    fragments that charon reassembles, charon's (over its 1280-byte limit) in fragments espresso reassembles."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("rsa4096")
        ike, esp = "aes256-sha256-modp2048", "aes256-sha256"
        ch = _fragmenting_charon(lab, site_s, site_e, pki, ike, esp,
                                 log_levels={"ike": 2, "enc": 2, "net": 2, "chd": 4})
        conf = CONF.replace('ike_proposals = ["{ike}"]', 'ike_proposals = ["{ike}"]\nfragment_size = 576')
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso", conf=conf)
        pcap = tmp_path / "link.pcap"
        cap = await _start_capture(site_e, pcap)
        await e.start()
        try:
            await e.establish(ch)
            log = ch.log()
            assert "reassembled fragmented IKE message" in log, ch.tail()  # charon reassembled ours
            assert "splitting IKE message" in log, ch.tail()  # and fragmented its own, which we reassembled
            await _eventually(ch, _check_keys, ch, e, True)
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)
            await _stop_capture(cap)
        # python -m ike pcap show reads the fragmented session as charon logged it: every fragment (EF(n/m)) and
        # every reassembled message, each once (charon logs a message it generates before its fragments)
        import collections
        import re

        shown = _ike_pcap("show", str(pcap), "--keys", str(e.workdir / "keys"))
        line = r"(\w+ (?:request|response) \d+ \[ .*? \])"
        ours = collections.Counter(re.findall("parsed " + line, shown.stdout))
        charon_says = collections.Counter(re.findall("(?:parsed|generating) " + line, ch.log()))
        assert ours == charon_says and any("EF(" in k for k in ours), (shown.stdout, ch.log())

    asyncio.run(main())


def test_fragmentation_accept_against_a_small_charon_fragment_size(lab: ss.Lab, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """charon with ``fragment_size = 576`` (its IP datagram limit) and espresso with ``fragmentation = "accept"``:
    espresso announces RFC 7383, so charon splits its IKE_AUTH into datagrams of at most 576 bytes, which espresso
    reassembles (and says so at debug level, -vv); espresso's own IKE_AUTH goes whole, as strongSwan's "accept"
    means, and charon (which accepts fragments or not) takes it."""
    import logging

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("rsa4096")
        ike, esp = "aes256-sha256-modp2048", "aes256-sha256"
        ch = _fragmenting_charon(lab, site_s, site_e, pki, ike, esp, log_levels={"ike": 2, "enc": 2, "net": 2},
                                 settings="fragment_size = 576")
        conf = CONF.replace('ike_proposals = ["{ike}"]',
                            'ike_proposals = ["{ike}"]\nfragmentation = "accept"\nfragment_size = 576')
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "espresso", conf=conf)
        await e.start()
        try:
            await e.establish(ch)
            log = ch.log()
            assert "splitting IKE message" in log, ch.tail()  # charon fragmented towards us
            assert "reassembled fragmented IKE message" not in log, ch.tail()  # we sent ours whole
            assert "reassembled IKE_AUTH response 1 from" in caplog.text
            assert "sending IKE_AUTH request 1 [" in caplog.text and "fragmentation = accept" in caplog.text
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    with caplog.at_level(logging.DEBUG, logger="ike.exchange"):
        asyncio.run(main())


def test_swanctl_scenario_imported_establishes_with_charon_on_the_original(lab: ss.Lab, tmp_path: Path) -> None:
    """strongSwan's testing scenario ikev2/net2net-cert (tests/data/swanctl): charon runs sun's swanctl.conf
    unchanged; espresso plays moon from ``python -m ike import-swanctl`` of moon's swanctl.conf (x509/,
    x509ca/, private/ beside it). The import refuses what espresso cannot express (updown, reauth_time) by path;
    the rest establishes the gw-gw tunnel and carries pings between 10.2.0.1 and 10.1.0.1."""
    import subprocess
    import sys

    from ike.config import load_config

    scenario = Path(__file__).resolve().parents[1] / "data" / "swanctl" / "ikev2-net2net-cert" / "hosts"
    root = Path(__file__).resolve().parents[2]

    async def main() -> None:
        moon, sun = lab.pair(inner_a="10.1.0.1", inner_b="10.2.0.1", outer_net="192.168.0.0/24")
        assert (moon.outer, sun.outer) == ("192.168.0.1", "192.168.0.2")
        pki = ss.LabPki("ecdsa", name="strongSwan Root CA")
        ch = lab.charon(sun, "sun", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        sun_cred = pki.issue("sunCert", "sun.strongswan.org")
        (ch.swanctl_dir / "x509" / "sunCert.pem").write_bytes(sun_cred.cert_pem())
        sun_cred.write_key(ch.swanctl_dir / "private" / "sunKey.pem")
        ch.swanctl_conf = (scenario / "sun" / "swanctl.conf").read_text()
        ch.start()

        swanctl = tmp_path / "moon" / "swanctl"
        for sub in ("x509", "x509ca", "private"):
            (swanctl / sub).mkdir(parents=True)
        moon_cred = pki.issue("moonCert", "moon.strongswan.org")
        (swanctl / "x509" / "moonCert.pem").write_bytes(moon_cred.cert_pem())
        moon_cred.write_key(swanctl / "private" / "moonKey.pem")
        (swanctl / "x509ca" / "strongswanCert.pem").write_bytes(pki.ca.cert_pem())
        (swanctl / "swanctl.conf").write_text((scenario / "moon" / "swanctl.conf").read_text())
        out = tmp_path / "moon" / "ike.toml"
        r = subprocess.run([sys.executable, "-m", "ike", "import-swanctl", str(swanctl / "swanctl.conf"), "-o",
                            str(out)], cwd=root, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.splitlines() == [
            "connections.gw-gw.reauth_time: not supported",
            "connections.gw-gw.children.net-net.updown: not supported"], r.stderr

        moon_e = EchoDaemon(load_config(out, overrides={"control_socket": str(tmp_path / "moon" / "ike.sock")}), moon)
        daemon = moon_e.daemon
        await moon_e.start()
        try:
            result = await daemon.initiate_and_wait("gw-gw", timeout=TIMEOUT)
            assert result["state"] == "ESTABLISHED" and result["child"] == "net-net", result
            sas = ss.ike_sas(ch.list_sas())
            assert sas["gw-gw"]["state"] == "ESTABLISHED", ch.tail()
            assert sas["gw-gw"]["remote-id"] == "moon.strongswan.org"
            (child,) = [c for c in daemon.children.values() if c.state == "INSTALLED"]
            assert child.event.suite == "aes128gcm16" and [str(t) for t in child.event.local_ts] == ["10.1.0.0/16"]
            pinged = await asyncio.to_thread(ss.ping, sun, "10.1.0.1")
            assert " 0% packet loss" in pinged.stdout, pinged.stdout + ch.tail()
        finally:
            await daemon.stop(delete=False)

    asyncio.run(main())


def test_swanctl_import_with_crls_strict_revocation_and_sha384_establishes(lab: ss.Lab, tmp_path: Path) -> None:
    """tests/data/swanctl/ikev2-crl-strict-sha384: both sides ``auth = pubkey-sha384`` (the IKE signature and
    every signature of the chain) and ``revocation = strict``, with CRLs in x509crl/ and an intermediate CA in
    x509ca/ that issued sun's certificate. charon runs sun's file unchanged; espresso runs the import of moon's,
    which refuses nothing: the CRLs become [pki] crls, the intermediate [pki] intermediates (held, not an
    anchor: strict needs the root's CRL for it), the constraints and the policy carry over. Then the
    intermediate's CRL is replaced by one that revokes sun: the same import now refuses charon, naming it."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    from ike.config import load_config
    from ike.control import ControlError
    from ike.daemon import Daemon
    from ike.events import AuthenticationFailed

    scenario = Path(__file__).resolve().parents[1] / "data" / "swanctl" / "ikev2-crl-strict-sha384" / "hosts"
    root = Path(__file__).resolve().parents[2]
    pki = ss.LabPki("ecdsa384", name="strongSwan Root CA", digest="sha384")
    sub = pki.intermediate("strongSwan Sub CA")
    carol = pki.issue("carolCert", "carol.strongswan.org")  # revoked by the root's CRL: a CRL with an entry
    sun_cred = sub.issue("sunCert", "sun.strongswan.org")
    moon_cred = pki.issue("moonCert", "moon.strongswan.org")

    def crls(into: Path, revoke_sun: bool = False) -> None:
        into.mkdir(parents=True, exist_ok=True)
        (into / "strongswan.crl").write_bytes(pki.crl([carol.cert], key_id=True)
                                              .public_bytes(serialization.Encoding.PEM))
        (into / "sub.crl").write_bytes(sub.crl([sun_cred.cert] if revoke_sun else [], key_id=True)
                                       .public_bytes(serialization.Encoding.DER))

    async def main() -> None:
        moon, sun = lab.pair(inner_a="10.1.0.1", inner_b="10.2.0.1", outer_net="192.168.0.0/24")
        ch = lab.charon(sun, "sun", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        ch.add_ca(sub.ca)
        (ch.swanctl_dir / "x509" / "sunCert.pem").write_bytes(sun_cred.cert_pem())
        sun_cred.write_key(ch.swanctl_dir / "private" / "sunKey.pem")
        crls(ch.swanctl_dir / "x509crl")
        ch.swanctl_conf = (scenario / "sun" / "swanctl.conf").read_text()
        ch.start()

        swanctl = tmp_path / "moon" / "swanctl"
        for d in ("x509", "x509ca", "private"):
            (swanctl / d).mkdir(parents=True)
        (swanctl / "x509" / "moonCert.pem").write_bytes(moon_cred.cert_pem())
        moon_cred.write_key(swanctl / "private" / "moonKey.pem")
        (swanctl / "x509ca" / "strongswanCert.pem").write_bytes(pki.ca.cert_pem())
        (swanctl / "x509ca" / "subCert.pem").write_bytes(sub.ca.cert_pem())
        crls(swanctl / "x509crl")
        (swanctl / "swanctl.conf").write_text((scenario / "moon" / "swanctl.conf").read_text())
        out = tmp_path / "moon" / "ike.toml"
        r = subprocess.run([sys.executable, "-m", "ike", "import-swanctl", str(swanctl / "swanctl.conf"), "-o",
                            str(out)], cwd=root, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr  # everything in the file is expressed
        text = out.read_text()
        assert 'intermediates = ["swanctl/x509ca/subCert.pem"]' in text and 'revocation = "strict"' in text
        assert 'crls = ["swanctl/x509crl/strongswan.crl", "swanctl/x509crl/sub.crl"]' in text, text

        async def attempt(tag: str) -> tuple[Daemon, dict[str, Any] | ControlError]:
            moon_e = EchoDaemon(load_config(out, overrides={"control_socket": str(tmp_path / "moon" / f"{tag}.sock")}),
                                moon)
            daemon = moon_e.daemon
            await moon_e.start()
            try:
                return daemon, await daemon.initiate_and_wait("gw-gw", timeout=TIMEOUT)
            except ControlError as exc:
                return daemon, exc

        daemon, result = await attempt("good")
        try:
            assert isinstance(result, dict) and result["state"] == "ESTABLISHED", (result, ch.tail())
            sas = ss.ike_sas(ch.list_sas())
            assert sas["gw-gw"]["state"] == "ESTABLISHED", ch.tail()
            log = ch.log()
            # charon checked our SHA-384 signature and our certificate against the CRL it holds
            assert "authentication of 'moon.strongswan.org' with ECDSA_WITH_SHA384_DER successful" in log, ch.tail()
            assert "using cached crl" in log and "certificate status is good" in log, ch.tail()
            pinged = await asyncio.to_thread(ss.ping, sun, "10.1.0.1")
            assert " 0% packet loss" in pinged.stdout, pinged.stdout + ch.tail()
        finally:
            await daemon.stop(delete=True)

        crls(swanctl / "x509crl", revoke_sun=True)  # the same import, and sun's certificate is now revoked
        r = subprocess.run([sys.executable, "-m", "ike", "import-swanctl", str(swanctl / "swanctl.conf"), "-o",
                            str(out)], cwd=root, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        daemon, result = await attempt("revoked")
        try:
            assert isinstance(result, ControlError), result
            failed = [e for e in daemon.events if isinstance(e, AuthenticationFailed)]
            assert failed and "revoked" in failed[-1].reason.lower(), (failed, str(result))
        finally:
            await daemon.stop(delete=False)

    asyncio.run(main())


@pytest.mark.parametrize("initiator", ["espresso", "charon"])
def test_non_default_ike_and_nat_t_ports_against_charon(lab: ss.Lab, tmp_path: Path, initiator: str) -> None:
    """espresso (daemon.port = 1500, nat_port = 14500) and charon (charon.port = 1500, port_nat_t = 14500 in
    strongswan.conf), each initiating in turn. charon cannot take IKE on its own port 1500 from a peer's port
    1500: its receiver (libcharon/network/receiver.c) expects the non-ESP marker on every datagram where neither
    port is 500, so it hands an unmarked IKE_SA_INIT to libipsec as ESP and drops it without a log line above
    level 2, while it sends its own IKE on 1500 unmarked (strongSwan discussion #285; the test below shows it).
    So the IKE_SA starts on the NAT-T ports (RFC 7296 2.23 allows it): espresso's peer has local_port =
    remote_port = 14500 and charon's connection local_port = remote_port = 14500; IKE carries the marker from the
    first message and ESP goes in UDP between the 14500 sockets (charon fakes a NAT for kernel-libipsec)."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        ike, esp = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
        ch = lab.charon(site_s, "charon", port=1500, port_nat_t=14500, log_levels={"net": 2, "ike": 2})
        ch.add_ca(pki.ca)
        cert = ch.add_credential(pki.issue("s", "s.test"))
        ch.connections.append(ss.Connection(
            "gw", site_s.outer, site_e.outer, "s.test", "e.test", cert,
            [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=esp)], proposals=ike,
            local_port=14500, remote_port=14500))
        ch.start()
        conf = CONF.replace("port = 500\nnat_port = 4500", "port = 1500\nnat_port = 14500").replace(
            'remote_id = "s.test"', 'remote_id = "s.test"\nlocal_port = 14500\nremote_port = 14500')
        e = Espresso(lab, site_e, site_s, pki, ike, esp, tmp_path / "e", conf=conf, ports=(1500, 14500))
        await e.start()
        try:
            await e.establish(ch, "initiator" if initiator == "espresso" else "responder")
            sa = ss.ike_sas(ch.list_sas())["gw"]
            assert (sa["local-port"], sa["remote-port"]) == ("14500", "14500"), sa
            (child,) = ss.child_sas(sa)
            assert child["encap"] == "yes", child
            log = ch.log()
            assert f"received packet: from {site_e.outer}[14500] to {site_s.outer}[14500]" in log, ch.tail()
            assert f"{site_e.outer}[1500]" not in log, ch.tail()
            assert " 0% packet loss" in await _ping(site_s)
            (mine,) = e.installed()
            assert mine.event.encap and mine.event.local_addr[1] == mine.event.remote_addr[1] == 14500, mine.event
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


def _ike_sa_init_request(local: str, remote: str) -> bytes:
    """An IKE_SA_INIT request as espresso's core makes it for charon's connection (no marker: what goes on the
    wire to a port where IKE travels plain)."""
    from ike.core_config import ChildConfig, CoreConfig, Identity, PeerConfig, TrafficSelector
    from ike.dispatcher import Dispatcher

    peer = PeerConfig("s", Identity("fqdn", "e.test"), Identity("fqdn", "s.test"), remote_addr=remote,
                      local_addr=local, remote_port=1500, local_port=1500, auth="psk", remote_auth="psk",
                      psk=b"not used: the exchange stops at IKE_SA_INIT",
                      ike_proposals=("aes128gcm16-prfsha256-ecp256",),
                      children=(ChildConfig("net", (TrafficSelector.from_cidr(f"{E_INNER}/32"),),
                                            (TrafficSelector.from_cidr(f"{S_INNER}/32"),)),))
    d = Dispatcher(CoreConfig(peers=(peer,), plain_ports=frozenset({1500})))
    d.initiate("s", 0.0)
    (dg,) = d.datagrams_to_send(0.0)
    assert not dg.marker and dg.addr == (remote, 1500)
    return dg.data


def test_charon_drops_unmarked_ike_on_its_non_500_port(lab: ss.Lab, tmp_path: Path) -> None:
    """Why IKE cannot start on charon's port 1500 (the earlier attempt where "charon saw nothing"): a datagram
    from port 1500 to charon's port 1500 is taken for ESP unless it starts with the non-ESP marker. tcpdump in
    charon's namespace sees espresso's IKE_SA_INIT arrive; charon logs receiving it (net level 2) and nothing
    more, and never answers. With the marker prepended, the same IKE_SA_INIT is parsed and answered, marked."""
    import socket as socketmod

    site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
    pki = ss.LabPki("ecdsa")
    ch = lab.charon(site_s, "charon", port=1500, port_nat_t=14500, log_levels={"net": 2, "enc": 1})
    ch.add_ca(pki.ca)
    cert = ch.add_credential(pki.issue("s", "s.test"))
    ch.connections.append(ss.Connection(
        "gw", site_s.outer, site_e.outer, "s.test", "e.test", cert,
        [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32")], local_port=1500, remote_port=1500))
    ch.start()
    request = _ike_sa_init_request(site_e.outer, site_s.outer)
    (sock,) = ss.netns_sockets(site_e.netns, [(site_e.outer, 1500)])
    sock.settimeout(2.0)
    try:
        sock.sendto(request, (site_s.outer, 1500))
        with pytest.raises(socketmod.timeout):
            sock.recvfrom(4096)
        log = ch.log()
        assert f"received packet: from {site_e.outer}[1500] to {site_s.outer}[1500]" in log, ch.tail()
        assert "parsed IKE_SA_INIT request" not in log, ch.tail()
        sock.sendto(b"\0\0\0\0" + request, (site_s.outer, 1500))
        reply, _ = sock.recvfrom(4096)
        assert reply[:4] == b"\0\0\0\0" and reply[4:12] == request[:8]  # charon answers marked, on port 1500
        assert "parsed IKE_SA_INIT request 0" in ch.log(), ch.tail()
    finally:
        sock.close()


def test_second_proposal_chosen(lab: ss.Lab, tmp_path: Path) -> None:
    """espresso offers two IKE and two ESP proposals; charon accepts only the second of each and answers with
    that proposal's number (RFC 7296 3.3.1): espresso must take it."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("ecdsa")
        ch = _charon(lab, site_s, site_e, pki, "aes128gcm16-prfsha256-ecp256", "aes128gcm16", "ecdsa")
        conf = CONF.replace('ike_proposals = ["{ike}"]', 'ike_proposals = ["aes256-sha256-modp2048", "{ike}"]') \
                   .replace('esp_proposals = ["{esp}"]', 'esp_proposals = ["aes256-sha256", "{esp}"]')
        e = Espresso(lab, site_e, site_s, pki, "aes128gcm16-prfsha256-ecp256", "aes128gcm16", tmp_path / "e", conf=conf)
        await e.start()
        try:
            r = await e.daemon.initiate_and_wait("s", timeout=TIMEOUT)
            assert r["state"] == "ESTABLISHED", r
            (mine,) = e.installed()
            assert mine.event.suite == "aes128gcm16"
            assert e.daemon.list_sas()[0]["proposal"] == "aes128gcm16-prfsha256-ecp256"
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())
