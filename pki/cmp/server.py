"""The CA side of CMPv2: a PKIMessage in, the PKIMessage to answer with out (``pki.service`` moves the bytes).

What a request may do depends on how it is protected (RFC 9483 sections 4.1 and 4.2):

* **PasswordBasedMac** with a reference number and secret the operator created (``ca cmp-secret add``): ir, cr
  and p10cr, for any subject the CA's SAN policy allows. A secret enrolls once: the transaction that used it may
  still send its certConf or poll, no other. The answers are MAC-protected with the same secret, and an ip
  carries the CA certificate in caPubs, so the router learns its trust anchor over the authenticated channel.
* **A signature** by a certificate this CA issued and that is still valid (the first of extraCerts): kur (a new
  key for the same subject), cr and p10cr for the same subject, and rr of that very certificate. The answers
  are signed by the CA key.

* **Anything, or nothing**: genm, of which id-it-caCerts (RFC 9483 4.3.1) is answered with the CA chain in a
  genp signed by the CA key (the router checks the fingerprint out of band, as for SCEP's GetCACert).

Other unprotected requests, unknown references, wrong MACs and bad signatures get an error message with failInfo
badMessageCheck; bytes that are not a PKIMessage get one with badDataFormat. Every answer is a PKIMessage.

Issuance goes through :meth:`pki.ca.CertificateAuthority.issue` like SCEP's (same database, same SAN policy):
the CRMF template becomes a PKCS#10 request whose proof of possession was checked here. With manual approval
the request waits in SCEP's transaction table under ``cmp-<transactionID>`` (so ``ca pending``/``approve``/
``reject`` handle both protocols) and the client polls (pollReq/pollRep, RFC 4210 5.3.22 with RFC 9480).
Certificates that the client rejects in its certConf are revoked.
"""

from __future__ import annotations

import hmac
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyasn1.codec.der import encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280

from pki.db import CaDatabase, write_transaction
from pki.errors import CsrSignatureError, PkiError
from pki.outcome import RequestOutcome

from . import messages as m
from .messages import CmpFailure, CmpFormatError, FailInfo, PkiStatus

__all__ = ["CmpResponder", "CmpSecret", "SecretStore"]

log = logging.getLogger("pki.cmp.server")

#: Seconds a client is told to wait before polling again while a request awaits approval.
CHECK_AFTER = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cmp_secrets (
    reference   TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    used_by     TEXT
);
CREATE TABLE IF NOT EXISTS cmp_transactions (
    transaction_id TEXT PRIMARY KEY,
    body_type      TEXT NOT NULL,
    reference      TEXT,
    signer         BLOB,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'waiting', 'confirmed', 'rejected')),
    cert_req_id    INTEGER NOT NULL,
    certificate    BLOB,
    received_at    TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class CmpSecret:
    """A reference number and its secret, for one initial enrollment (``used_by``: the transaction that used it)."""

    reference: str
    secret: str
    created_at: datetime
    expires_at: datetime | None
    used_by: str | None

    def __repr__(self) -> str:  # the secret never goes into a log line or a traceback
        return f"CmpSecret(reference={self.reference!r}, expires_at={self.expires_at}, used_by={self.used_by})"


class SecretStore:
    """The ``cmp_secrets`` and ``cmp_transactions`` tables in the CA database.

    The secrets are kept as given: a PBM can only be checked with the secret itself. The CA database is 0600,
    like the CA key."""

    def __init__(self, db: CaDatabase | str | Path) -> None:
        self._own = not isinstance(db, CaDatabase)
        self._db = db if isinstance(db, CaDatabase) else CaDatabase(db)
        self._conn = self._db.connection
        try:
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if self._own:
                self._db.close()
            raise m.CmpError(f"{self._db.path}: not a usable CA database ({exc})") from None

    def close(self) -> None:
        if self._own:
            self._db.close()

    # -- secrets --------------------------------------------------------------------------------------------
    def add(self, reference: str, secret: str, at: datetime, expires_at: datetime | None = None,
            *, replace: bool = False) -> None:
        if not reference or len(reference) > 128 or not reference.isprintable():
            raise ValueError("the reference number must be 1 to 128 printable characters")
        if len(secret) < 8:
            raise ValueError("the CMP secret must be at least 8 characters")
        with write_transaction(self._conn) as c:
            if not replace and c.execute("SELECT 1 FROM cmp_secrets WHERE reference = ?", (reference,)).fetchone():
                raise m.CmpError(f"reference {reference} exists already (delete it, or add --replace)")
            c.execute("INSERT OR REPLACE INTO cmp_secrets (reference, secret, created_at, expires_at, used_by) "
                      "VALUES (?, ?, ?, ?, NULL)",
                      (reference, secret, at.isoformat(), None if expires_at is None else expires_at.isoformat()))

    def delete(self, reference: str) -> None:
        with write_transaction(self._conn) as c:
            if c.execute("DELETE FROM cmp_secrets WHERE reference = ?", (reference,)).rowcount != 1:
                raise m.CmpError(f"no CMP reference {reference}")

    def get(self, reference: str) -> CmpSecret | None:
        row = self._conn.execute("SELECT reference, secret, created_at, expires_at, used_by FROM cmp_secrets "
                                 "WHERE reference = ?", (reference,)).fetchone()
        return None if row is None else _secret(row)

    def secrets(self) -> list[CmpSecret]:
        rows = self._conn.execute("SELECT reference, secret, created_at, expires_at, used_by FROM cmp_secrets "
                                  "ORDER BY created_at").fetchall()
        return [_secret(r) for r in rows]

    def mark_used(self, reference: str, tid: str) -> None:
        with write_transaction(self._conn) as c:
            c.execute("UPDATE cmp_secrets SET used_by = ? WHERE reference = ?", (tid, reference))

    # -- transactions ---------------------------------------------------------------------------------------
    def transaction(self, tid: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT transaction_id, body_type, reference, signer, state, cert_req_id, "
                                 "certificate FROM cmp_transactions WHERE transaction_id = ?", (tid,)).fetchone()
        if row is None:
            return None
        keys = ("tid", "body_type", "reference", "signer", "state", "cert_req_id", "certificate")
        return dict(zip(keys, row))

    def put_transaction(self, tid: str, body_type: str, reference: str | None, signer: bytes | None, state: str,
                        cert_req_id: int, cert: x509.Certificate | None, at: datetime) -> None:
        with write_transaction(self._conn) as c:
            c.execute("INSERT OR REPLACE INTO cmp_transactions (transaction_id, body_type, reference, signer, "
                      "state, cert_req_id, certificate, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (tid, body_type, reference, signer, state, cert_req_id,
                       None if cert is None else cert.public_bytes(Encoding.DER), at.isoformat()))

    def set_state(self, tid: str, state: str, cert: x509.Certificate | None = None) -> None:
        with write_transaction(self._conn) as c:
            if cert is None:
                c.execute("UPDATE cmp_transactions SET state = ? WHERE transaction_id = ?", (state, tid))
            else:
                c.execute("UPDATE cmp_transactions SET state = ?, certificate = ? WHERE transaction_id = ?",
                          (state, cert.public_bytes(Encoding.DER), tid))


def _secret(row: tuple) -> CmpSecret:
    ref, secret, created, expires, used = row
    return CmpSecret(ref, secret, datetime.fromisoformat(created),
                     None if expires is None else datetime.fromisoformat(expires), used)


@dataclass
class _Auth:
    """Who sent a request: a reference number (PBM) or a certificate of this CA (signature)."""

    reference: str | None = None
    secret: bytes | None = None
    signer: x509.Certificate | None = None


_REQUESTS = ("ir", "cr", "kur", "p10cr")
_REPLY = {"ir": "ip", "cr": "cp", "kur": "kup", "p10cr": "cp"}
_REASONS = {0: "unspecified", 1: "key_compromise", 2: "ca_compromise", 3: "affiliation_changed", 4: "superseded",
            5: "cessation_of_operation", 6: "certificate_hold", 9: "privilege_withdrawn", 10: "aa_compromise"}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _spki(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def cert_hash(cert: x509.Certificate) -> bytes:
    """certConf's certHash: the certificate's own signature hash (RFC 4210 5.3.18; SHA-512 for EdDSA, RFC 9481)."""
    alg = cert.signature_hash_algorithm or hashes.SHA512()
    h = hashes.Hash(alg)
    h.update(cert.public_bytes(Encoding.DER))
    return h.finalize()


class CmpResponder:
    """CMP for one CA. Not thread-safe: the service calls it from its CA worker thread."""

    def __init__(self, ca: Any, *, manual_approval: bool = False, profile: object = None,
                 clock: Callable[[], datetime] = _utcnow, random: Callable[[int], bytes] = os.urandom) -> None:
        from pki.scep.server import TransactionStore  # the approval queue both protocols share

        self.ca = ca
        self.manual_approval = manual_approval
        self.profile = profile
        self._clock = clock
        self._random = random
        self.secrets = SecretStore(ca.db)
        self.queue = TransactionStore(ca.db)
        self._outcome: RequestOutcome | None = None

    def close(self) -> None:
        self.secrets.close()
        self.queue.close()

    # -- entry point ----------------------------------------------------------------------------------------
    def respond(self, data: bytes) -> tuple[bytes, RequestOutcome]:
        """The answer to a PKIMessage and what it came to. Raises nothing a peer can provoke."""
        self._outcome = None
        msg = None
        auth = _Auth()
        try:
            msg = m.parse_message(data)
            if msg.transaction_id is None or msg.sender_nonce is None:
                raise CmpFailure(FailInfo.badDataFormat, "the header lacks a transactionID or senderNonce")
            if not 1 <= len(msg.transaction_id) <= 64 or len(msg.sender_nonce) > 64:
                raise CmpFailure(FailInfo.badDataFormat, "transactionID or senderNonce of a bad size")
            if msg.body_type == "genm" and msg.protection is None:
                auth = _Auth()  # RFC 9483 4.3: general messages may come unprotected; the genp is signed
            else:
                auth = self._authenticate(msg)
            handler = self._HANDLERS.get(msg.body_type)
            if handler is None:
                raise CmpFailure(FailInfo.badRequest, f"{msg.body_type} is not a request this CA answers")
            reply = handler(self, msg, auth)
        except CmpFormatError as exc:
            return self._error(None, auth, FailInfo.badDataFormat, str(exc)), self._outcome  # type: ignore[return-value]
        except CmpFailure as exc:
            return self._error(msg, auth, exc.fail_info, exc.text), self._outcome  # type: ignore[return-value]
        except (PyAsn1Error, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # a structure this code did not expect (pyasn1 raises these on absent or odd components): the
            # client's message is at fault as far as it can tell, and the service stays up
            log.warning("CMP: cannot process a %s: %s: %s", msg.body_type if msg else "message",
                        type(exc).__name__, str(exc)[:200])
            return self._error(msg, auth, FailInfo.badDataFormat,
                               "the message could not be processed"), self._outcome  # type: ignore[return-value]
        return reply, self._outcome or RequestOutcome(msg.body_type, msg.transaction_id.hex(), "ok")

    # -- authentication -------------------------------------------------------------------------------------
    def _authenticate(self, msg: m.CmpMessage) -> _Auth:
        if msg.protection is None or msg.protection_alg is None:
            raise CmpFailure(FailInfo.badMessageCheck, "unprotected request: CMP requests need a MAC or signature")
        if msg.recipient and msg.recipient != self.ca.certificate.subject.public_bytes():
            empty = rfc5280.Name()
            empty["rdnSequence"] = rfc5280.RDNSequence()
            if msg.recipient != encoder.encode(empty):
                raise CmpFailure(FailInfo.wrongAuthority, "the request is addressed to another CA")
        if msg.protection_oid == m.OID_PBM:
            if msg.sender_kid is None:
                raise CmpFailure(FailInfo.badMessageCheck, "MAC-protected request without senderKID (reference)")
            ref = msg.sender_kid.decode("utf-8", "replace")
            s = self.secrets.get(ref)
            if s is None:
                raise CmpFailure(FailInfo.badMessageCheck, f"unknown reference number {ref[:40]!r}")
            msg.check_mac(s.secret.encode())
            tid = msg.transaction_id.hex()  # type: ignore[union-attr]
            if s.used_by is not None and s.used_by != tid:
                raise CmpFailure(FailInfo.notAuthorized, f"reference {ref[:40]} was used already")
            if s.expires_at is not None and self._clock() > s.expires_at:
                raise CmpFailure(FailInfo.notAuthorized, f"reference {ref[:40]} expired")
            return _Auth(reference=ref, secret=s.secret.encode())
        if not msg.extra_certs:
            raise CmpFailure(FailInfo.badMessageCheck, "signed request without its certificate in extraCerts")
        signer = msg.extra_certs[0]
        msg.check_signature(signer)
        self._check_ours(signer)
        return _Auth(signer=signer)

    def _check_ours(self, cert: x509.Certificate) -> None:
        """A certificate this CA issued, unchanged, and valid now."""
        ca_cert = self.ca.certificate
        rec = self.ca.lookup(cert.serial_number) if cert.issuer == ca_cert.subject else None
        if rec is None or rec.certificate != cert:
            raise CmpFailure(FailInfo.signerNotTrusted, "the request is not signed by a certificate of this CA")
        status = rec.status_at(self._clock()).value
        if status == "revoked":
            raise CmpFailure(FailInfo.certRevoked, f"the signing certificate {cert.serial_number:x} is revoked")
        if status != "valid":
            raise CmpFailure(FailInfo.signerNotTrusted, f"the signing certificate is {status}")

    # -- certificate requests -------------------------------------------------------------------------------
    def _cert_request(self, msg: m.CmpMessage, auth: _Auth) -> bytes:
        tid = msg.transaction_id.hex()  # type: ignore[union-attr]
        if auth.signer is None and msg.body_type == "kur":
            raise CmpFailure(FailInfo.badMessageCheck, "kur must be signed with the certificate being updated")
        known = self.secrets.transaction(tid)
        if known is not None:
            raise CmpFailure(FailInfo.transactionIdInUse, "transactionID already used")
        if msg.body_type == "p10cr":
            req_id = -1 if msg.pvno == 3 else 0
            csr = self._p10(msg.body_content)
        else:
            req_id, csr = self._crmf(msg, auth)
        if auth.signer is not None and csr.subject != auth.signer.subject:
            raise CmpFailure(FailInfo.notAuthorized, "a signed request must keep the subject of its certificate")
        now = self._clock()
        signer_der = None if auth.signer is None else auth.signer.public_bytes(Encoding.DER)
        if self.manual_approval:
            from pki.scep.server import QueueFullError

            try:
                self.queue.add_pending(f"cmp-{tid}", csr, auth.signer or self.ca.certificate, now)
            except QueueFullError as exc:
                raise CmpFailure(FailInfo.systemUnavail, str(exc)) from None
            self.secrets.put_transaction(tid, msg.body_type, auth.reference, signer_der, "pending", req_id, None, now)
            self._use(auth, tid)
            log.info("CMP %s %s (%s): waiting for approval", msg.body_type, tid, csr.subject.rfc4514_string())
            self._outcome = RequestOutcome(msg.body_type, tid, "pending")
            return self._cert_reply(msg, auth, req_id, None, PkiStatus.waiting)
        try:
            cert = self.ca.issue(csr, self.profile, at=now, pop_verified=True)
        except PkiError as exc:
            raise CmpFailure(FailInfo.badCertTemplate, f"the CA refused the request: {exc}") from None
        implicit = msg.implicit_confirm
        self.secrets.put_transaction(tid, msg.body_type, auth.reference, signer_der,
                                     "confirmed" if implicit else "waiting", req_id, cert, now)
        self._use(auth, tid)
        log.info("CMP %s %s: issued %x to %s", msg.body_type, tid, cert.serial_number, cert.subject.rfc4514_string())
        self._outcome = RequestOutcome(msg.body_type, tid, "issued", cert.serial_number)
        return self._cert_reply(msg, auth, req_id, cert, PkiStatus.accepted, implicit=implicit)

    def _use(self, auth: _Auth, tid: str) -> None:
        """A reference is spent once a request made with it is issued or queued, not when one is refused (a
        template the CA does not accept can be corrected and sent again with the same reference)."""
        if auth.reference is not None:
            self.secrets.mark_used(auth.reference, tid)

    def _p10(self, der: bytes) -> x509.CertificateSigningRequest:
        from pki.csr import parse_csr

        try:
            csr, _ = parse_csr(der, source="CMP p10cr")
        except CsrSignatureError as exc:
            raise CmpFailure(FailInfo.badPOP, str(exc)) from None
        except PkiError as exc:
            raise CmpFailure(FailInfo.badDataFormat, str(exc)) from None
        return csr

    def _crmf(self, msg: m.CmpMessage, auth: _Auth) -> tuple[int, x509.CertificateSigningRequest]:
        reqs = msg.body
        if len(reqs) != 1:
            raise CmpFailure(FailInfo.badRequest, "exactly one CertReqMsg per request (RFC 9483 4.1.1)")
        crm = reqs[0]
        cert_req = crm["certReq"]
        req_id = int(cert_req["certReqId"])
        tmpl = cert_req["certTemplate"]
        if not tmpl["publicKey"].isValue:
            raise CmpFailure(FailInfo.badCertTemplate, "no public key in the template (central key generation "
                             "is not offered)")
        spki = rfc5280.SubjectPublicKeyInfo()
        m._copy_into(spki, tmpl["publicKey"])
        spki_der = encoder.encode(spki)
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        try:
            public_key = load_der_public_key(spki_der)
        except (ValueError, TypeError):
            raise CmpFailure(FailInfo.badCertTemplate, "the template's public key cannot be read") from None
        self._check_pop(crm, public_key)
        subject = m.name_der(tmpl["subject"]) if tmpl["subject"].isValue else None
        ext_der = None
        if tmpl["extensions"].isValue:
            exts = rfc5280.Extensions()
            exts.extend(list(tmpl["extensions"]))
            ext_der = encoder.encode(exts)
        if msg.body_type == "kur":
            old = auth.signer
            assert old is not None
            self._check_old_cert_id(cert_req, old)
            if _spki(old.public_key()) == _spki(public_key):
                raise CmpFailure(FailInfo.badCertTemplate, "kur with the key of the current certificate")
            subject = subject or old.subject.public_bytes()
            if ext_der is None:
                try:
                    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                    ext_der = _extensions_der([san])
                except x509.ExtensionNotFound:
                    pass
        return req_id, _request(subject or b"\x30\x00", spki_der, ext_der)

    @staticmethod
    def _check_pop(crm: Any, public_key: Any) -> None:
        popo = crm["popo"]
        if not popo.isValue or popo.getName() != "signature":
            raise CmpFailure(FailInfo.badPOP, "proof of possession must be a signature (raVerified and "
                             "encryption-based ones are not accepted)")
        sig = popo["signature"]
        if sig["poposkInput"].isValue:
            raise CmpFailure(FailInfo.badPOP, "poposkInput is not supported: put the subject in the template")
        data = encoder.encode(crm["certReq"])
        try:
            m.verify_signature(public_key, str(sig["algorithmIdentifier"]["algorithm"]),
                               sig["signature"].asOctets(), data)
        except CmpFailure as exc:
            raise CmpFailure(FailInfo.badPOP if exc.fail_info is FailInfo.badMessageCheck else exc.fail_info,
                             f"proof of possession: {exc.text}") from None

    def _check_old_cert_id(self, cert_req: Any, old: x509.Certificate) -> None:
        controls = cert_req["controls"]
        if not controls.isValue:
            return
        for atv in controls:
            if str(atv["type"]) != m.OID_REGCTRL_OLDCERTID:
                continue
            try:
                from pyasn1_alt_modules import rfc4211

                cid = m._decode(encoder.encode(atv["value"]), rfc4211.CertId())
                serial = int(cid["serialNumber"])
            except (PyAsn1Error, ValueError):
                raise CmpFailure(FailInfo.badDataFormat, "malformed oldCertID control") from None
            if serial != old.serial_number:
                raise CmpFailure(FailInfo.badCertId, "oldCertID names another certificate than the signer's")

    def _cert_reply(self, msg: m.CmpMessage, auth: _Auth, req_id: int, cert: x509.Certificate | None,
                    status: PkiStatus, *, implicit: bool = False, text: str | None = None,
                    fail: FailInfo | None = None, reply_type: str | None = None) -> bytes:
        ca_chain = list(self.ca.chain)

        def fill(rep: Any) -> None:
            if cert is not None and reply_type in (None, "ip") and _REPLY.get(msg.body_type, "ip") == "ip" \
                    and auth.reference is not None:
                for c in ca_chain[-1:]:
                    rep["caPubs"].append(m.cert_to_asn1(c))
            resp = rep["response"].componentType.clone()
            resp["certReqId"] = req_id
            resp["status"] = m.status_info(status, fail, text)
            if cert is not None:
                m._copy_into(resp["certifiedKeyPair"]["certOrEncCert"]["certificate"], m.cert_to_asn1(cert))
            rep["response"].append(resp)

        body_type = reply_type or _REPLY[msg.body_type]
        extra = ca_chain if cert is not None else []
        return self._send(msg, auth, body_type, fill, extra, implicit=implicit)

    # -- polling, confirmation, revocation -------------------------------------------------------------------
    def _poll(self, msg: m.CmpMessage, auth: _Auth) -> bytes:
        tid = msg.transaction_id.hex()  # type: ignore[union-attr]
        t = self._own_transaction(tid, auth)
        req_id = int(msg.body[0]["certReqId"]) if len(msg.body) else t["cert_req_id"]
        queued = self.queue.get(f"cmp-{tid}")
        if t["state"] != "pending" or queued is None:
            raise CmpFailure(FailInfo.badRequest, "nothing to poll for in this transaction")
        if queued.state == "pending":
            self._outcome = RequestOutcome("pollReq", tid, "pending")

            def fill(rep: Any) -> None:
                item = rep.componentType.clone()
                item["certReqId"] = req_id
                item["checkAfter"] = CHECK_AFTER
                rep.append(item)

            return self._send(msg, auth, "pollRep", fill, [])
        reply_type = _REPLY[t["body_type"]]
        if queued.state == "issued" and queued.certificate is not None:
            cert = queued.certificate
            self.secrets.set_state(tid, "waiting", cert)
            self._outcome = RequestOutcome("pollReq", tid, "issued", cert.serial_number)
            return self._cert_reply(msg, auth, req_id, cert, PkiStatus.accepted, reply_type=reply_type)
        self.secrets.set_state(tid, "rejected")
        self._outcome = RequestOutcome("pollReq", tid, "refused", fail_info="badRequest", reason=queued.reason)
        return self._cert_reply(msg, auth, req_id, None, PkiStatus.rejection, reply_type=reply_type,
                                fail=FailInfo.badRequest, text=f"rejected by the CA operator: {queued.reason}")

    def _own_transaction(self, tid: str, auth: _Auth) -> dict[str, Any]:
        t = self.secrets.transaction(tid)
        if t is None:
            raise CmpFailure(FailInfo.badRequest, "unknown transactionID")
        same = (auth.reference is not None and t["reference"] == auth.reference) or (
            auth.signer is not None and t["signer"] is not None
            and bytes(t["signer"]) == auth.signer.public_bytes(Encoding.DER))
        if not same:
            raise CmpFailure(FailInfo.notAuthorized, "the transaction was started by another sender")
        return t

    def _cert_conf(self, msg: m.CmpMessage, auth: _Auth) -> bytes:
        tid = msg.transaction_id.hex()  # type: ignore[union-attr]
        t = self._own_transaction(tid, auth)
        if t["state"] != "waiting" or t["certificate"] is None:
            raise CmpFailure(FailInfo.badRequest, f"no certificate awaits confirmation ({t['state']})")
        cert = x509.load_der_x509_certificate(bytes(t["certificate"]))
        if len(msg.body) != 1:
            raise CmpFailure(FailInfo.badRequest, "certConf must confirm exactly one certificate")
        status = msg.body[0]
        if not hmac.compare_digest(bytes(status["certHash"]), cert_hash(cert)):
            raise CmpFailure(FailInfo.badCertId, "certHash does not match the certificate issued")
        accepted = True
        if status["statusInfo"].isValue:
            accepted = int(status["statusInfo"]["status"]) in (PkiStatus.accepted, PkiStatus.grantedWithMods)
        if accepted:
            self.secrets.set_state(tid, "confirmed")
            self._outcome = RequestOutcome("certConf", tid, "confirmed", cert.serial_number)
        else:  # RFC 4210 5.3.18: the CA must not keep a certificate the holder refused
            self.ca.revoke(cert.serial_number, "cessation_of_operation", at=self._clock())
            self.secrets.set_state(tid, "rejected")
            self._outcome = RequestOutcome("certConf", tid, "revoked", cert.serial_number,
                                       reason="the client rejected the certificate")
        return self._send(msg, auth, "pkiconf", lambda body: None, [])

    def _revoke(self, msg: m.CmpMessage, auth: _Auth) -> bytes:
        tid = msg.transaction_id.hex()  # type: ignore[union-attr]
        if auth.signer is None:
            raise CmpFailure(FailInfo.notAuthorized, "rr must be signed with the certificate being revoked")
        if len(msg.body) != 1:
            raise CmpFailure(FailInfo.badRequest, "exactly one RevDetails per rr (RFC 9483 4.2)")
        details = msg.body[0]
        tmpl = details["certDetails"]
        if not tmpl["serialNumber"].isValue or not tmpl["issuer"].isValue:
            raise CmpFailure(FailInfo.badCertTemplate, "rr without issuer and serialNumber")
        serial = int(tmpl["serialNumber"])
        if m.name_der(tmpl["issuer"]) != self.ca.certificate.subject.public_bytes():
            raise CmpFailure(FailInfo.badCertId, "rr for a certificate of another CA")
        if serial != auth.signer.serial_number:
            raise CmpFailure(FailInfo.notAuthorized, "rr may only revoke the certificate that signs it")
        reason = "unspecified"
        if details["crlEntryDetails"].isValue:
            for ext in details["crlEntryDetails"]:
                if str(ext["extnID"]) == m.OID_REASON_CODE:
                    try:
                        code = int(m._decode(bytes(ext["extnValue"]), univ.Enumerated()))
                    except (PyAsn1Error, ValueError):
                        raise CmpFailure(FailInfo.badDataFormat, "malformed reasonCode") from None
                    if code not in _REASONS:
                        raise CmpFailure(FailInfo.badRequest, f"revocation reason {code} not accepted")
                    reason = _REASONS[code]
        try:
            self.ca.revoke(serial, reason, at=self._clock())
        except PkiError as exc:
            raise CmpFailure(FailInfo.certRevoked, str(exc)) from None
        log.info("CMP rr %s: revoked %x (%s)", tid, serial, reason)
        self._outcome = RequestOutcome("rr", tid, "revoked", serial, reason=reason)

        def fill(rep: Any) -> None:
            rep["status"].append(m.status_info(PkiStatus.accepted))

        return self._send(msg, auth, "rp", fill, [])

    # -- general messages -----------------------------------------------------------------------------------
    def _genm(self, msg: m.CmpMessage, auth: _Auth) -> bytes:
        """RFC 9483 4.3.1: id-it-caCerts (no value) asks for the CA certificates; the genp carries this CA's chain,
        signed by the CA key whatever protected the genm, so a router without a secret can fetch its trust anchor
        and check the fingerprint out of band. InfoTypes not offered here are left out of the genp (RFC 4210
        5.3.19); none of them is an error."""
        tid = msg.transaction_id.hex()  # type: ignore[union-attr]
        asked = [str(itv["infoType"]) for itv in msg.body]
        if len(asked) > 16:
            raise CmpFailure(FailInfo.badRequest, "more than 16 InfoTypeAndValue in one genm")
        chain = list(self.ca.chain)
        ca_certs = m.OID_IT_CA_CERTS in asked

        def fill(rep: Any) -> None:
            if ca_certs:
                m.append_itav(rep, m.OID_IT_CA_CERTS, m.ca_certs_value(chain))

        others = sorted(set(asked) - {m.OID_IT_CA_CERTS})
        log.info("CMP genm %s: %s", tid, "caCerts" if ca_certs else "nothing offered" + (
            f" (asked {','.join(o[:40] for o in others[:4])})" if others else ""))
        self._outcome = RequestOutcome("genm", tid, "caCerts" if ca_certs else "empty",
                                   reason=f"infoTypes not offered: {','.join(others[:4])}" if others else None)
        return self._send(msg, auth, "genp", fill, [], sign=True)

    _HANDLERS: ClassVar[dict[str, Callable[[CmpResponder, m.CmpMessage, _Auth], bytes]]] = {
        "ir": _cert_request,
        "cr": _cert_request,
        "kur": _cert_request,
        "p10cr": _cert_request,
        "certConf": _cert_conf,
        "pollReq": _poll,
        "rr": _revoke,
        "genm": _genm,
    }

    # -- answers --------------------------------------------------------------------------------------------
    def _send(self, msg: m.CmpMessage | None, auth: _Auth, body_type: str, fill: Callable[[Any], None],
              extra: list[x509.Certificate], *, implicit: bool = False, sign: bool = False) -> bytes:
        """An answer protected as the request was: with its secret (MAC), else (or with ``sign``) signed by the
        CA key."""
        if auth.secret is not None and auth.reference is not None and not sign:
            protection: m.Protection = m.MacProtection(auth.reference.encode(), auth.secret)
            extra_certs = extra
        else:
            chain = list(self.ca.chain)
            protection = m.SignatureProtection(self.ca.private_key, self.ca.certificate)
            extra_certs = chain + [c for c in extra if c not in chain]
        return m.build_message(
            body_type=body_type,
            fill_body=fill,
            sender=self.ca.certificate.subject.public_bytes(),
            recipient=msg.sender if msg is not None else None,
            transaction_id=msg.transaction_id if msg is not None and msg.transaction_id else self._random(16),
            sender_nonce=self._random(16),
            recip_nonce=msg.sender_nonce if msg is not None else None,
            protection=protection,
            extra_certs=extra_certs,
            implicit_confirm=implicit,
            pvno=msg.pvno if msg is not None else 2,
            now=self._clock(),
        )

    def _error(self, msg: m.CmpMessage | None, auth: _Auth, fail: FailInfo, text: str) -> bytes:
        tid = msg.transaction_id.hex() if msg is not None and msg.transaction_id else None
        log.info("CMP %s %s: refused, %s: %s", msg.body_type if msg else "-", tid, fail.name, text)
        self._outcome = RequestOutcome(msg.body_type if msg else None, tid, "refused", fail_info=fail.name,
                                   reason=text)

        def fill(err: Any) -> None:
            err["pKIStatusInfo"] = m.status_info(PkiStatus.rejection, fail, text)

        return self._send(msg, auth, "error", fill, [])


def _extensions_der(exts: list[x509.Extension]) -> bytes:
    out = rfc5280.Extensions()
    for e in exts:
        ext = rfc5280.Extension()
        ext["extnID"] = univ.ObjectIdentifier(e.oid.dotted_string)
        ext["critical"] = e.critical
        ext["extnValue"] = e.value.public_bytes()
        out.append(ext)
    return encoder.encode(out)  # type: ignore[no-any-return]


def _request(subject_der: bytes, spki_der: bytes, ext_der: bytes | None) -> x509.CertificateSigningRequest:
    """A CRMF template as the PKCS#10 request :meth:`CertificateAuthority.issue` takes, the proof of possession
    checked already (its signature field is empty: issue it with ``pop_verified=True`` only)."""
    from asn1crypto import csr as acsr
    from asn1crypto import keys as akeys
    from asn1crypto import x509 as ax

    try:
        attrs = []
        if ext_der is not None:
            attrs = [{"type": "extension_request", "values": [ax.Extensions.load(ext_der)]}]
        info = acsr.CertificationRequestInfo({"version": "v1", "subject": ax.Name.load(subject_der),
                                              "subject_pk_info": akeys.PublicKeyInfo.load(spki_der),
                                              "attributes": attrs})
        req = acsr.CertificationRequest({"certification_request_info": info,
                                         "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                                         "signature": b"\x00"})
        csr = x509.load_der_x509_csr(req.dump())
        _ = csr.extensions, csr.subject  # parse now: a bad SAN is the client's error, not the CA's
        return csr
    except (ValueError, TypeError, KeyError) as exc:
        raise CmpFailure(FailInfo.badCertTemplate, f"the certificate template cannot be used ({exc})") from None

