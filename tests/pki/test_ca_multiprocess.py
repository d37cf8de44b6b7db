"""One CA directory, several processes, as users run it: ``ca serve`` in the background and ``ca ...`` verbs
(list, issue, revoke, pending, approve, reject) from a shell beside it, sometimes a second server too.

Every server here is ``python -m pki ca serve`` in its own process on its own loopback port, and every verb is
``python -m pki ca ...`` in another; the test process is only a SCEP/OCSP/CRL client. What is checked is what a
user would see: certificates the server issued are listed and revocable, a CLI revocation is in the very next
OCSP answer and CRL of the running server, ``ca approve`` reaches the client polling for it, and a stop (SIGINT,
SIGTERM, SIGKILL) of the server or of a verb loses nothing that was committed. Each test ends with SQLite's
``integrity_check`` and a comparison of the database with everything the test was told was done.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.db import CaDatabase
from pki.errors import CaError
from pki.fetch import http_get, http_post
from pki.ocsp import OcspCertStatus, build_request, verify_response
from pki.scep import client as scep
from pki.scep.errors import ScepFailure

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: Seconds any one child process may take (the machine is shared and slow; nothing here waits on purpose).
CHILD_TIMEOUT = 90


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)
    env.pop("ESPRESSO_PKI_CA", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ca_cli(ca_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m pki ca --ca DIR ...`` as its own process, which must succeed."""
    r = subprocess.run([sys.executable, "-m", "pki", "ca", "--ca", str(ca_dir), *argv], env=_env(),
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert r.returncode == 0, f"ca {' '.join(argv)}: rc {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def ca_list(ca_dir: Path) -> dict[int, str]:
    """``ca list`` parsed: serial -> status, without the EST service certificate ``ca init`` issued."""
    out = ca_cli(ca_dir, "list").stdout
    listed = {int(line.split()[0], 16): line.split()[1] for line in out.splitlines() if line.strip()}
    return {k: v for k, v in listed.items() if k != _service_serial(ca_dir)}


def _service_serial(ca_dir: Path) -> int | None:
    pem = ca_dir / "est.pem"
    return x509.load_pem_x509_certificates(pem.read_bytes())[0].serial_number if pem.exists() else None


class Server:
    """``python -m pki ca --ca DIR serve`` on a free loopback port, its stderr kept in a file."""

    def __init__(self, ca_dir: Path, *options: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(ca_dir.parent / f"serve-{self.port}.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "ca", "--ca", str(ca_dir), "serve", "--port", str(self.port), *options],
            env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        for _ in range(300):  # bounded: at most ~30 s on a loaded machine
            if self.proc.poll() is not None:
                break
            try:
                if b"SCEPStandard" in http_get(f"{self.url}/scep?operation=GetCACaps", timeout=1.0):
                    return
            except Exception:
                time.sleep(0.1)
        log = self.log()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()
        raise AssertionError(f"ca serve did not come up: {log}")

    def log(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(f"ca serve ignored signal {sig}") from None
        rc = self.proc.returncode
        log = self.log()
        self._log.close()
        assert "Traceback" not in log, log
        return rc


@pytest.fixture
def servers():
    """Servers started by a test; any still running at its end are killed."""
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=30)
        if not s._log.closed:
            s._log.close()


def _serve(servers: list[Server], ca_dir: Path, *options: str) -> Server:
    s = Server(ca_dir, *(options or ("--no-challenge",)))
    servers.append(s)
    return s


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    ca_cli(d, "init", "--subject", "CN=Shared CA,O=espresso", "--key-type", "rsa")
    return d


def _ca_cert(ca_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())



def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def enroll(server: Server, ca_cert: x509.Certificate, cn: str, dns: tuple[str, ...] = (),
           **kw: float) -> x509.Certificate:
    """A router's SCEP enrollment against ``server`` (the project's client)."""
    key = _rsa_key()
    csr = build_csr(key, f"CN={cn},O=espresso", SubjectAltNames.build(dns=list(dns)) if dns else None)
    kw.setdefault("retry_count", 0)
    return scep.enroll(f"{server.url}/scep", key, csr, [ca_cert], timeout=30, **kw)


def ocsp_status(server: Server, cert: x509.Certificate, ca_cert: x509.Certificate) -> OcspCertStatus:
    nonce = os.urandom(16)
    der = http_post(f"{server.url}/ocsp", build_request(cert, ca_cert, nonce=nonce), "application/ocsp-request",
                    timeout=30)
    return verify_response(der, cert, ca_cert, datetime.now(timezone.utc), nonce=nonce).status


def crl_serials(server: Server, ca_cert: x509.Certificate) -> set[int]:
    crl = x509.load_der_x509_crl(http_get(f"{server.url}/crl", timeout=30))
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    return {r.serial_number for r in crl}


def cli_issue(ca_dir: Path, cn: str) -> int:
    """``ca issue`` from a CSR file; the serial it reports."""
    key = _rsa_key()
    csr_file = ca_dir.parent / f"{cn}.csr"
    csr_file.write_bytes(build_csr(key, f"CN={cn},O=espresso").public_bytes(serialization.Encoding.PEM))
    out = ca_cli(ca_dir, "issue", "--csr", str(csr_file), "--out", str(ca_dir.parent / f"{cn}.pem")).stdout
    return int(out.split("serial ")[1].split()[0], 16)


def check_db(ca_dir: Path, expected: dict[int, str]) -> None:
    """No process left: the file is sound and holds exactly what the test was told was committed."""
    con = sqlite3.connect(ca_dir / "ca.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(con.execute("SELECT serial, status FROM certificates").fetchall())
    finally:
        con.close()
    service = _service_serial(ca_dir)  # the EST service certificate ca init issued
    assert {int(s, 16): st for s, st in rows.items() if int(s, 16) != service} == expected
    assert ca_list(ca_dir) == expected


def test_certificates_the_server_issues_are_listed_and_revocable_from_the_cli(ca_dir, servers):
    ca_cert = _ca_cert(ca_dir)
    srv = _serve(servers, ca_dir)
    expected: dict[int, str] = {}
    for i in range(3):
        cert = enroll(srv, ca_cert, f"r{i}")
        expected[cert.serial_number] = "valid"
        assert ca_list(ca_dir) == expected  # each verb opens and closes the database beside the server
    for serial in list(expected):
        ca_cli(ca_dir, "revoke", "--serial", f"{serial:x}", "--reason", "superseded")
        expected[serial] = "revoked"
        assert ca_list(ca_dir) == expected
    assert srv.stop(signal.SIGINT) == 0
    check_db(ca_dir, expected)


def test_a_cli_revocation_is_in_the_next_ocsp_answer_and_crl_of_the_running_server(ca_dir, servers):
    ca_cert = _ca_cert(ca_dir)
    srv = _serve(servers, ca_dir)
    a, b = enroll(srv, ca_cert, "a"), enroll(srv, ca_cert, "b")
    assert ocsp_status(srv, a, ca_cert) is OcspCertStatus.GOOD
    assert crl_serials(srv, ca_cert) == set()
    ca_cli(ca_dir, "revoke", "--serial", f"{a.serial_number:x}", "--reason", "key-compromise")
    assert ocsp_status(srv, a, ca_cert) is OcspCertStatus.REVOKED
    assert ocsp_status(srv, b, ca_cert) is OcspCertStatus.GOOD
    assert crl_serials(srv, ca_cert) == {a.serial_number}
    c = enroll(srv, ca_cert, "c")  # the server still writes where the verbs read
    ca_cli(ca_dir, "revoke", "--serial", f"{c.serial_number:x}")
    assert ocsp_status(srv, c, ca_cert) is OcspCertStatus.REVOKED
    assert crl_serials(srv, ca_cert) == {a.serial_number, c.serial_number}
    assert srv.stop(signal.SIGINT) == 0
    check_db(ca_dir, {a.serial_number: "revoked", b.serial_number: "valid", c.serial_number: "revoked"})


def _poll_in_thread(srv: Server, ca_cert: x509.Certificate, cn: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["cert"] = enroll(srv, ca_cert, cn, retry_count=150, retry_interval=0.2)
        except Exception as exc:  # reported by the test
            result["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, result


def _one_pending(ca_dir: Path, cn: str) -> str:
    for _ in range(150):  # bounded: the request reaches the server within a few seconds
        lines = [ln for ln in ca_cli(ca_dir, "pending").stdout.splitlines() if f"CN={cn}," in ln]
        if lines:
            assert len(lines) == 1
            return lines[0].split()[0]
        time.sleep(0.2)
    raise AssertionError(f"no pending request for {cn}")


def test_ca_approve_and_reject_reach_the_client_polling_the_running_server(ca_dir, servers):
    ca_cert = _ca_cert(ca_dir)
    srv = _serve(servers, ca_dir, "--manual-approval")
    th, result = _poll_in_thread(srv, ca_cert, "approved")
    tid = _one_pending(ca_dir, "approved")
    out = ca_cli(ca_dir, "approve", tid).stdout
    th.join(timeout=60)
    assert not th.is_alive() and "cert" in result, result
    cert = result["cert"]
    assert f"serial {cert.serial_number:x}" in out
    assert ca_list(ca_dir) == {cert.serial_number: "valid"}

    th, result = _poll_in_thread(srv, ca_cert, "refused")
    tid = _one_pending(ca_dir, "refused")
    ca_cli(ca_dir, "reject", tid, "--reason", "unknown router")
    th.join(timeout=60)
    assert not th.is_alive() and isinstance(result.get("error"), ScepFailure), result
    assert "unknown router" in str(result["error"])
    assert ca_cli(ca_dir, "pending").stdout.strip() == ""
    assert srv.stop(signal.SIGINT) == 0
    check_db(ca_dir, {cert.serial_number: "valid"})


_HOLD = """
import sys, time
from datetime import datetime, timezone
from cryptography import x509
from pki.ca import CertificateAuthority

ca = CertificateAuthority.open(sys.argv[1])
serial = int(sys.argv[2], 16)
if sys.argv[3] == "committed":  # committed, then stopped before it closes anything
    ca.revoke(serial, "superseded")
    print("holding", flush=True)
    time.sleep(120)
with ca.db.transaction() as conn:  # stopped inside an open write transaction
    ca.db.mark_revoked(conn, serial, datetime.now(timezone.utc), x509.ReasonFlags.superseded)
    print("holding", flush=True)
    time.sleep(120)
"""


def _held_cli(ca_dir: Path, serial: int, how: str) -> subprocess.Popen[str]:
    """A verb's process, stopped while it holds the database open (after a commit, or inside a transaction)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(ca_dir), f"{serial:x}", how], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the child: it prints once, or exits
    assert line.strip() == "holding", proc.stderr.read() if proc.poll() is not None else line
    return proc


def _kill(proc: subprocess.Popen[str], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=30)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_stopping_the_server_or_a_verb_loses_nothing_committed(ca_dir, servers, sig):
    ca_cert = _ca_cert(ca_dir)
    srv = _serve(servers, ca_dir)
    a = enroll(srv, ca_cert, "a")
    expected = {a.serial_number: "valid"}
    assert ca_list(ca_dir) == expected
    b = enroll(srv, ca_cert, "b")  # written by the server after a verb closed the database
    ca_cli(ca_dir, "revoke", "--serial", f"{a.serial_number:x}")
    c = cli_issue(ca_dir, "c")
    d = enroll(srv, ca_cert, "d")
    expected.update({a.serial_number: "revoked", b.serial_number: "valid", c: "valid", d.serial_number: "valid"})

    # a verb stopped after its commit keeps it; one stopped inside its transaction leaves no trace and no lock
    _kill(_held_cli(ca_dir, b.serial_number, "committed"), sig)
    expected[b.serial_number] = "revoked"
    assert ocsp_status(srv, b, ca_cert) is OcspCertStatus.REVOKED
    _kill(_held_cli(ca_dir, d.serial_number, "uncommitted"), sig)
    assert ocsp_status(srv, d, ca_cert) is OcspCertStatus.GOOD
    e = enroll(srv, ca_cert, "e")  # the server can still write
    expected[e.serial_number] = "valid"
    assert ca_list(ca_dir) == expected

    srv.stop(sig)
    check_db(ca_dir, expected)
    again = _serve(servers, ca_dir)  # a restarted server sees the same state
    assert ocsp_status(again, a, ca_cert) is OcspCertStatus.REVOKED
    assert ocsp_status(again, e, ca_cert) is OcspCertStatus.GOOD
    assert crl_serials(again, ca_cert) == {a.serial_number, b.serial_number}
    assert again.stop(signal.SIGINT) == 0
    check_db(ca_dir, expected)


def test_a_writer_holding_the_database_blocks_no_reader_and_gives_writers_a_clear_error(ca_dir, servers):
    """A verb stuck inside its transaction (stopped, or an operator's sqlite3 shell): the server keeps answering
    OCSP and ``ca list`` works, since readers never wait for a writer; a writer waits for the busy timeout, then
    gets a :class:`CaError` that says why (the CLI prints it as one line), not a bare sqlite3 exception."""
    ca_cert = _ca_cert(ca_dir)
    srv = _serve(servers, ca_dir)
    a = enroll(srv, ca_cert, "a")
    held = _held_cli(ca_dir, a.serial_number, "uncommitted")
    try:
        assert ocsp_status(srv, a, ca_cert) is OcspCertStatus.GOOD
        assert ca_list(ca_dir) == {a.serial_number: "valid"}
        db = CaDatabase(ca_dir / "ca.db", busy_timeout=0.5)
        try:
            with pytest.raises(CaError, match="busy"), db.transaction():
                pass
        finally:
            db.close()
    finally:
        _kill(held, signal.SIGKILL)
    ca_cli(ca_dir, "revoke", "--serial", f"{a.serial_number:x}")  # the lock went with the process
    assert ocsp_status(srv, a, ca_cert) is OcspCertStatus.REVOKED
    assert srv.stop(signal.SIGINT) == 0
    check_db(ca_dir, {a.serial_number: "revoked"})


def test_two_servers_and_the_cli_on_one_ca(ca_dir, servers):
    """Writers in three processes at once wait for each other (busy timeout) instead of failing or overwriting."""
    ca_cert = _ca_cert(ca_dir)
    one, two = _serve(servers, ca_dir), _serve(servers, ca_dir)
    issued: list[x509.Certificate] = []
    errors: list[BaseException] = []

    def enroll_many(srv: Server, prefix: str) -> None:
        try:
            for i in range(3):
                issued.append(enroll(srv, ca_cert, f"{prefix}{i}"))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=enroll_many, args=(srv, name), daemon=True)
               for srv, name in ((one, "one"), (two, "two"))]
    for th in threads:
        th.start()
    from_cli = [cli_issue(ca_dir, f"cli{i}") for i in range(2)]
    for th in threads:
        th.join(timeout=120)
    assert not errors and not any(th.is_alive() for th in threads) and len(issued) == 6, errors
    expected = {c.serial_number: "valid" for c in issued} | dict.fromkeys(from_cli, "valid")
    assert ca_list(ca_dir) == expected

    by_one = next(c for c in issued if "one" in c.subject.rfc4514_string())
    ca_cli(ca_dir, "revoke", "--serial", f"{by_one.serial_number:x}")
    expected[by_one.serial_number] = "revoked"
    for srv in (one, two):
        assert ocsp_status(srv, by_one, ca_cert) is OcspCertStatus.REVOKED
        assert crl_serials(srv, ca_cert) == {by_one.serial_number}
    assert one.stop(signal.SIGINT) == 0
    late = enroll(two, ca_cert, "late")
    expected[late.serial_number] = "valid"
    two.stop(signal.SIGTERM)
    check_db(ca_dir, expected)


def test_a_san_policy_saved_by_another_process_applies_to_the_running_server_at_once(ca_dir, servers):
    """``ca serve --allow-dns-suffix`` saves the policy in the CA: a server already running uses it from its
    next request on, not the configuration it read when it started."""
    ca_cert = _ca_cert(ca_dir)
    names = ("r1.good.example", "r1.bad.example")
    one = _serve(servers, ca_dir)
    before = enroll(one, ca_cert, "before", dns=names)
    assert sorted(before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName)) == sorted(names)
    two = _serve(servers, ca_dir, "--no-challenge", "--allow-dns-suffix", "good.example")
    after = enroll(one, ca_cert, "after", dns=names)
    assert after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["r1.good.example"]
    assert two.stop(signal.SIGINT) == 0 and one.stop(signal.SIGINT) == 0
    check_db(ca_dir, {before.serial_number: "valid", after.serial_number: "valid"})
