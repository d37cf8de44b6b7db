"""The JUNOS verbs of issue 16 run as an operator runs them (``python -m pki`` subprocesses, a ``ca serve``
process beside them): ca-certificate enroll asks before storing, crl download finds the distribution point,
ca-certificate verify checks CAs as CAs, clear --all, ca-profile-group and trusted-ca-group (also as IKE uses them)."""
from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.certs import certificates_to_pem, fingerprint
from pki.store import Store
from tests.pki.conftest import raw_cert

REPO = Path(__file__).resolve().parents[2]
PEM = serialization.Encoding.PEM


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)
    return env


@pytest.fixture
def pki(tmp_path):
    def run(*argv: str, ok: bool = True, answer: str | None = None) -> subprocess.CompletedProcess:
        """``answer``: run with a terminal as stdin and type this line into it (None: stdin is /dev/null)."""
        cmd = [sys.executable, "-m", "pki", *argv]
        if answer is None:
            r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
        else:
            master, slave = pty.openpty()
            try:
                proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdin=slave, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                os.close(slave)
                os.write(master, (answer + "\n").encode())
                out, err = proc.communicate(timeout=60)
            finally:
                os.close(master)
            r = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        assert "Traceback" not in r.stderr, r.stderr
        if ok:
            assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r
    return run


@pytest.fixture
def served_ca(tmp_path, pki):
    """A CA with a CRL distribution point, served by ``ca serve`` on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    pki("ca", "--ca", "ca", "init", "--subject", "CN=Verbs Root,O=Corp", "--key-type", "rsa", "--crl-url", f"{url}/crl")
    proc = subprocess.Popen([sys.executable, "-m", "pki", "ca", "--ca", "ca", "serve", "--port", str(port),
                             "--challenge", "s3cret"], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # bounded: at most ~30 s
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                assert proc.poll() is None, "ca serve exited"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ca_certificate_enroll_asks_then_crl_download_finds_the_distribution_point(pki, served_ca, tmp_path):
    S = ("--store", "st")
    pki(*S, "ca-profile", "add", "lab", "--enrollment-url", f"{served_ca}/scep")
    ca_fp = fingerprint(x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes()), "sha256")
    # no terminal and no --yes: refused before anything is fetched, with what to do
    r = pki(*S, "ca-certificate", "enroll", "--ca-profile", "lab", ok=False)
    assert r.returncode == 1 and r.stderr.startswith("error: ca-certificate enroll asks you to confirm") \
        and "--yes" in r.stderr and r.stderr.count("\n") == 1
    # a terminal: the fingerprint is shown, and "no" (or nothing) stores nothing
    r = pki(*S, "ca-certificate", "enroll", "--ca-profile", "lab", answer="no", ok=False)
    assert r.returncode == 1 and ca_fp in r.stdout and "Do you want to load the above CA certificate?" in r.stdout
    assert "not stored (fingerprint not confirmed)" in r.stderr
    assert Store(tmp_path / "st").ca_certificates("lab") == []
    r = pki(*S, "ca-certificate", "enroll", "--ca-profile", "lab", answer="yes")
    assert ca_fp in r.stdout and "CA certificate for profile lab stored." in r.stdout
    assert len(Store(tmp_path / "st").ca_certificates("lab")) == 1
    # --yes: no question, fingerprints still printed
    r = pki("--store", "st2", "ca-profile", "add", "lab", "--enrollment-url", f"{served_ca}/scep")
    r = pki("--store", "st2", "ca-certificate", "enroll", "--ca-profile", "lab", "--yes")
    assert ca_fp in r.stdout and "Do you want" not in r.stdout and "out of band" in r.stdout

    # crl download without --url: the root carries no distribution point and no certificate of it is held yet
    r = pki(*S, "crl", "download", "--ca-profile", "lab", ok=False)
    assert r.returncode == 1 and "no certificate of its CA names a CRL distribution point; pass --url" in r.stderr
    # once a local certificate of that CA is held, its distribution point is used
    pki(*S, "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")
    pki(*S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1,O=Corp", "--filename",
        "r1.csr")
    pki("ca", "--ca", "ca", "issue", "--csr", "r1.csr", "--out", "r1.pem")
    pki(*S, "local-certificate", "load", "--certificate-id", "r1", "--filename", "r1.pem")
    r = pki(*S, "crl", "download", "--ca-profile", "lab")
    assert r.stdout.startswith(f"CRL for lab loaded from {served_ca}/crl: 0 revoked")
    # ca-certificate verify: the root as a CA, and the CRL just loaded against it
    r = pki(*S, "ca-certificate", "verify", "--ca-profile", "lab", "--offline")
    assert "CA certificate CN=Verbs Root,O=Corp of ca-profile lab: verified (self-signed, signature verified)" \
        in r.stdout and "CRL: signed by CN=Verbs Root,O=Corp" in r.stdout


def _ec():
    from pki.keys import generate_private_key, parse_key_spec

    return generate_private_key(parse_key_spec("ecdsa", 256))


KU_CA = {"key_cert_sign": True, "crl_sign": True}


def _cert(*args, **kw):
    """conftest.raw_cert valid around the real clock (these commands read it)."""
    now = datetime.now(timezone.utc)
    kw.setdefault("not_before", now - timedelta(days=1))
    kw.setdefault("not_after", now + timedelta(days=30))
    return raw_cert(*args, **kw)


def test_ca_certificate_verify_checks_a_ca_as_a_ca(pki, tmp_path):
    now = datetime.now(timezone.utc)
    rk, sk = _ec(), _ec()
    root = _cert("CN=V Root", rk, key_usage=KU_CA, not_before=now - timedelta(days=1),
                    not_after=now + timedelta(days=100))
    sub = _cert("CN=V Sub", sk, "CN=V Root", rk, key_usage=KU_CA, not_before=now - timedelta(days=1),
                   not_after=now + timedelta(days=50))
    no_sign = _cert("CN=V NoSign", _ec(), key_usage={"crl_sign": True})
    forged = _cert("CN=V Forged", _ec(), issuer_key=_ec(), key_usage=KU_CA)
    for name, cert in (("root.pem", root), ("sub.pem", sub), ("nosign.pem", no_sign), ("forged.pem", forged)):
        (tmp_path / name).write_bytes(cert.public_bytes(PEM))
    for prof, f in (("root", "root.pem"), ("sub", "sub.pem"), ("nosign", "nosign.pem"), ("forged", "forged.pem")):
        pki("ca-profile", "add", prof, "--revocation-check", "disable")
        pki("ca-certificate", "load", "--ca-profile", prof, "--filename", f)
    r = pki("ca-certificate", "verify", "--ca-profile", "sub")
    assert "CN=V Sub of ca-profile sub: verified (issued by CN=V Root (ca-profile root))" in r.stdout
    cases = [  # (profile, extra args, reason)
        ("nosign", (), "not-a-ca"),
        ("forged", (), "bad-signature"),
        ("sub", ("--at", (now + timedelta(days=60)).isoformat()), "expired"),
    ]
    for prof, extra, reason in cases:
        r = pki("ca-certificate", "verify", "--ca-profile", prof, *extra, ok=False)
        assert r.returncode == 1 and r.stderr.startswith(f"error: certificate rejected ({reason})"), (prof, r.stderr)
    pki("ca-profile", "delete", "root")
    r = pki("ca-certificate", "verify", "--ca-profile", "sub", ok=False)
    assert r.stderr.startswith("error: certificate rejected (untrusted)")
    # a peer certificate check (verify --filename) would refuse the root as an IKE end entity; this one is fine
    r = pki("ca-certificate", "verify", "--ca-profile", "nosign-typo", ok=False)
    assert "no ca-profile 'nosign-typo'" in r.stderr


def test_clear_all(pki, tmp_path):
    rk = _ec()
    root = _cert("CN=C Root", rk, key_usage=KU_CA)
    (tmp_path / "root.pem").write_bytes(root.public_bytes(PEM))
    for prof in ("a", "b", "c"):
        pki("ca-profile", "add", prof)
    for prof in ("a", "b"):
        pki("ca-certificate", "load", "--ca-profile", prof, "--filename", "root.pem")
    for cid in ("r1", "r2", "r3"):
        pki("generate-key-pair", "--certificate-id", cid, "--type", "ed25519")
    pki("generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1", "--filename", "r1.csr")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "r2", "--subject", "CN=r2")
    assert pki("clear", "ca-certificate", "--all").stdout == "ca-certificate: 2 cleared (a, b)\n"
    assert pki("clear", "ca-certificate", "--all").stdout == "ca-certificate: 0 cleared (none held)\n"
    assert pki("clear", "crl", "--all").stdout == "crl: 0 cleared (none held)\n"
    assert pki("clear", "certificate-request", "--all").stdout == "certificate-request: 1 cleared (r1)\n"
    assert pki("clear", "local-certificate", "--all").stdout == "local-certificate: 1 cleared (r2)\n"
    st = Store(tmp_path / "pki-store")
    assert [st.entry(i).has_key for i in st.local_ids()] == [True, True, True]
    r = pki("clear", "key-pair", "--all", "--certificate-id", "r1", ok=False)
    assert r.returncode == 1 and "not both" in r.stderr
    assert pki("clear", "key-pair", "--all").stdout == "key-pair: 3 cleared (r1, r2, r3)\n"
    assert st.local_ids() == [] and [p.name for p in st.profiles()] == ["a", "b", "c"]
    r = pki("clear", "crl", ok=False)
    assert r.returncode == 1 and "needs --ca-profile or --all" in r.stderr


def test_ca_profile_group_and_trusted_ca_group(pki, tmp_path):
    now = datetime.now(timezone.utc)
    keys = [_ec(), _ec(), _ec()]
    roots = [_cert(f"CN=Partner {i},O=P{i}", k, key_usage=KU_CA)
             for i, k in enumerate(keys)]
    (tmp_path / "bundle.pem").write_bytes(certificates_to_pem(roots))
    r = pki("ca-profile-group", "load", "--ca-group-name", "partners", "--file", "bundle.pem",
            "--revocation-check", "disable")
    assert r.stdout.startswith("ca-profile-group partners: 3 CA certificate(s) loaded")
    st = Store(tmp_path / "pki-store")
    names = sorted(p.name for p in st.profiles())
    assert len(names) == 3 and all(n.startswith("partners-") for n in names)
    # a peer of partner 2 verifies through the group's profile
    leaf = _cert("CN=gw.p2", _ec(), "CN=Partner 2,O=P2", keys[2], ca=False)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(PEM))
    assert pki("verify", "--filename", "leaf.pem").stdout.startswith("OK: CN=gw.p2 via ca-profile partners-")
    # reloading a smaller bundle (another order) keeps the survivors' names and drops the rest
    (tmp_path / "bundle2.pem").write_bytes(certificates_to_pem([roots[1], roots[0]]))
    pki("ca-profile-group", "load", "--ca-group-name", "partners", "--file", "bundle2.pem",
        "--revocation-check", "disable")
    assert sorted(p.name for p in st.profiles()) == [n for n in names if any(
        fingerprint(c, "sha256").replace(":", "")[:8] in n for c in roots[:2])]
    assert pki("verify", "--filename", "leaf.pem", ok=False).stderr.startswith("error: certificate rejected (untrusted)")
    # a bundle with a non-CA is refused whole
    (tmp_path / "bad.pem").write_bytes(certificates_to_pem([roots[2], leaf]))
    r = pki("ca-profile-group", "load", "--ca-group-name", "other", "--file", "bad.pem", ok=False)
    assert r.returncode == 1 and "is not a CA certificate" in r.stderr and len(st.profiles()) == 2
    # a trusted-ca-group names existing profiles
    pki("ca-profile", "add", "corp", "--revocation-check", "disable")
    pki("ca-certificate", "load", "--ca-profile", "corp", "--filename", "leaf.pem", ok=False)  # not a CA
    (tmp_path / "r2.pem").write_bytes(roots[2].public_bytes(PEM))
    pki("ca-certificate", "load", "--ca-profile", "corp", "--filename", "r2.pem")
    partner = min(p.name for p in st.profiles() if p.name != "corp")
    r = pki("trusted-ca-group", "set", "ike-peers", "--ca-profiles", "corp", partner)
    assert r.stdout.startswith("trusted-ca-group ike-peers: corp, partners-")
    r = pki("trusted-ca-group", "set", "x", "--ca-profiles", "nope", ok=False)
    assert "no ca-profile 'nope'" in r.stderr
    listing = pki("trusted-ca-group", "list").stdout
    assert "ca-profile-group (loaded) partners: " in listing and "trusted-ca-group ike-peers: corp, " in listing

    # IKE: trusted_ca_group = "ike-peers" trusts exactly those profiles
    from ike.config import parse_config
    from ike.core_config import Identity
    from ike.errors import ConfigError

    text = f"""
[pki]
store = "{tmp_path / 'pki-store'}"
[peers.p]
remote_addr = "192.0.2.2"
local_addr = "192.0.2.1"
auth = "psk"
psk = "0x00112233445566778899"
remote_auth = "pubkey"
trusted_ca_group = "ike-peers"
[peers.p.children.c]
local_ts = "10.1.0.0/16"
remote_ts = "10.2.0.0/16"
"""
    cfg = parse_config(text, base=tmp_path)
    (peer,) = cfg.core.peers
    assert set(peer.ca_certs) == {roots[2], *st.ca_certificates(partner)}
    peer.validator(leaf, [], now, Identity("dn", "CN=gw.p2"))
    with pytest.raises(ConfigError, match=r"peers.p.trusted_ca_group: no group 'nope' with a CA certificate"):
        parse_config(text.replace('"ike-peers"', '"nope"'), base=tmp_path)
    # deleting the loaded group takes its profiles along
    r = pki("ca-profile-group", "delete", "--ca-group-name", "partners")
    assert "with its 2 ca-profile(s)" in r.stdout and [p.name for p in st.profiles()] == ["corp"]
