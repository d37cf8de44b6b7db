"""3DES for IKEv1 against strongSwan charon, accepted only where a configuration names it (issue 17).

Evidence: charon's openssl plugin offers 3DES_CBC; with ``ike = 3des-sha1-modp2048`` main mode establishes
in both roles, in main and aggressive mode, and charon's logged secrets (SKEYID, SKEYID_d/a/e, and the ESP keys of quick mode, with ESP
aes128-sha256 and with ``esp = 3des-sha1``) equal espresso's for the same session; the espresso daemon and
charon then ping each other through a 3DES tunnel (phase 1 and ESP) in both roles. A side configured for AES
refuses 3DES the other offers, with NO_PROPOSAL_CHOSEN each way.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ike.events import ChildSaEstablished
from ike.v1.session import ESP_3DES, ESP_AES, TRIPLE_DES_CBC, Phase1Done, V1Config, V1Session
from tests.interop import strongswan as ss
from tests.interop.test_gateway_ike import IkeGateway
from tests.interop.test_ikev1_daemon import _charon_installed, _conf_to_charon, _establish
from tests.interop.test_ikev1_strongswan import (
    PSK,
    _drive,
    _PskCharon,
    _serve_while_charon_initiates,
    _V1Conn,
)
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

IKE_3DES = "3des-sha1-modp2048"


@pytest.fixture
def session_lab(tmp_path: Path):
    """charon in a namespace and a bare socket for an espresso session (as test_ikev1_strongswan.py)."""
    yield from ss.charon_lab(tmp_path)


@pytest.fixture
def daemon_lab(tmp_path: Path):
    """charon and the espresso daemon with its gateway, each in a namespace (as test_ikev1_daemon.py)."""
    require_root()
    require_tool("swanctl")
    yield from ss.charon_lab(tmp_path / "lab")


def _session_cfg(e: ss.Site, s: ss.Site, esp: str, aggressive: bool = False) -> V1Config:
    tdes = esp.startswith("3des")
    return V1Config("v1", PSK, "e.test", "s.test", "10.98.1.1/32", "10.98.2.1/32", (e.outer, 500), (s.outer, 500),
                    enc_alg=TRIPLE_DES_CBC, enc_key_bits=192, hash="sha1", esp_transform=ESP_3DES if tdes else ESP_AES,
                    esp_key_bits=192 if tdes else 128, esp_auth=2 if tdes else 5, pfs_group=14,
                    aggressive=aggressive, natt=False)  # a bare socket on port 500, as in test_ikev1_strongswan.py


def _charon(lab: ss.Lab, tmp_path: Path, site: ss.Site, peer: str, esp: str, ike: str = IKE_3DES,
            level: int = 4, aggressive: bool = False) -> ss.Charon:
    from tests.interop.test_ikev1_aggressive import AGGRESSIVE, AGGRESSIVE_PSK

    ch = _PskCharon(tmp_path / "charon", site.netns, log_levels={"ike": level, "chd": level},
                    settings=AGGRESSIVE_PSK if aggressive else "")
    lab.charons.append(ch)
    ch.connections.append(_V1Conn(site.outer, peer, ike=ike, esp=esp, extra=AGGRESSIVE if aggressive else ""))
    ch.start()
    return ch


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("esp", ["aes128-sha256-modp2048", "3des-sha1-modp2048"])
@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_3des_keys_equal_charons(session_lab, tmp_path, initiator, esp, mode):
    e, s = session_lab.pair()
    ch = _charon(session_lab, tmp_path, s, e.outer, esp, aggressive=mode == "aggressive")
    algs = ch.swanctl("--list-algs").stdout
    assert re.search(r"encryption:.*?3DES_CBC\[openssl\]", algs, re.DOTALL), algs
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    cfg = _session_cfg(e, s, esp, aggressive=mode == "aggressive")
    if initiator == "espresso":
        session = V1Session(cfg, os.urandom)
        try:
            events = _drive(session, sock, (s.outer, 500))
        finally:
            sock.close()
        assert session.state == "established", (session.state, session.last_error, ch.tail(60))
        child = next(ev for ev in events if isinstance(ev, ChildSaEstablished))
    else:
        session, events = _serve_while_charon_initiates(ch, sock, cfg, (s.outer, 500))
        assert session is not None and session.state in ("r_qm3", "established"), ch.tail(60)
        child = session.pending_child or next(ev for ev in events if isinstance(ev, ChildSaEstablished))
    assert any(isinstance(ev, Phase1Done) for ev in events)
    assert child.suite == ("3des-sha1" if esp.startswith("3des") else "aes128-sha256")
    spis = (f"SPI 0x{child.spi_out:08x}", f"SPI 0x{child.spi_in:08x}")

    def derived() -> str | None:
        lg = ch.log()
        return lg if all(x in lg for x in spis) else None

    log = ch.wait_for(derived, "charon deriving the ESP SA for espresso's SPIs")
    assert "3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048" in log, ch.tail(80)
    assert ("Aggressive Mode" in log) == (mode == "aggressive"), ch.tail(80)
    dumps = {label: data for label, data, _ in ss.parse_dumps(log)}
    assert session.keys is not None and len(session.keys.enc_key) == 24 and len(session.keys.iv) == 8
    for label, ours in (("SKEYID", session.keys.skeyid), ("SKEYID_d", session.keys.skeyid_d),
                        ("SKEYID_a", session.keys.skeyid_a), ("SKEYID_e", session.keys.skeyid_e)):
        assert dumps.get(label) == ours, (label, sorted(dumps))
    # the 3DES key expanded from SHA-1's 20-byte SKEYID_e (Appendix B) and the 8-byte phase-1 IV, as charon's
    assert dumps["encryption key Ka"] == session.keys.enc_key and dumps["initial IV"] == session.keys.iv
    mine_i = initiator == "espresso"
    enc_i, integ_i = (child.enc_key_out, child.integ_key_out) if mine_i else (child.enc_key_in, child.integ_key_in)
    enc_r, integ_r = (child.enc_key_in, child.integ_key_in) if mine_i else (child.enc_key_out, child.integ_key_out)
    assert (dumps["encryption initiator key"], dumps["integrity initiator key"]) == (enc_i, integ_i)
    assert (dumps["encryption responder key"], dumps["integrity responder key"]) == (enc_r, integ_r)
    assert len(enc_i) == (24 if esp.startswith("3des") else 16)


def _gateway(tmp_path: Path, a: ss.Site, b: ss.Site, ike: str, esp: str) -> IkeGateway:
    return IkeGateway(a.netns.name, tmp_path, "esp", _conf_to_charon(a, b, ike=ike, esp=esp))


@pytest.mark.parametrize(("initiator", "esp"), [("espresso", "aes128-sha256-modp2048"),
                                                ("espresso", "3des-sha1-modp2048"),
                                                ("strongswan", "3des-sha1-modp2048")])
def test_daemon_pings_charon_through_3des(daemon_lab, tmp_path, initiator, esp):
    a, b = daemon_lab.pair()
    ch = _charon(daemon_lab, tmp_path, b, a.outer, esp, level=2)
    gw = _gateway(tmp_path, a, b, IKE_3DES, esp)
    tdes = esp.startswith("3des")
    try:
        child = _establish(gw, ch, initiator)
        assert child["suite"] == ("3des-sha1" if tdes else "aes128-sha256"), child
        _charon_installed(ch)
        p = ss.ping(a, b.inner, count=5, timeout=10)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
        p = ss.ping(b, a.inner, count=3, timeout=10)
        assert p.returncode == 0, p.stdout + p.stderr
        (sa,) = gw.control({"cmd": "list-sas"})["ike_sas"]
        assert sa["proposal"] == IKE_3DES and sa["child_sas"][0]["packets_in"] >= 8, sa
        v1 = next(s["v1"] for s in ch.list_sas() if "v1" in s)
        assert v1["encr-alg"] == "3DES_CBC" and v1["integ-alg"] == "HMAC_SHA1_96", v1
        (kid,) = v1["child-sas"].values()
        assert kid["encr-alg"] == ("3DES_CBC" if tdes else "AES_CBC"), kid
        esp_rows = (tmp_path / "keys-esp" / "esp_sa").read_text()
        assert ('"TripleDES-CBC [RFC2451]"' in esp_rows) == tdes, esp_rows
        (row,) = (tmp_path / "keys-esp" / "ikev1_decryption_table").read_text().splitlines()
        assert len(row.split(",")[1]) == 48  # the 24-byte phase-1 key, in hex
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH"):
        assert stats["inbound"][bad] == 0, (bad, stats["inbound"])


@pytest.mark.parametrize("offers", ["strongswan", "espresso"])
def test_3des_offered_to_an_aes_peer_is_refused_with_no_proposal_chosen(daemon_lab, tmp_path, offers):
    """Only where named: the side configured for AES-128/SHA-256 refuses the other's 3DES/SHA-1, and the one
    that offered hears NO_PROPOSAL_CHOSEN (charon's log; the daemon's initiate reply) instead of a timeout."""
    a, b = daemon_lab.pair()
    aes = "aes128-sha256-modp2048"
    ch = _charon(daemon_lab, tmp_path, b, a.outer, aes, ike=IKE_3DES if offers == "strongswan" else aes, level=2)
    gw = _gateway(tmp_path, a, b, aes if offers == "strongswan" else IKE_3DES, aes)
    try:
        if offers == "strongswan":
            r = ch.initiate("net", ike="v1", timeout=10)
            assert r.returncode != 0
            ch.wait_for(lambda: "received NO_PROPOSAL_CHOSEN error notify" in ch.log() or None,
                        "charon to hear NO_PROPOSAL_CHOSEN")
        else:
            r = gw.control({"cmd": "initiate", "ike": "swan", "timeout": 10})
            assert not r.get("ok") or r.get("state") != "ESTABLISHED", r
            assert "NO_PROPOSAL_CHOSEN" in str(r), r
            log = ch.log()
            assert "no proposal found" in log and "generating INFORMATIONAL_V1 request" in log, ch.tail(40)
        assert gw.control({"cmd": "list-sas"})["ike_sas"] == []
    finally:
        stats = gw.stop()
    assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


def test_3des_with_a_certificate_against_charon(session_lab, tmp_path):
    """Main mode with RSA signatures (an intermediate in CERT, CRLs) under a 3DES ISAKMP SA: the encrypted
    messages 5 and 6 carry the certificates, so more than one 8-byte block chain is exercised."""
    from dataclasses import replace

    from tests.ike.v1.sigpki import V1Pki
    from tests.interop.test_ikev1_certs import SCHEME, _cfg
    from tests.interop.test_ikev1_certs import _charon as cert_charon

    pki = V1Pki("rsa")
    e, s = session_lab.pair()
    ch = cert_charon(session_lab, tmp_path, pki, s, e, ike=IKE_3DES)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    session = V1Session(replace(_cfg(pki, e, s), enc_alg=TRIPLE_DES_CBC, enc_key_bits=192, hash="sha1"), os.urandom)
    try:
        events = _drive(session, sock, (s.outer, 500))
    finally:
        sock.close()
    assert session.state == "established", (session.state, session.last_error, ch.tail(60))
    assert [type(ev) for ev in events] == [Phase1Done, ChildSaEstablished]
    log = ch.wait_for(lambda: "authentication of 'e.test'" in ch.log() and ch.log() or None,
                      "charon verifying espresso's signature")
    assert f"authentication of 'e.test' with {SCHEME['rsa']} successful" in log, ch.tail(60)
    assert "3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048" in log, ch.tail(60)
    dumps = {label: data for label, data, _ in ss.parse_dumps(log)}
    assert session.keys is not None and dumps["encryption key Ka"] == session.keys.enc_key
