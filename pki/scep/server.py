"""The CA side of SCEP: turns a PKIOperation body into the CertRep to send back.

:class:`ScepResponder` holds no HTTP (``pki.service`` moves the bytes). Every request it can attribute to a
transaction gets a signed CertRep: SUCCESS with the certificate, PENDING while an operator has not approved
it, or FAILURE with the failInfo RFC 8894 prescribes (badAlg for an algorithm or key the CA will not use,
badMessageCheck for a bad signature or undecryptable envelope, badRequest for a wrong challenge password or a request the CA refuses, badCertId for an unknown
transaction). Bytes that are not a pkiMessage at all raise :class:`ScepFormatError` (HTTP 400).

Transactions live in the CA's SQLite file (table ``scep_transactions``), so PENDING requests, approvals and
issued certificates survive a restart of the service, and are read from it on every request, so a ``ca approve``
run in another process reaches the next CertPoll. The table goes through the CA's own
:class:`~pki.db.CaDatabase` connection (see :mod:`pki.db` for why a process must not open the file otherwise).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.db import CaDatabase, write_transaction  # PKI-core
from pki.errors import AlgorithmRefusedError, CsrSignatureError, PkiError
from pki.outcome import RequestOutcome

from . import messages as m
from .constants import Capability, FailInfo, MessageType, PkiStatus
from .errors import ScepError, ScepFailure, ScepFormatError

log = logging.getLogger("pki.scep.server")

__all__ = [
    "CAPABILITIES",
    "MAX_PENDING",
    "QueueFullError",
    "ScepResponder",
    "Transaction",
    "TransactionState",
    "TransactionStore",
]

#: What GetCACaps advertises (RFC 8894 3.5.2); every keyword is implemented here. SHA-384 is listed too:
#: strongSwan 5.9's pki --scep tests its capability bits with enum indices instead of masks, and it is the
#: keyword whose bit satisfies both its "SCEPStandard" and its "AES" checks.
CAPABILITIES: tuple[Capability, ...] = (
    Capability.AES,
    Capability.POSTPKIOperation,
    Capability.Renewal,
    Capability.SHA256,
    Capability.SHA384,
    Capability.SHA512,
    Capability.SCEPStandard,
)

#: PENDING requests kept at most: without a challenge password anyone could otherwise fill the table.
MAX_PENDING = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scep_transactions (
    transaction_id TEXT PRIMARY KEY,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'issued', 'rejected')),
    subject        TEXT NOT NULL,
    csr            BLOB NOT NULL,
    requester      BLOB NOT NULL,
    received_at    TEXT NOT NULL,
    decided_at     TEXT,
    certificate    BLOB,
    reason         TEXT
);
"""


class QueueFullError(PkiError):
    """The approval queue holds MAX_PENDING requests already: refused rather than let a client grow it."""


class TransactionState:
    PENDING = "pending"
    ISSUED = "issued"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Transaction:
    """One enrollment as the CA remembers it."""

    transaction_id: str
    state: str
    subject: str
    received_at: datetime
    csr_der: bytes = field(repr=False)
    requester_der: bytes = field(repr=False)
    certificate_der: bytes | None = field(default=None, repr=False)
    reason: str | None = None

    @property
    def csr(self) -> x509.CertificateSigningRequest:
        return x509.load_der_x509_csr(self.csr_der)

    @property
    def certificate(self) -> x509.Certificate | None:
        return None if self.certificate_der is None else x509.load_der_x509_certificate(self.certificate_der)


class TransactionStore:
    """The ``scep_transactions`` table in the CA database (one transaction per change).

    ``db`` is the CA's open :class:`~pki.db.CaDatabase`, whose connection the store shares (and leaves open), or
    the path of a CA database, which the store opens, owns and closes (``ca pending`` needs no CA key).
    """

    def __init__(self, db: CaDatabase | str | Path) -> None:
        self._own = not isinstance(db, CaDatabase)
        self._db = db if isinstance(db, CaDatabase) else CaDatabase(db)  # CaError when unusable
        self.path = self._db.path
        self._conn = self._db.connection
        try:
            self._conn.executescript(_SCHEMA)
            self._scrub_challenges()
        except sqlite3.DatabaseError as exc:
            if self._own:
                self._db.close()
            raise ScepError(f"{self.path}: not a usable CA database ({exc})") from None

    def close(self) -> None:
        if self._own:
            self._db.close()

    def _scrub_challenges(self) -> None:
        """Databases written before challenges were stripped still hold them: strip them now."""
        rows = self._conn.execute("SELECT transaction_id, csr FROM scep_transactions").fetchall()
        changed = False
        for tid, der in rows:
            try:
                clean = _at_rest(x509.load_der_x509_csr(bytes(der)))
            except Exception:  # an unreadable stored request: leave it to whoever reads it
                continue
            if clean != bytes(der):
                with self._tx() as c:
                    c.execute("UPDATE scep_transactions SET csr = ? WHERE transaction_id = ?", (clean, tid))
                changed = True
        if changed:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._conn)

    def get(self, transaction_id: str) -> Transaction | None:
        row = self._conn.execute(
            "SELECT transaction_id, state, subject, received_at, csr, requester, certificate, reason "
            "FROM scep_transactions WHERE transaction_id = ?",
            (transaction_id,),
        ).fetchone()
        return None if row is None else _transaction(row)

    def pending(self) -> list[Transaction]:
        rows = self._conn.execute(
            "SELECT transaction_id, state, subject, received_at, csr, requester, certificate, reason "
            "FROM scep_transactions WHERE state = 'pending' ORDER BY received_at"
        ).fetchall()
        return [_transaction(r) for r in rows]

    def pending_count(self) -> int:
        return int(
            self._conn.execute("SELECT COUNT(*) FROM scep_transactions WHERE state = 'pending'").fetchone()[0]
        )

    def add_pending(
        self, tid: str, csr: x509.CertificateSigningRequest, requester: x509.Certificate | None, at: datetime
    ) -> None:
        """Queue a request for ``ca approve``; :class:`QueueFullError` once MAX_PENDING wait (SCEP, EST and CMP
        share the table, so one bound holds for all: each answers "try later" in its own terms)."""
        with self._tx() as c:
            waiting = int(c.execute("SELECT COUNT(*) FROM scep_transactions WHERE state = 'pending'").fetchone()[0])
            if waiting >= MAX_PENDING:
                raise QueueFullError(f"{MAX_PENDING} requests already await approval")
            c.execute(
                "INSERT OR REPLACE INTO scep_transactions (transaction_id, state, subject, csr, requester, "
                "received_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                (
                    tid,
                    csr.subject.rfc4514_string(),
                    _at_rest(csr),
                    _requester_der(requester),
                    at.isoformat(),
                ),
            )

    def add_issued(
        self,
        tid: str,
        csr: x509.CertificateSigningRequest,
        requester: x509.Certificate | None,
        cert: x509.Certificate,
        at: datetime,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO scep_transactions (transaction_id, state, subject, csr, requester, "
                "received_at, decided_at, certificate) VALUES (?, 'issued', ?, ?, ?, ?, ?, ?)",
                (
                    tid,
                    csr.subject.rfc4514_string(),
                    _at_rest(csr),
                    _requester_der(requester),
                    at.isoformat(),
                    at.isoformat(),
                    cert.public_bytes(Encoding.DER),
                ),
            )

    def decide(
        self,
        tid: str,
        state: str,
        at: datetime,
        cert: x509.Certificate | None = None,
        reason: str | None = None,
    ) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE scep_transactions SET state = ?, decided_at = ?, certificate = ?, reason = ? "
                "WHERE transaction_id = ? AND state = 'pending'",
                (
                    state,
                    at.isoformat(),
                    None if cert is None else cert.public_bytes(Encoding.DER),
                    reason,
                    tid,
                ),
            )
            if cur.rowcount != 1:
                raise ScepError(f"no pending SCEP transaction {tid}")


def _requester_der(requester: x509.Certificate | None) -> bytes:
    """The certificate that asked (SCEP's signer, EST's TLS client certificate); empty when none did (EST with a
    password only)."""
    return b"" if requester is None else requester.public_bytes(Encoding.DER)


def _at_rest(csr: x509.CertificateSigningRequest) -> bytes:
    """What the table keeps of a request: its DER without the challenge password (checked already, never stored).

    A resend is recognised by comparing this form, so a byte-identical resend still gets the same answer."""
    from pki.csr import without_challenge  # PKI-core

    return without_challenge(csr)


def _transaction(row: tuple) -> Transaction:
    tid, state, subject, received, csr, requester, cert, reason = row
    return Transaction(
        tid,
        state,
        subject,
        datetime.fromisoformat(received),
        bytes(csr),
        bytes(requester),
        None if cert is None else bytes(cert),
        reason,
    )


_ISSUING = (MessageType.PKCSReq, MessageType.RenewalReq, MessageType.CertPoll)


def _load_request_csr(payload: bytes) -> tuple[x509.CertificateSigningRequest, bool]:
    """The CSR of a PKCSReq, and whether it was re-encoded after its proof of possession was checked.

    strongSwan 5.9's pki --scep encodes the attributes SET out of DER order, which cryptography refuses to
    parse; pki.csr.parse_csr verifies such a request over its original bytes and re-encodes it.
    """
    from pki.csr import parse_csr  # PKI-core

    try:
        csr, reencoded = parse_csr(payload, source="SCEP PKCSReq")
        from pki.ca import CertificateAuthority  # PKI-core

        # a key the CA will not certify is refused now, not after a PENDING wait for an operator
        CertificateAuthority._check_subject_key(csr.public_key())
        return csr, reencoded
    except AlgorithmRefusedError as exc:
        raise ScepFailure(FailInfo.badAlg, str(exc)) from None
    except CsrSignatureError as exc:
        raise ScepFailure(FailInfo.badMessageCheck, str(exc)) from None
    except PkiError as exc:
        raise ScepFailure(FailInfo.badRequest, str(exc)) from None


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ScepResponder:
    """SCEP for one CA. Not thread-safe: the service calls it from one worker thread.

    ``ca`` is a :class:`pki.ca.CertificateAuthority` with an RSA key (SCEP encrypts to the CA with RSA key
    transport). ``challenge`` (when set) must equal the CSR's challengePassword; ``manual_approval`` answers
    PENDING and waits for :meth:`approve`.
    """

    def __init__(
        self,
        ca,
        *,
        challenge: str | None = None,
        manual_approval: bool = False,  # type: ignore[no-untyped-def]
        profile: object = None,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.ca = ca
        self.challenge = challenge
        self.manual_approval = manual_approval
        self.profile = profile
        self._clock = clock
        self._random = random
        self.store = TransactionStore(ca.db)
        self._outcome: RequestOutcome | None = None

    def close(self) -> None:
        self.store.close()

    # -- GetCACaps / GetCACert ------------------------------------------------------------------------------
    def ca_caps(self) -> bytes:
        return "\n".join(c.value for c in CAPABILITIES).encode() + b"\n"

    def ca_cert(self) -> tuple[str, bytes]:
        """(content type, body): a lone CA certificate as DER, or a chain as a degenerate PKCS#7."""
        chain = list(self.ca.chain)
        if len(chain) == 1:
            return "application/x-x509-ca-cert", chain[0].public_bytes(Encoding.DER)
        return "application/x-x509-ca-ra-cert", m.certs_only(chain)

    # -- PKIOperation ---------------------------------------------------------------------------------------
    def respond(self, body: bytes) -> tuple[bytes, RequestOutcome]:
        """:meth:`pki_operation`, plus what it came to (the CertRep's status) for the access log."""
        self._outcome = None
        reply = self.pki_operation(body)
        return reply, self._outcome or RequestOutcome(None, None, "ok")

    def pki_operation(self, body: bytes) -> bytes:
        """The CertRep for a pkiMessage; :class:`ScepFormatError` when ``body`` is not one."""
        try:
            msg = m.parse_pki_message(body)
        except ScepFailure as exc:
            if exc.transaction_id is None or exc.sender_nonce is None:
                raise ScepFormatError(str(exc)) from None
            return self._failure(exc.transaction_id, exc.sender_nonce, None, exc.fail_info, exc.text)
        try:
            return self._dispatch(msg)
        except ScepFailure as exc:
            return self._failure(msg.transaction_id, msg.sender_nonce, msg, exc.fail_info, exc.text)
        except ScepFormatError as exc:
            return self._failure(msg.transaction_id, msg.sender_nonce, msg, FailInfo.badRequest, str(exc))

    def _dispatch(self, msg: m.PkiMessage) -> bytes:
        handler = self._HANDLERS.get(msg.message_type)
        if handler is None:
            raise ScepFailure(FailInfo.badRequest, f"messageType {msg.message_type.name} is not a request")
        if msg.envelope is None:
            raise ScepFailure(FailInfo.badRequest, "the request carries no pkcsPKIEnvelope")
        payload = m.open_envelope(msg.envelope, self.ca.private_key, self.ca.certificate)
        return handler(self, msg, payload)

    def _pkcs_req(self, msg: m.PkiMessage, payload: bytes) -> bytes:
        from pki.csr import challenge_password  # PKI-core

        csr, pop_verified = _load_request_csr(payload)
        existing = self.store.get(msg.transaction_id)
        if existing is not None:
            signed_with_issued = (
                existing.certificate_der is not None
                and msg.signer.public_bytes(Encoding.DER) == existing.certificate_der
            )
            if existing.csr_der == _at_rest(csr) and not signed_with_issued:
                return self._answer_for(existing, msg)  # a resend: the same answer again
            if existing.state == TransactionState.PENDING:
                raise ScepFailure(FailInfo.badRequest, "a different request for this key is still pending")
            # a decided transaction, a new CSR for the same key (transactionIDs hash the key): a new request
        # Signed with the key being certified (a transient self-signed certificate): the challenge password
        # authorises it. Signed with another key: that must be a current certificate of ours (renewal).
        renewal = msg.message_type is MessageType.RenewalReq or _spki(csr.public_key()) != _spki(
            msg.signer.public_key()
        )
        if renewal:
            self._check_renewal(msg)
            # the current certificate authorises a new one for the same holder, not for anyone it names
            if csr.subject != msg.signer.subject:
                raise ScepFailure(
                    FailInfo.badRequest, "a renewal must keep the subject of the current certificate"
                )
        elif self.challenge is not None:
            try:
                given = challenge_password(csr)
            except PkiError as exc:
                raise ScepFailure(FailInfo.badRequest, str(exc)) from None
            if given is None or not hmac.compare_digest(given.encode(), self.challenge.encode()):
                raise ScepFailure(FailInfo.badRequest, "wrong or missing challenge password")
        now = self._clock()
        if self.manual_approval:
            try:
                self.store.add_pending(msg.transaction_id, csr, msg.signer, now)
            except QueueFullError as exc:
                raise ScepFailure(FailInfo.badRequest, str(exc)) from None
            log.info(
                "SCEP transaction %s (%s): PENDING approval", msg.transaction_id, csr.subject.rfc4514_string()
            )
            return self._reply(msg, PkiStatus.PENDING)
        try:
            cert = self._issue(csr, now, pop_verified)
        except AlgorithmRefusedError as exc:
            raise ScepFailure(FailInfo.badAlg, f"the CA refused the request: {exc}") from None
        except PkiError as exc:
            raise ScepFailure(FailInfo.badRequest, f"the CA refused the request: {exc}") from None
        self.store.add_issued(msg.transaction_id, csr, msg.signer, cert, now)
        log.info(
            "SCEP transaction %s: issued %x to %s",
            msg.transaction_id,
            cert.serial_number,
            cert.subject.rfc4514_string(),
        )
        return self._reply(msg, PkiStatus.SUCCESS, [cert])

    def _issue(
        self, csr: x509.CertificateSigningRequest, now: datetime, pop_verified: bool
    ) -> x509.Certificate:
        return self.ca.issue(csr, self.profile, at=now, pop_verified=pop_verified)  # type: ignore[no-any-return]

    def _check_renewal(self, msg: m.PkiMessage) -> None:
        """RenewalReq is signed with a certificate this CA issued and that is still valid."""
        signer = msg.signer
        rec = self.ca.lookup(signer.serial_number) if signer.issuer == self.ca.certificate.subject else None
        if rec is None or rec.certificate != signer:
            raise ScepFailure(FailInfo.badCertId, "RenewalReq not signed by a certificate this CA issued")
        status = rec.status_at(self._clock()).value
        if status != "valid":
            raise ScepFailure(FailInfo.badCertId, f"the certificate being renewed is {status}")

    def _cert_poll(self, msg: m.PkiMessage, payload: bytes) -> bytes:
        m.parse_issuer_and_subject(payload)  # must be well-formed; the transactionID finds the transaction
        existing = self.store.get(msg.transaction_id)
        if existing is None:
            raise ScepFailure(FailInfo.badCertId, f"unknown transaction {msg.transaction_id}")
        if _spki(existing.csr.public_key()) != _spki(
            msg.signer.public_key()
        ) and existing.requester_der != msg.signer.public_bytes(Encoding.DER):
            raise ScepFailure(FailInfo.badMessageCheck, "CertPoll signed by a key other than the requester's")
        return self._answer_for(existing, msg)

    def _get_cert(self, msg: m.PkiMessage, payload: bytes) -> bytes:
        issuer, serial = m.parse_issuer_and_serial(payload)
        rec = self.ca.lookup(serial) if issuer == self.ca.certificate.subject.public_bytes() else None
        if rec is None:
            raise ScepFailure(FailInfo.badCertId, f"no certificate with serial {serial:x}")
        return self._reply(msg, PkiStatus.SUCCESS, [rec.certificate])

    def _get_crl(self, msg: m.PkiMessage, payload: bytes) -> bytes:
        issuer, _serial = m.parse_issuer_and_serial(payload)
        if issuer != self.ca.certificate.subject.public_bytes():
            raise ScepFailure(FailInfo.badCertId, "GetCRL for a certificate of another CA")
        return self._reply(msg, PkiStatus.SUCCESS, crls=[self.ca.crl(at=self._clock())])

    _HANDLERS: ClassVar[dict[MessageType, Callable[[ScepResponder, m.PkiMessage, bytes], bytes]]] = {
        MessageType.PKCSReq: _pkcs_req,
        MessageType.RenewalReq: _pkcs_req,
        MessageType.CertPoll: _cert_poll,
        MessageType.GetCert: _get_cert,
        MessageType.GetCRL: _get_crl,
    }

    def _answer_for(self, t: Transaction, msg: m.PkiMessage) -> bytes:
        if t.state == TransactionState.PENDING:
            return self._reply(msg, PkiStatus.PENDING)
        if t.state == TransactionState.ISSUED and t.certificate is not None:
            return self._reply(msg, PkiStatus.SUCCESS, [t.certificate])
        raise ScepFailure(
            FailInfo.badRequest, f"request rejected by the CA operator: {t.reason or 'no reason'}"
        )

    # -- CertRep construction -------------------------------------------------------------------------------
    def _reply(
        self,
        msg: m.PkiMessage,
        status: PkiStatus,
        certs: list[x509.Certificate] | None = None,
        crls: list[x509.CertificateRevocationList] | None = None,
    ) -> bytes:
        env = None
        if status is PkiStatus.PENDING:
            outcome, serial = "pending", None
        else:
            outcome = "issued" if msg.message_type in _ISSUING else "ok"
            serial = certs[0].serial_number if certs else None
        self._outcome = RequestOutcome(msg.message_type.name, msg.transaction_id, outcome, serial)
        if status is PkiStatus.SUCCESS:
            assert certs or crls
            try:
                cipher = m.envelope_cipher(msg.envelope) if msg.envelope else "aes128_cbc"
            except ScepFormatError:
                cipher = "aes128_cbc"
            if cipher not in m.CIPHERS:
                cipher = "aes128_cbc"
            payload = m.certs_only(certs or [], crls or [])
            env = m.envelope(payload, msg.signer, cipher=cipher, random=self._random)
        return m.sign_pki_message(
            message_type=MessageType.CertRep,
            transaction_id=msg.transaction_id,
            sender_nonce=self._random(16),
            recipient_nonce=msg.sender_nonce,
            pki_status=status,
            signer_cert=self.ca.certificate,
            signer_key=self.ca.private_key,
            envelope=env,
            digest=msg.digest_algorithm
            if msg.digest_algorithm in ("sha256", "sha384", "sha512")
            else "sha256",
            signing_time=self._clock(),
        )

    def _failure(self, tid: str, nonce: bytes, msg: m.PkiMessage | None, fail: FailInfo, text: str) -> bytes:
        log.info("SCEP transaction %s: FAILURE %s: %s", tid, fail.name, text)
        self._outcome = RequestOutcome(
            msg.message_type.name if msg else None, tid, "refused", fail_info=fail.name, reason=text
        )
        digest = (
            msg.digest_algorithm
            if msg and msg.digest_algorithm in ("sha256", "sha384", "sha512")
            else "sha256"
        )
        return m.sign_pki_message(
            message_type=MessageType.CertRep,
            transaction_id=tid,
            sender_nonce=self._random(16),
            recipient_nonce=nonce,
            pki_status=PkiStatus.FAILURE,
            fail_info=fail,
            fail_info_text=text[:200] or None,
            signer_cert=self.ca.certificate,
            signer_key=self.ca.private_key,
            digest=digest,
            signing_time=self._clock(),
        )

    # -- operator decisions ---------------------------------------------------------------------------------
    def approve(self, transaction_id: str) -> x509.Certificate:
        """Issue the certificate for a PENDING request; the next CertPoll gets it."""
        t = self.store.get(transaction_id)
        if t is None or t.state != TransactionState.PENDING:
            raise ScepError(f"no pending SCEP transaction {transaction_id}")
        now = self._clock()
        # the stored request was checked (proof of possession) when it arrived; it may be a DER re-encoding
        cert = self._issue(t.csr, now, pop_verified=True)
        self.store.decide(transaction_id, TransactionState.ISSUED, now, cert=cert)
        return cert

    def reject(self, transaction_id: str, reason: str = "rejected by operator") -> None:
        self.store.decide(transaction_id, TransactionState.REJECTED, self._clock(), reason=reason)
