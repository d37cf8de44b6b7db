"""The protocol core against strongSwan 5.9 (charon with kernel-libipsec in a network namespace).

The core runs over plain UDP sockets in one namespace (tests/ike/netns_driver.py), charon in the other. Evidence:
charon's log says authentication succeeded and the CHILD_SA was established, and the CHILD_SA keys charon derived
(logged at level 4) equal the ones the core put into ChildSaEstablished, also after rekeys.
The daemon-level interop (ESP traffic through esp/) is in the daemon's tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop import strongswan as ss
from tests.support import require

pytestmark = [pytest.mark.interop, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _start_driver(lab, site, tmp_path, cfg):  # type: ignore[no-untyped-def]
    (tmp_path / "drv.json").write_text(json.dumps(cfg))
    return subprocess.Popen(["ip", "netns", "exec", site.netns.name, sys.executable, "-m", "tests.ike.netns_driver",
                             str(tmp_path / "drv.json")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _events(out: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in out.splitlines() if line.startswith("{")) if "event" in e]


def _setup(tmp_path, kind, ike, esp, me_id="me.example", them_id="them.example", settings=""):  # type: ignore[no-untyped-def]
    lab = ss.Lab(tmp_path)
    a, b = lab.pair()
    pki = ss.LabPki(kind)
    me, them = pki.issue("me", "me.example"), pki.issue("them", "them.example")
    ch = lab.charon(b, "charon", log_levels={"ike": 4, "chd": 4}, settings=settings)
    ch.add_ca(pki.ca)
    ch.connections.append(ss.Connection("p", b.outer, a.outer, them_id, me_id, ch.add_credential(them),
                                        [ss.Child("net", f"{b.inner}/32", f"{a.inner}/32", esp)], proposals=ike))
    ch.start()
    for name, data in (("key.pem", me.key_pem()), ("cert.pem", me.cert_pem()), ("ca.pem", pki.ca.cert_pem())):
        (tmp_path / name).write_bytes(data)
    cfg = {"key": str(tmp_path / "key.pem"), "cert": str(tmp_path / "cert.pem"), "ca": str(tmp_path / "ca.pem"),
           "local_id": me_id, "remote_id": them_id, "remote_addr": b.outer, "local_addr": a.outer,
           "local_ts": f"{a.inner}/32", "remote_ts": f"{b.inner}/32", "ike": [ike], "esp": [esp]}
    return lab, a, b, ch, cfg


def _assert_keys_match(events: list[dict], log: str) -> int:
    ours = {e["spi_in"]: e for e in events if e.get("event") == "ChildSaEstablished"}
    theirs = [k for k in ss.child_keys(log) if k.encr_i]
    assert ours and theirs
    matched = 0
    for k in theirs:  # charon's spi_in is our spi_out
        mine = next((e for e in ours.values() if e["spi_out"] == k.spi_in), None)
        assert mine is not None, f"no CHILD_SA with outbound SPI {k.spi_in:08x}"
        enc_i, enc_r = (mine["enc_key_out"], mine["enc_key_in"]) if mine["initiator"] else (
            mine["enc_key_in"], mine["enc_key_out"])
        assert (k.encr_i.hex(), k.encr_r.hex()) == (enc_i, enc_r)
        if k.integ_i:
            integ_i = mine["integ_key_out"] if mine["initiator"] else mine["integ_key_in"]
            assert k.integ_i.hex() == integ_i
        matched += 1
    return matched


@pytest.mark.parametrize("kind,ike,esp,dn", [
    ("rsa", "aes256-sha256-modp2048", "aes256-sha256", False),
    ("ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", True),  # DER_ASN1_DN identities, strongSwan order
    ("ecdsa", "chacha20poly1305-prfsha512-curve25519", "chacha20poly1305", False),
    ("rsa", "aes256-sha384-modp4096", "aes256-sha256", False),  # MODP 16 and 18 through libcrypto (issue 12)
    ("ecdsa", "aes128-sha256-modp8192", "aes128gcm16", False),
])
def test_core_initiates_to_strongswan_rekeys_and_deletes(tmp_path, kind, ike, esp, dn):
    ok, why = ss.charon_available()
    require(ok, why)
    ids = ({"me_id": "O=espresso interop, CN=me.example", "them_id": "O=espresso interop, CN=them.example"}
           if dn else {})
    lab, a, b, ch, cfg = _setup(tmp_path, kind, ike, esp, **ids)
    with lab:
        cfg.update(role="initiator", actions=["rekey_child", "rekey_ike", "rekey_child", "terminate"],
                   timeout=20, stop_when="IkeSaTerminated", fragment_size=576 if kind == "rsa" else 1280)
        drv = _start_driver(lab, a, tmp_path, cfg)
        out, err = drv.communicate(timeout=40)
        events = _events(out)
        kinds = [e.get("event") for e in events]
        log = ch.log()
        assert "IkeSaEstablished" in kinds, err[-2000:] + ch.tail()
        assert f"authentication of '{ids.get('me_id', 'me.example')}' with" in log and "successful" in log
        assert kinds.count("ChildSaRekeyed") == 2 and "IkeSaRekeyed" in kinds
        assert kinds[-1] == "IkeSaTerminated"
        assert _assert_keys_match(events, log) == 3
        if kind == "rsa":
            assert "reassembled fragmented IKE message" in log
        assert ch.wait_for(lambda: not ss.ike_sas(ch.list_sas()), "charon drops the IKE_SA", timeout=5)


@pytest.mark.parametrize("kind,pss", [("ecdsa", False), ("rsa", True)])
def test_strongswan_initiates_to_core_and_rekeys(tmp_path, kind, pss):
    """With ``pss`` both sides sign with RSASSA-PSS (RFC 7427; strongSwan's ``rsa_pss = yes``)."""
    ok, why = ss.charon_available()
    require(ok, why)
    lab, a, b, ch, cfg = _setup(tmp_path, kind, "aes256gcm16-prfsha384-curve25519", "aes256gcm16",
                                settings="rsa_pss = yes" if pss else "")
    with lab:
        cfg.update(role="responder", timeout=15, stop_when="IkeSaTerminated", rsa_pss=pss)
        drv = _start_driver(lab, a, tmp_path, cfg)
        assert drv.stdout is not None and "ready" in drv.stdout.readline()
        res = ch.initiate("net", ike="p", timeout=8)
        assert "initiate completed successfully" in res.stdout, res.stdout[-2000:]
        for args in (["--rekey", "--child", "net"], ["--rekey", "--ike", "p"], ["--rekey", "--child", "net"]):
            ch.swanctl(*args)
            time.sleep(0.3)
        ch.swanctl("--terminate", "--ike", "p", "--timeout", "5")
        out, err = drv.communicate(timeout=30)
        events = _events(out)
        kinds = [e.get("event") for e in events]
        assert kinds.count("ChildSaEstablished") == 3 and kinds.count("ChildSaRekeyed") == 2, err[-2000:]
        assert "IkeSaRekeyed" in kinds and kinds[-1] == "IkeSaTerminated"
        est = next(e for e in events if e.get("event") == "IkeSaEstablished")
        assert est["proposal"] == "aes256gcm16-prfsha384-curve25519" and not est["initiator"]
        if pss:
            assert est["auth_method"] == "signature(rsa-pss-sha2_256)"
            assert "with RSA_EMSA_PSS_SHA2_256" in ch.log()
        assert _assert_keys_match(events, ch.log()) == 3


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_refused_certificate_answers_authentication_failed(tmp_path, role):
    ok, why = ss.charon_available()
    require(ok, why)
    lab, a, b, ch, cfg = _setup(tmp_path, "ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16")
    with lab:
        cfg.update(role=role, timeout=8, stop_when="IkeSaTerminated", reject_peer=True)
        drv = _start_driver(lab, a, tmp_path, cfg)
        assert drv.stdout is not None and "ready" in drv.stdout.readline()
        if role == "responder":
            res = ch.initiate("net", ike="p", timeout=5)
            assert "initiate completed successfully" not in res.stdout
        out, err = drv.communicate(timeout=30)
        events = _events(out)
        kinds = [e["event"] for e in events]
        assert "AuthenticationFailed" in kinds and "IkeSaEstablished" not in kinds, err[-2000:]
        assert next(e for e in events if e["event"] == "AuthenticationFailed")["local_side"]
        assert "ChildSaEstablished" not in kinds
        log = ch.log()
        # charon abbreviates the notify as N(AUTH_FAILED) in its message summaries
        assert "N(AUTH_FAILED)" in log or "AUTHENTICATION_FAILED" in log, ch.tail()
        assert ch.wait_for(lambda: not ss.ike_sas(ch.list_sas()), "charon has no IKE_SA", timeout=5)
