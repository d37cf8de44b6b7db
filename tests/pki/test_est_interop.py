"""EST as users deploy it: ``python -m pki ca serve --est-port`` as its own process, enrolled against by
strongSwan's ``pki --estca``/``pki --est`` (an independent EST client) and by espresso's own CLI, the results
checked by ``openssl verify -crl_check`` with the CRL the same server publishes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from tests.pki.http_helpers import wait_log
from tests.support import require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "est-interop-s3cret"
TIMEOUT = 120
DN = "C=CH, O=espresso, CN=moon.example.net"
#: strongSwan's pki --gen type, and its pki --req --type for that key
KEYS = {"rsa": (["--type", "rsa", "--size", "2048"], "rsa"), "p256": (["--type", "ecdsa", "--size", "256"], "ecdsa"),
        "p384": (["--type", "ecdsa", "--size", "384"], "ecdsa"), "ed25519": (["--type", "ed25519"], "priv")}


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("ESPRESSO_PKI_PASSPHRASE", "ESPRESSO_PKI_CA", "ESPRESSO_PKI_STORE"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(cwd: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "pki", *argv], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=TIMEOUT, check=False)
    assert not check or r.returncode == 0, f"pki {' '.join(argv)} -> {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


@dataclass
class Server:
    dir: Path
    port: int
    est_port: int
    proc: subprocess.Popen[bytes]

    @property
    def est(self) -> str:
        return f"https://127.0.0.1:{self.est_port}"

    def log(self) -> str:
        return (self.dir / "access.log").read_text() if (self.dir / "access.log").exists() else ""

    def wait_log(self, pattern: str) -> str:
        """The log once ``pattern`` is in it (bounded wait: a line is written after the answer went out)."""
        assert wait_log(self.log, pattern), f"{pattern!r} not in the access log:\n{self.log()}"
        return self.log()

    def crl_pem(self) -> Path:
        """The CRL as the server publishes it now (GET /crl), in PEM for openssl."""
        der = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/crl", timeout=30).read()
        out = self.dir / "crl.pem"
        out.write_bytes(x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))
        return out


def _start(base: Path, *extra: str) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    port, est_port = _free_port(), _free_port()
    cli(base, "ca", "--ca", "ca", "init", "--subject", "CN=EST Interop CA,O=espresso", "--key-type", "ecdsa",
        "--crl-url", f"http://127.0.0.1:{port}/crl")
    (base / "challenge").write_text(PASSWORD + "\n")
    os.chmod(base / "challenge", 0o600)
    with open(base / "serve.err", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "pki", "ca", "--ca", "ca", "serve", "--port", str(port),
                                 "--est-port", str(est_port), "--challenge-file", "challenge", "--retry-after", "1",
                                 "--log-file", "access.log", *extra], cwd=base, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    for _ in range(300):  # bounded: ~30 s on a loaded machine
        assert proc.poll() is None, (base / "serve.err").read_text()
        if "serving EST" in (base / "serve.err").read_text():
            return Server(base, port, est_port, proc)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("ca serve did not start")


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGINT)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=30)
    assert "Traceback" not in (server.dir / "serve.err").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = _start(tmp_path_factory.mktemp("est-server"))
    yield s
    _stop(s)
    assert s.proc.returncode == 0


def pki_tool(*argv: str, cwd: Path, check: bool = True, stdout=None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([require_tool("pki"), *argv], cwd=cwd, capture_output=stdout is None, stdout=stdout,
                       stderr=subprocess.PIPE if stdout is not None else None, text=True, timeout=TIMEOUT,
                       check=False)
    assert not check or r.returncode == 0, f"pki {' '.join(argv)} -> {r.returncode}: {r.stderr}"
    return r


def _req(cwd: Path, kind: str, name: str) -> None:
    with open(cwd / f"{name}.key", "w") as f:
        pki_tool("--gen", *KEYS[kind][0], "--outform", "pem", cwd=cwd, stdout=f)
    extra = [] if kind == "ed25519" else ["--digest", "sha256"]
    with open(cwd / f"{name}.csr", "w") as f:
        pki_tool("--req", "--in", f"{name}.key", "--type", KEYS[kind][1], "--dn", DN, "--san", "moon.example.net",
                 *extra, "--outform", "der", cwd=cwd, stdout=f)


def openssl_verify(server: Server, *certs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("openssl"), "verify", "-crl_check", "-CAfile", str(server.dir / "ca/ca.pem"),
                           "-CRLfile", str(server.crl_pem()), *map(str, certs)], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


# == strongSwan's EST client ===================================================================================
@pytest.mark.parametrize("kind", list(KEYS))
def test_strongswan_enrolls_and_re_enrolls_with_its_certificate(server, tmp_path, kind):
    cwd = tmp_path
    pki_tool("--estca", "--url", server.est, "--cacert", str(server.dir / "ca/ca.pem"), "--caout", "estca.pem",
             "--outform", "pem", "--force", cwd=cwd)
    assert x509.load_pem_x509_certificate((cwd / "estca.pem").read_bytes()) == \
        x509.load_pem_x509_certificate((server.dir / "ca/ca.pem").read_bytes())
    _req(cwd, kind, "moon")
    with open(cwd / "moon.pem", "w") as f:
        pki_tool("--est", "--url", server.est, "--cacert", str(server.dir / "ca/ca.pem"), "--in", "moon.csr",
                 "--userpass", f"moon:{PASSWORD}", "--outform", "pem", cwd=cwd, stdout=f)
    first = x509.load_pem_x509_certificate((cwd / "moon.pem").read_bytes())
    assert first.subject.rfc4514_string() == "CN=moon.example.net,O=espresso,C=CH"
    # re-enrollment: a new key, the current certificate as TLS client credential, no password
    _req(cwd, kind, "moon2")
    with open(cwd / "moon2.pem", "w") as f:
        pki_tool("--est", "--url", server.est, "--cacert", str(server.dir / "ca/ca.pem"), "--in", "moon2.csr",
                 "--cert", "moon.pem", "--key", "moon.key", "--outform", "pem", cwd=cwd, stdout=f)
    second = x509.load_pem_x509_certificate((cwd / "moon2.pem").read_bytes())
    assert second.subject == first.subject and second.serial_number != first.serial_number
    log = server.wait_log(f"auth=cert outcome=issued serial={second.serial_number:x}")
    assert "op=est.simpleenroll tid=" in log and f"auth=basic outcome=issued serial={first.serial_number:x}" in log
    assert "op=est.simplereenroll tid=" in log and f"auth=cert outcome=issued serial={second.serial_number:x}" in log
    assert PASSWORD not in log
    ok = openssl_verify(server, cwd / "moon.pem", cwd / "moon2.pem")
    assert ok.returncode == 0 and ok.stdout.count(": OK") == 2, ok.stdout + ok.stderr
    cli(server.dir, "ca", "--ca", "ca", "revoke", "--serial", f"{first.serial_number:x}", "--reason", "superseded")
    revoked = openssl_verify(server, cwd / "moon.pem")
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    assert openssl_verify(server, cwd / "moon2.pem").returncode == 0


def test_strongswan_with_a_wrong_password_gets_401(server, tmp_path):
    _req(tmp_path, "p256", "bad")
    r = pki_tool("--est", "--url", server.est, "--cacert", str(server.dir / "ca/ca.pem"), "--in", "bad.csr",
                 "--userpass", "moon:guess", cwd=tmp_path, check=False)
    assert r.returncode != 0 and "HTTP 401" in r.stderr
    server.wait_log(r"op=est.simpleenroll outcome=refused reason=\"wrong user name or password\" http=401")


def test_strongswan_with_a_certificate_of_another_ca_is_refused(server, tmp_path):
    cwd = tmp_path
    with open(cwd / "other.key", "w") as f:
        pki_tool("--gen", "--type", "ecdsa", "--outform", "pem", cwd=cwd, stdout=f)
    with open(cwd / "other.pem", "w") as f:
        pki_tool("--self", "--in", "other.key", "--type", "ecdsa", "--dn", DN, "--outform", "pem", cwd=cwd, stdout=f)
    _req(cwd, "p256", "moon")
    r = pki_tool("--est", "--url", server.est, "--cacert", str(server.dir / "ca/ca.pem"), "--in", "moon.csr",
                 "--cert", "other.pem", "--key", "other.key", cwd=cwd, check=False)
    assert r.returncode != 0
    server.wait_log(r"op=est outcome=refused reason=\"TLS handshake failed: [A-Z_]+")


def test_strongswan_waits_while_pending_and_gets_the_certificate_after_ca_approve(tmp_path):
    require_tool("pki")
    server = _start(tmp_path / "manual", "--manual-approval")
    try:
        _req(tmp_path, "p384", "moon")
        out = open(tmp_path / "moon.pem", "w")  # noqa: SIM115 - closed below, after the child is done
        proc = subprocess.Popen([require_tool("pki"), "--est", "--url", server.est, "--cacert",
                                 str(server.dir / "ca/ca.pem"), "--in", "moon.csr", "--userpass", f"moon:{PASSWORD}",
                                 "--interval", "1", "--maxpolltime", "90", "--outform", "pem"], cwd=tmp_path,
                                stdout=out, stderr=subprocess.PIPE, text=True)
        try:
            tid = None
            for _ in range(300):  # bounded: ~30 s
                pending = cli(server.dir, "ca", "--ca", "ca", "pending").stdout.split()
                if pending:
                    tid = pending[0]
                    break
                time.sleep(0.1)
            assert tid and tid.startswith("est-")
            server.wait_log(r"outcome=pending.* http=202")
            cli(server.dir, "ca", "--ca", "ca", "approve", tid)
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
            out.close()
        assert proc.returncode == 0, err
        assert "EST request pending" in err
        cert = x509.load_pem_x509_certificate((tmp_path / "moon.pem").read_bytes())
        server.wait_log(f"tid={tid} auth=basic outcome=issued serial={cert.serial_number:x}")
        assert openssl_verify(server, tmp_path / "moon.pem").returncode == 0
    finally:
        _stop(server)


# == espresso's own EST client, the CLI as a router runs it ====================================================
@pytest.mark.parametrize(("kind", "size"), [("ed25519", None), ("ecdsa", "384"), ("rsa", "2048")])
def test_the_espresso_router_enrolls_and_auto_re_enrolls_over_est(server, tmp_path, kind, size):
    require_tool("openssl")
    r = tmp_path
    (r / "pw").write_text(PASSWORD + "\n")
    os.chmod(r / "pw", 0o600)
    cli(r, "--store", "r1", "generate-key-pair", "--certificate-id", "r1", "--type", kind,
        *(["--size", size] if size else []))
    cli(r, "--store", "r1", "ca-profile", "add", "corp", "--enrollment-url", f"{server.est}/.well-known/est",
        "--protocol", "est", "--retry", "2", "--retry-interval", "1")
    out = cli(r, "--store", "r1", "ca-certificate", "enroll", "--ca-profile", "corp", "--yes").stdout
    ca = x509.load_pem_x509_certificate((server.dir / "ca/ca.pem").read_bytes())
    assert ":".join(f"{b:02x}" for b in ca.fingerprint(hashes.SHA256())) in out
    cli(r, "--store", "r1", "local-certificate", "enroll", "--certificate-id", "r1", "--ca-profile", "corp",
        "--subject", "CN=r1,O=espresso", "--domain-name", "r1.example.net", "--challenge-password-file", "pw")
    first = r / "r1" / "local" / "r1" / "cert.pem"
    serial1 = x509.load_pem_x509_certificate(first.read_bytes()).serial_number
    assert openssl_verify(server, first).returncode == 0
    # auto-re-enrollment: with the current certificate as TLS client credential and a new key pair
    cli(r, "--store", "r1", "auto-re-enrollment", "set", "--certificate-id", "r1", "--ca-profile", "corp",
        "--re-enroll-trigger-time-percentage", "1", "--re-generate-keypair")
    run = cli(r, "--store", "r1", "auto-re-enrollment", "run", "--at",
              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7 * 86400))).stdout
    assert "Re-enrolled r1" in run and "new key pair" in run
    second = x509.load_pem_x509_certificate((r / "r1" / "local" / "r1" / "cert.pem").read_bytes())
    assert second.serial_number != serial1
    server.wait_log(f"auth=cert outcome=issued serial={second.serial_number:x}")
    assert openssl_verify(server, r / "r1" / "local" / "r1" / "cert.pem").returncode == 0
