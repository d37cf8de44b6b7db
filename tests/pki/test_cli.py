"""``python -m pki``: the JUNOS-named router verbs and the CA verbs, end to end on temporary directories."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pki.conftest import run

REPO = Path(__file__).resolve().parents[2]


def test_manual_enrollment_flow(lab, capsys):
    S = ("--store", "st")
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=Lab Root,O=espresso", "--key-type", "ecdsa",
               "--crl-url", "http://127.0.0.1:9/crl")[0] == 0
    rc, out, _ = run(capsys, *S, "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa", "--size", "384")
    assert rc == 0 and "384 bits" in out
    assert (lab / "st" / "local" / "r1" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert run(capsys, *S, "ca-profile", "add", "lab", "--revocation-check", "crl")[0] == 0
    rc, out, _ = run(capsys, *S, "ca-certificate", "load", "--ca-profile", "lab", "--filename", "ca/ca.pem")
    assert rc == 0 and "Fingerprint" in out
    assert run(capsys, *S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1,O=espresso",
               "--domain-name", "r1.example.net", "--ip-address", "192.0.2.1", "--email", "ops@example.net",
               "--filename", "r1.csr")[0] == 0
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "issue", "--csr", "r1.csr", "--out", "r1.pem", "--profile", "ipsec-ike")
    assert rc == 0
    serial = out.split("serial ")[1].split()[0]
    assert run(capsys, *S, "local-certificate", "load", "--certificate-id", "r1", "--filename", "r1.pem")[0] == 0
    rc, out, _ = run(capsys, *S, "show", "local-certificate", "--detail")
    assert rc == 0
    for needle in ("Certificate identifier: r1", "Issued to: CN=r1,O=espresso", f"Serial number: {serial}",
                   "ECDSA (384 bits", "DNS:r1.example.net", "IP:192.0.2.1", "email:ops@example.net", "(sha256)",
                   "Status: valid", "ipsecIKE", "Distribution CRL: http://127.0.0.1:9/crl"):
        assert needle in out, needle
    rc, out, _ = run(capsys, *S, "verify", "--certificate-id", "r1", "--offline")
    assert rc == 1  # the profile checks CRLs and none is loaded yet: fail closed
    rc, out, _ = run(capsys, *S, "show", "certificate-request", "--detail")
    assert "Signature: valid" in out
    # CRL: revoke, export, load into the store, verify refuses
    assert run(capsys, *S, "verify", "--filename", "r1.pem", "--offline", "--identity", "fqdn:r1.example.net")[0] == 1
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "crl", "--out", "ca.crl")
    assert rc == 0
    assert run(capsys, *S, "crl", "load", "--ca-profile", "lab", "--filename", "ca.crl")[0] == 0
    rc, out, _ = run(capsys, *S, "verify", "--filename", "r1.pem", "--offline", "--identity", "fqdn:r1.example.net")
    assert rc == 0 and "revocation good" in out and "DNS:r1.example.net" in out
    assert run(capsys, *S, "verify", "--certificate-id", "r1", "--offline")[0] == 0
    assert run(capsys, "ca", "--ca", "ca", "revoke", "--serial", serial, "--reason", "key-compromise")[0] == 0
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "list")
    assert f"{serial}  revoked" in out and "key_compromise" in out
    run(capsys, "ca", "--ca", "ca", "crl", "--out", "ca.crl")
    assert run(capsys, *S, "crl", "load", "--ca-profile", "lab", "--filename", "ca.crl")[0] == 0
    rc, out, err = run(capsys, *S, "verify", "--filename", "r1.pem", "--offline")
    assert rc == 1 and err.startswith("error: certificate rejected (revoked)")
    rc, out, _ = run(capsys, *S, "show", "crl", "--detail")
    assert f"Serial {serial} revoked" in out
    # clear
    assert run(capsys, *S, "clear", "crl", "--ca-profile", "lab")[0] == 0
    assert run(capsys, *S, "clear", "local-certificate", "--certificate-id", "r1")[0] == 0
    assert "key pair only" in run(capsys, *S, "show", "local-certificate")[1]  # the key pair is still there
    assert run(capsys, *S, "clear", "key-pair", "--certificate-id", "r1")[0] == 0
    assert run(capsys, *S, "show", "local-certificate")[1] == ""
    assert run(capsys, *S, "clear", "ca-certificate", "--ca-profile", "lab")[0] == 0


@pytest.mark.parametrize("argv,needle", [
    (["--store", "st", "generate-key-pair", "--certificate-id", "x", "--type", "rsa", "--size", "1024"], "not supported"),
    (["--store", "st", "local-certificate", "load", "--certificate-id", "x", "--filename", "missing.pem"], "no such file"),
    (["--store", "st", "ca-certificate", "load", "--ca-profile", "nope", "--filename", "junk"], "no ca-profile 'nope'"),
    (["ca", "--ca", "nothing", "issue", "--csr", "x.csr"], "not a CA directory"),
    (["ca", "--ca", "nothing", "list"], "not a CA directory"),
    (["--store", "st", "show", "local-certificate", "--certificate-id", "ghost"], "no certificate-id"),
])
def test_user_errors_are_one_line(lab, capsys, argv, needle):
    (lab / "junk").write_bytes(b"\x00garbage")
    rc, out, err = run(capsys, *argv)
    assert rc == 1 and err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_wrong_passphrase_and_no_traceback_in_subprocess(lab):
    (lab / "pw").write_text("correct horse\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "pki", "--store", "st"]
    r = subprocess.run(base + ["--passphrase-file", "pw", "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (lab / "bad").write_text("battery staple\n")
    r = subprocess.run(base + ["--passphrase-file", "bad", "generate-certificate-request", "--certificate-id", "r1",
                               "--subject", "CN=r1"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "error: key pair r1: wrong passphrase"
    r = subprocess.run(base + ["generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "passphrase is needed" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["frobnicate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2


def test_auto_reenrollment_set_and_run_without_due(lab, capsys):
    S = ("--store", "st")
    run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R")
    run(capsys, *S, "ca-profile", "add", "lab", "--enrollment-url", "http://127.0.0.1:9/scep")
    run(capsys, *S, "ca-certificate", "load", "--ca-profile", "lab", "--filename", "ca/ca.pem")
    run(capsys, *S, "generate-key-pair", "--certificate-id", "r1", "--type", "rsa")
    run(capsys, *S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1", "--filename", "r1.csr")
    run(capsys, "ca", "--ca", "ca", "issue", "--csr", "r1.csr", "--out", "r1.pem", "--days", "10")
    run(capsys, *S, "local-certificate", "load", "--certificate-id", "r1", "--filename", "r1.pem")
    rc, out, _ = run(capsys, *S, "auto-re-enrollment", "set", "--certificate-id", "r1", "--ca-profile", "lab",
                     "--re-enroll-trigger-time-percentage", "60", "--re-generate-keypair")
    assert rc == 0
    rc, out, _ = run(capsys, *S, "auto-re-enrollment", "run")
    assert rc == 0 and "Next re-enrollment due" in out
    rc, out, _ = run(capsys, *S, "show", "local-certificate")
    assert "Auto-re-enrollment: at 60%" in out


def test_intermediate_ca_and_serve(lab, capsys):
    """``ca init --parent`` makes an intermediate; ``ca serve`` answers SCEP and serves the CRL that
    ``crl download`` loads into the store."""
    import socket
    import time

    from pki.fetch import http_get

    assert run(capsys, "ca", "--ca", "root", "init", "--subject", "CN=Root", "--path-length", "1")[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert run(capsys, "ca", "--ca", "sub", "init", "--subject", "CN=Sub", "--parent", "root", "--key-type", "rsa",
               "--path-length", "0", "--crl-url", f"{url}/crl")[0] == 0
    assert run(capsys, "ca", "--ca", "root", "list")[1].count("CN=Sub") == 1
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pki", "ca", "--ca", "sub", "serve", "--port", str(port),
                             "--challenge", "x"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        caps = b""
        for _ in range(100):  # bounded: at most ~10 s
            try:
                caps = http_get(f"{url}/scep?operation=GetCACaps", timeout=1.0)
                break
            except Exception:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert b"POSTPKIOperation" in caps or b"SHA-256" in caps, proc.stderr.read1() if proc.poll() is not None else caps
        S = ("--store", "st")
        assert run(capsys, *S, "ca-profile", "add", "lab", "--enrollment-url", f"{url}/scep", "--crl-url",
                   f"{url}/crl")[0] == 0
        rc, out, err = run(capsys, *S, "ca-certificate", "enroll", "--ca-profile", "lab")  # stdin: no terminal
        assert rc == 1 and "stdin is not a terminal" in err and "--yes" in err
        rc, out, _ = run(capsys, *S, "ca-certificate", "enroll", "--ca-profile", "lab", "--yes")
        assert rc == 0 and "CN=Sub" in out and "out of band" in out
        rc, out, err = run(capsys, *S, "crl", "download", "--ca-profile", "lab")
        assert rc == 0, err
        assert "0 revoked" in out
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_directory_options_before_or_after_the_verb(lab, capsys):
    assert run(capsys, "ca", "init", "--ca", "ca1", "--subject", "CN=One")[0] == 0
    assert run(capsys, "ca", "--ca", "ca2", "init", "--subject", "CN=Two")[0] == 0
    assert (lab / "ca1" / "ca.pem").exists() and (lab / "ca2" / "ca.pem").exists()
    assert run(capsys, "generate-key-pair", "--store", "s1", "--certificate-id", "a", "--type", "ed25519")[0] == 0
    assert run(capsys, "--store", "s2", "generate-key-pair", "--certificate-id", "b", "--type", "ed25519")[0] == 0
    assert (lab / "s1" / "local" / "a").is_symlink() and (lab / "s2" / "local" / "b").is_symlink()
