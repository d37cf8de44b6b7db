"""CLI safety: ``ca serve`` needs an enrollment control, SAN policy, secrets from files, empty passphrase files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr, challenge_password, load_csr
from pki.fetch import http_get
from pki.scep.client import enroll, get_ca_certs
from tests.pki.conftest import run

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_without_challenge_or_approval(lab, capsys):
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R")[0] == 0
    rc, out, err = run(capsys, "ca", "--ca", "ca", "serve", "--port", str(_free_port()))
    assert rc == 1 and "--no-challenge" in err and "serving" not in err and err.count("\n") == 1
    (lab / "chal").write_text("x\n")
    rc, _, err = run(capsys, "ca", "--ca", "ca", "serve", "--challenge-file", "chal", "--no-challenge")
    assert rc == 1 and "contradicts" in err
    rc, _, err = run(capsys, "ca", "--ca", "ca", "serve", "--challenge", "a", "--challenge-file", "chal")
    assert rc == 1 and "not both" in err


def test_serve_on_busy_port_fails_before_saying_serving(lab, capsys):
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R")[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        rc, out, err = run(capsys, "ca", "--ca", "ca", "serve", "--port", str(s.getsockname()[1]), "--challenge", "x")
    assert rc == 1
    assert "serving" not in err and "cannot listen on 127.0.0.1 port" in err and "in use" in err


def test_no_challenge_warns_and_san_policy_filters(lab):
    CertificateAuthority.init(lab / "ca", "CN=Lab CA", key_type="rsa", key_size=2048).close()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pki", "ca", "--ca", "ca", "serve", "--port", str(port), "--no-challenge",
         "--allow-dns-suffix", "example.net", "--allow-ip-range", "192.0.2.0/24"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/scep"
    try:
        for _ in range(100):  # bounded: at most ~10 s
            try:
                http_get(url + "?operation=GetCACaps", timeout=1.0)
                break
            except Exception:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        key = rsa.generate_private_key(65537, 2048)
        sans = SubjectAltNames.build(dns=["www.google.com", "gw.example.net"], ip=["192.0.2.9", "198.51.100.1"])
        cert = enroll(url, key, build_csr(key, "CN=anyone,O=Evil", sans), get_ca_certs(url), retry_count=0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example.net"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.9"]
    assert "warning: --no-challenge" in err and f"serving CA ca on http://127.0.0.1:{port}/" in err
    # the policy was saved in the CA: the offline 'ca issue' path applies it too
    ca = CertificateAuthority.open(lab / "ca")
    c2 = ca.issue(build_csr(key, "CN=x", SubjectAltNames.build(dns=["evil.org", "a.example.net"])))
    ca.close()
    assert c2.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["a.example.net"]


def test_ca_init_san_policy_and_bad_range(lab, capsys):
    rc, _, err = run(capsys, "ca", "--ca", "bad", "init", "--subject", "CN=R", "--allow-ip-range", "10.0.0.0/33")
    assert rc == 1 and "invalid IP range" in err
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R", "--allow-dns-suffix", "corp.example")[0] == 0
    ca = CertificateAuthority.open(lab / "ca")
    key = rsa.generate_private_key(65537, 2048)
    cert = ca.issue(build_csr(key, "CN=r", SubjectAltNames.build(dns=["r.corp.example", "www.google.com"])))
    ca.close()
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["r.corp.example"]


def test_challenge_password_file(lab, capsys):
    S = ("--store", "st")
    (lab / "chal").write_text("s3cret with space \n")
    assert run(capsys, *S, "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")[0] == 0
    rc, _, err = run(capsys, *S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1",
                     "--challenge-password-file", "chal", "--filename", "r1.csr")
    assert rc == 0, err
    assert challenge_password(load_csr((lab / "r1.csr").read_bytes())) == "s3cret with space "
    (lab / "empty").write_text("\n")
    rc, _, err = run(capsys, *S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1",
                     "--challenge-password-file", "empty")
    assert rc == 1 and "empty" in err


def test_serve_challenge_file_is_enforced(lab):
    CertificateAuthority.init(lab / "ca", "CN=Lab CA", key_type="rsa", key_size=2048).close()
    (lab / "chal").write_text("file-secret\n")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pki", "ca", "--ca", "ca", "serve", "--port", str(port),
                             "--challenge-file", "chal"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/scep"
    try:
        for _ in range(100):  # bounded: at most ~10 s
            try:
                http_get(url + "?operation=GetCACaps", timeout=1.0)
                break
            except Exception:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        from pki.scep.errors import ScepFailure

        key = rsa.generate_private_key(65537, 2048)
        ca_certs = get_ca_certs(url)
        with pytest.raises(ScepFailure):
            enroll(url, key, build_csr(key, "CN=r1", challenge_password="wrong"), ca_certs, retry_count=0)
        cert = enroll(url, key, build_csr(key, "CN=r1", challenge_password="file-secret"), ca_certs, retry_count=0)
        assert cert.subject.rfc4514_string() == "CN=r1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "file-secret" not in err and "--no-challenge" not in err


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_passphrase_file_is_refused(lab, capsys, content):
    (lab / "pp").write_bytes(content)
    rc, _, err = run(capsys, "--store", "st", "--passphrase-file", "pp", "generate-key-pair", "--certificate-id", "r1",
                     "--type", "ecdsa")
    assert rc == 1 and "empty" in err and "unencrypted" in err
    assert not (lab / "st" / "local" / "r1").exists()


def test_passphrase_file_strips_line_ending_only(lab, capsys):
    (lab / "pp").write_bytes(b"pass phrase  \r\nsecond line\n")
    assert run(capsys, "--store", "st", "--passphrase-file", "pp", "generate-key-pair", "--certificate-id", "r1",
               "--type", "ecdsa")[0] == 0
    from pki.store import Store

    store = Store(lab / "st")
    store.private_key("r1", b"pass phrase  ")  # the blanks are part of it; CRLF is not
    with pytest.raises(Exception):
        store.private_key("r1", b"pass phrase")


def test_read_passphrase_file_rule(tmp_path):
    from pki.errors import PassphraseError, PkiError
    from pki.keys import read_passphrase_file

    for content, want in ((b"abc\n", b"abc"), (b"abc \t\r\nnext\n", b"abc \t"), (b"  x", b"  x")):
        (tmp_path / "p").write_bytes(content)
        assert read_passphrase_file(tmp_path / "p") == want
    (tmp_path / "p").write_bytes(b"\nsecond\n")
    with pytest.raises(PassphraseError, match="empty"):
        read_passphrase_file(tmp_path / "p")
    with pytest.raises(PkiError, match="no such file"):
        read_passphrase_file(tmp_path / "missing")


def test_library_service_without_challenge_logs_a_warning(tmp_path, caplog):
    import logging

    from pki.service import CaService

    CertificateAuthority.init(tmp_path / "ca", "CN=Quiet CA").close()
    with caplog.at_level(logging.WARNING, logger="pki.service"):
        svc = CaService(tmp_path / "ca")
        svc.stop()
    assert any("any client" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pki.service"):
        CaService(tmp_path / "ca", challenge="x").stop()
    assert not any("any client" in r.getMessage() for r in caplog.records)
