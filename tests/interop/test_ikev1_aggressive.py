"""IKEv1 aggressive mode (ike/v1/aggressive.py) against strongSwan charon with ``aggressive = yes``, both roles:
PSK (the core, then the daemon with pings through the tunnel) and certificates (RFC 2409 5.1).

Evidence: the ISAKMP SA comes up and charon goes on to quick mode with our SPIs; the SKEYIDs charon logs at ike
level 4 equal ours. A responder whose configuration leaves aggressive mode off refuses charon's opening and charon
gets no ISAKMP SA. charon answers aggressive PSK as a responder only with its
``i_dont_care_about_security_and_use_aggressive_mode_psk`` option, which says why ours is off by default.
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from ike.errors import ParseError
from ike.events import ChildSaEstablished
from ike.v1.responder import V1Responder
from ike.v1.session import Phase1Done, V1Config, V1Session
from tests.ike.v1.sigpki import V1Pki
from tests.interop import strongswan as ss
from tests.interop import test_ikev1_certs as certs
from tests.interop.test_ikev1_strongswan import (
    PSK,
    _drive,
    _PskCharon,
    _serve_while_charon_initiates,
    _V1Conn,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

AGGRESSIVE_PSK = "i_dont_care_about_security_and_use_aggressive_mode_psk = yes"


#: the line that turns charon's connection to aggressive mode
AGGRESSIVE = "    aggressive = yes\n"


@pytest.fixture
def lab(tmp_path: Path):
    yield from ss.charon_lab(tmp_path)


def _charon(lab, tmp_path: Path):  # type: ignore[no-untyped-def]
    e, s = lab.pair()
    charon = _PskCharon(tmp_path / "charon", s.netns, log_levels={"ike": 4, "chd": 4}, settings=AGGRESSIVE_PSK)
    lab.charons.append(charon)
    charon.connections.append(_V1Conn(s.outer, e.outer, "-modp2048", extra=AGGRESSIVE))
    charon.start()
    cfg = V1Config("v1", PSK, "e.test", "s.test", "10.98.1.1/32", "10.98.2.1/32", (e.outer, 500), (s.outer, 500),
                   natt=False, aggressive=True)  # bare socket on 500: NAT-T is the daemon's (test_ikev1_daemon.py)
    return e, s, charon, cfg


def _spis_derived(charon, child: ChildSaEstablished, e, s) -> str:  # type: ignore[no-untyped-def]
    spis = (f"SPI 0x{child.spi_out:08x}, src {e.outer} dst {s.outer}",
            f"SPI 0x{child.spi_in:08x}, src {s.outer} dst {e.outer}")

    def derived() -> str | None:
        lg = charon.log()
        return lg if all(x in lg for x in spis) else None

    return charon.wait_for(derived, "charon deriving the ESP SA for espresso's SPIs")


def _same_skeyids(log: str, session: V1Session) -> None:
    dumps = {label: data for label, data, _ in ss.parse_dumps(log)}
    assert session.keys is not None
    for label, ours in (("SKEYID", session.keys.skeyid), ("SKEYID_d", session.keys.skeyid_d),
                        ("SKEYID_a", session.keys.skeyid_a), ("SKEYID_e", session.keys.skeyid_e)):
        assert dumps.get(label) == ours, (label, sorted(dumps))


def test_espresso_initiates_aggressive_mode_to_charon(lab, tmp_path):
    e, s, charon, cfg = _charon(lab, tmp_path)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    try:
        session = V1Session(cfg, os.urandom)
        events = _drive(session, sock, (s.outer, 500))
    finally:
        sock.close()
    assert session.state == "established", (session.state, session.dropped, session.last_error, charon.tail(60))
    assert isinstance(events[0], Phase1Done) and isinstance(events[1], ChildSaEstablished)
    log = _spis_derived(charon, events[1], e, s)
    # charon answered AM1 with HASH_R in AM2 and took our (encrypted) AM3: the ISAKMP SA is aggressive mode's
    assert "is initiating a Aggressive Mode IKE_SA" in log and "parsed AGGRESSIVE request 0 [ HASH ]" in log
    _same_skeyids(log, session)
    dumps = {label: data for label, data, _ in ss.parse_dumps(log)}
    assert (dumps["encryption initiator key"], dumps["integrity initiator key"]) == \
        (events[1].enc_key_out, events[1].integ_key_out)


def test_charon_initiates_aggressive_mode_to_espresso(lab, tmp_path):
    e, s, charon, cfg = _charon(lab, tmp_path)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    session, events = _serve_while_charon_initiates(charon, sock, cfg, (s.outer, 500))
    assert session is not None and session.state in ("r_qm3", "established"), (
        session and (session.state, session.dropped, session.last_error), charon.tail(60))
    assert any(isinstance(ev, Phase1Done) for ev in events)
    child = session.pending_child or next(ev for ev in events if isinstance(ev, ChildSaEstablished))
    log = _spis_derived(charon, child, e, s)
    assert "initiating Aggressive Mode IKE_SA" in log and "parsed AGGRESSIVE response 0 [ SA KE No ID HASH" in log
    _same_skeyids(log, session)


def test_responder_without_aggressive_refuses_charon(lab, tmp_path):
    e, _, charon, cfg = _charon(lab, tmp_path)
    cfg = replace(cfg, aggressive=False)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    refusals: list[str] = []

    def refuse() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(refusals) < 2:
            if select.select([sock], [], [], 0.1)[0]:
                data, _ = sock.recvfrom(65535)
                try:
                    V1Responder(cfg, os.urandom, data, time.monotonic())
                except ParseError as exc:
                    refusals.append(str(exc))

    t = threading.Thread(target=refuse)
    t.start()
    try:
        r = charon.swanctl("--initiate", "--child", "net", "--timeout", "5", check=False, timeout=20)
        t.join(20)
    finally:
        sock.close()
    assert refusals and all("aggressive mode is not enabled" in x for x in refusals), refusals
    log = charon.log()
    assert r.returncode != 0 and "initiating Aggressive Mode IKE_SA" in log and "IKE_SA v1[1] established" not in log


# --- the daemon as an operator runs it: aggressive = true in its configuration, pings through the tunnel ---------


@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_daemon_with_aggressive_true_pings_through_charon(tmp_path, initiator):
    from tests.interop.test_gateway_ike import IkeGateway
    from tests.interop.test_ikev1_daemon import _charon_sa, _conf_to_charon, _establish
    from tests.support import require, require_root, require_tool
    require_root()
    require_tool("swanctl")
    ok, why = ss.charon_available()
    require(ok, why)
    with ss.Lab(tmp_path / "lab") as lab:
        a, b = lab.pair()  # a: espresso, b: charon
        ch = _PskCharon(tmp_path / "charon", b.netns, log_levels={"ike": 2}, settings=AGGRESSIVE_PSK)
        lab.charons.append(ch)
        ch.connections.append(_V1Conn(b.outer, a.outer, "-modp2048", extra=AGGRESSIVE))
        ch.start()
        conf = _conf_to_charon(a, b, extra="aggressive = true\n")
        gw = IkeGateway(a.netns.name, tmp_path, "esp", conf)
        try:
            child = _establish(gw, ch, initiator)
            p = ss.ping(a, b.inner, count=5, timeout=10)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr + ch.tail(60)
            assert ss.ping(b, a.inner, count=3, timeout=10).returncode == 0
            (sa,) = gw.control({"cmd": "list-sas"})["ike_sas"]
            assert sa["version"] == 1 and sa["state"] == "ESTABLISHED" and sa["child_sas"][0]["packets_in"] >= 8
            v1 = _charon_sa(ch)
            assert v1["state"] == "ESTABLISHED" and {child["spi_in"], child["spi_out"]} <= {
                x for kid in v1["child-sas"].values() for x in (kid["spi-in"], kid["spi-out"])}
            assert "Aggressive Mode" in ch.log()
            # the key log: the ISAKMP SA's row for Wireshark, as after main mode
            (row,) = (tmp_path / "keys-esp" / "ikev1_decryption_table").read_text().splitlines()
            assert row.startswith(sa["spi_i"] + ",")
        finally:
            stats = gw.stop()
        assert stats["tracebacks"] == 0, stats["stderr"][-3000:]


# --- certificates: test_ikev1_certs.py's lab (root, intermediate, CRLs), with aggressive mode on both ends ---------


@pytest.mark.parametrize("initiator", ["espresso", "strongswan"])
def test_certificates_in_aggressive_mode(lab, tmp_path, monkeypatch, initiator):
    cfg = certs._cfg
    monkeypatch.setattr(certs, "_V1CertConn", partial(certs._V1CertConn, extra=AGGRESSIVE))
    # natt off: charon fakes a NAT and floats AM3 to 4500, which this bare socket on 500 does not follow (the
    # daemon test above does, with NAT-T)
    monkeypatch.setattr(certs, "_cfg", lambda pki, e, s: replace(cfg(pki, e, s), aggressive=True, natt=False))
    pki = V1Pki("rsa")
    charon, session, events = (certs._initiate if initiator == "espresso" else certs._respond)(lab, tmp_path, pki)
    assert session is not None and session.state in ("r_qm3", "established"), (
        session and (session.state, session.dropped, session.last_error), charon.tail(60))
    assert any(isinstance(ev, Phase1Done) for ev in events)
    log = charon.wait_for(lambda: (lg := charon.log()) and "authentication of 'e.test'" in lg and lg,
                          "charon verifying espresso's signature")
    assert "authentication of 'e.test' with RSA_EMSA_PKCS1_NULL successful" in log, charon.tail(60)
    assert "Aggressive Mode IKE_SA" in log
    if initiator == "espresso":  # charon's proof rides in AM2, ours (encrypted) in AM3
        assert "generating AGGRESSIVE response 0 [ SA KE No ID CERT CERT" in log, charon.tail(60)
        assert "parsed AGGRESSIVE request 0 [ CERT CERT SIG" in log, charon.tail(60)
    else:
        assert "parsed AGGRESSIVE response 0 [ SA KE No ID CERT CERT SIG" in log, charon.tail(60)
    certs._same_skeyid(charon, session)
