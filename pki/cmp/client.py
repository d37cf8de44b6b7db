"""The router side of CMPv2 (RFC 4210/9480, lightweight profile RFC 9483) over HTTP (RFC 6712).

Three exchanges, as a JUNOS router has them:

* :func:`enroll`: initial request (ir) protected by the reference number and secret the CA administrator gave
  out (PasswordBasedMac). The answer must carry a valid MAC made with the same secret, so the CA certificate
  it delivers in caPubs is as authentic as the secret; when the CA profile already has a CA certificate, the
  new certificate must chain to it instead.
* :func:`key_update`: kur signed with the current certificate and key, for a certificate on a new key.
* :func:`revoke`: rr signed with the certificate being revoked.
* :func:`get_ca_certs`: genm for id-it-caCerts (RFC 9483 4.3.1), JUNOS ``ca-certificate enroll`` over CMP. The
  genm goes unprotected (or with a reference and secret); the genp must be signed by a certificate of the set it
  carries, whose root is self-signed. That proves only that the set is consistent: like SCEP's GetCACert, the
  operator checks the root's fingerprint out of band.

Signed answers must come from a CA certificate the caller trusts (or a certificate it issued directly).
Every answer must carry the request's transactionID and echo its senderNonce. A ``waiting`` answer is
polled (pollReq) at most ``retry_count`` times. A new certificate is confirmed (certConf/pkiConf) unless the
CA granted implicit confirmation; one that does not match the key is rejected in the certConf.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyasn1.codec.der import encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4211, rfc5280

from pki.fetch import DEFAULT_TIMEOUT, http_request

from . import messages as m
from .messages import CmpError, CmpFailure, CmpFormatError, PkiStatus
from .server import cert_hash

__all__ = ["CmpEnrollment", "enroll", "get_ca_certs", "key_update", "revoke"]

Transport = Callable[[str, bytes], bytes]


def _http(url: str, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    resp = http_request("POST", url, data, m.CONTENT_TYPE, timeout=timeout, max_size=m.MAX_MESSAGE_SIZE)
    if resp.content_type != m.CONTENT_TYPE:
        raise CmpError(f"{url}: answer of type {resp.content_type}, not {m.CONTENT_TYPE}")
    return resp.body


@dataclass(frozen=True)
class CmpEnrollment:
    """A certificate from an ir/kur, with the CA certificates the CA sent (caPubs) and its extraCerts."""

    certificate: x509.Certificate
    ca_pubs: list[x509.Certificate]
    extra_certs: list[x509.Certificate]


def _spki_der(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class _Transaction:
    """One CMP transaction: its transactionID, the nonce each answer must echo, and how answers are checked."""

    def __init__(self, url: str, protection: m.Protection | None, *, recipient: bytes | None, sender: bytes | None,
                 trusted: Sequence[x509.Certificate], transport: Transport | None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.url = url
        self.protection = protection
        self.recipient = recipient
        self.sender = sender
        self.trusted = list(trusted)
        self._post = transport or _http
        self._random = random
        self.tid = random(16)
        self._recip_nonce: bytes | None = None
        #: for an answer that brings its own trust (genp caCerts): the certificates its signer must chain to
        self.trust_from_answer: Callable[[m.CmpMessage], list[x509.Certificate]] | None = None

    def send(self, body_type: str, fill: Callable[[Any], None], *, implicit_confirm: bool = False,
             extra: Sequence[x509.Certificate] = ()) -> m.CmpMessage:
        nonce = self._random(16)
        der = m.build_message(body_type=body_type, fill_body=fill, sender=self.sender, recipient=self.recipient,
                              transaction_id=self.tid, sender_nonce=nonce, recip_nonce=self._recip_nonce,
                              protection=self.protection, extra_certs=list(extra),
                              implicit_confirm=implicit_confirm)
        try:
            answer = m.parse_message(self._post(self.url, der))
        except CmpFormatError as exc:
            raise CmpError(f"{self.url}: the answer is not a CMP message ({exc})") from None
        except CmpFailure as exc:
            raise CmpError(f"{self.url}: {exc}") from None
        checked = self._check(answer, nonce)
        if answer.body_type == "error":
            status, fails, text = m.read_status(answer.body["pKIStatusInfo"])
            note = "" if checked else " (unauthenticated answer)"
            raise CmpError(f"the CA refused the {body_type}: {PkiStatus(status).name if status < 7 else status}"
                           + (f", failInfo {','.join(fails)}" if fails else "") + (f": {text}" if text else "")
                           + note)
        if not checked:
            raise CmpError(f"{self.url}: the answer's protection does not verify")
        self._recip_nonce = answer.sender_nonce
        return answer

    def _check(self, answer: m.CmpMessage, nonce: bytes) -> bool:
        """True when the answer is authentic; CmpError when it belongs to another exchange."""
        if answer.transaction_id != self.tid:
            raise CmpError(f"{self.url}: the answer carries another transactionID")
        if answer.recip_nonce != nonce:
            raise CmpError(f"{self.url}: the answer does not echo our senderNonce (replayed?)")
        if self.trust_from_answer is not None and answer.body_type != "error":
            self.trusted = self.trust_from_answer(answer)
        try:
            if isinstance(self.protection, m.MacProtection) and answer.protection_oid == m.OID_PBM:
                answer.check_mac(self.protection.secret)
                return True
            # RFC 9483 3.3: the protection certificate comes first in extraCerts; OpenSSL's mock server sends
            # none when the client should know it: then it is a trusted certificate named by senderKID or sender
            for signer in self._candidates(answer):
                if any(signer == t or _issued_by(signer, t) for t in self.trusted):
                    answer.check_signature(signer)
                    return True
            return False
        except CmpFailure:
            return False

    def _candidates(self, answer: m.CmpMessage) -> list[x509.Certificate]:
        if answer.extra_certs:
            return answer.extra_certs[:1]
        found = []
        for cert in self.trusted:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                ski = None
            if (answer.sender_kid is not None and ski == answer.sender_kid) or (
                    answer.sender_kid is None and answer.sender == cert.subject.public_bytes()):
                found.append(cert)
        return found


def _template(tmpl: Any, subject: x509.Name | None, public_key: Any, sans: Sequence[x509.GeneralName]) -> None:
    if subject is not None:
        m.set_name(tmpl["subject"], subject.public_bytes())
    spki = m._decode(_spki_der(public_key), rfc5280.SubjectPublicKeyInfo())
    m._copy_into(tmpl["publicKey"], spki)
    if sans:
        san = x509.SubjectAlternativeName(list(sans))
        ext = rfc5280.Extension()
        ext["extnID"] = univ.ObjectIdentifier(san.oid.dotted_string)
        ext["critical"] = subject is None or not list(subject)
        ext["extnValue"] = san.public_bytes()
        tmpl["extensions"].append(ext)


def _cert_req_messages(reqs: Any, key: Any, subject: x509.Name | None, sans: Sequence[x509.GeneralName],
                       old: x509.Certificate | None = None) -> None:
    msg = reqs.componentType.clone()
    cert_req = msg["certReq"]
    cert_req["certReqId"] = 0
    _template(cert_req["certTemplate"], subject, key.public_key(), sans)
    if old is not None:  # RFC 9483 4.1.3: the certificate being updated
        cid = rfc4211.CertId()
        set_dir = cid["issuer"]["directoryName"]
        m.set_name(set_dir, old.issuer.public_bytes())
        cid["serialNumber"] = old.serial_number
        atv = rfc4211.AttributeTypeAndValue()
        atv["type"] = univ.ObjectIdentifier(m.OID_REGCTRL_OLDCERTID)
        atv["value"] = univ.Any(encoder.encode(cid))
        cert_req["controls"].append(atv)
    oid, signature = m.sign(key, encoder.encode(cert_req))
    popo = msg["popo"]["signature"]
    m._copy_into(popo["algorithmIdentifier"], m.sig_alg_id(oid))
    popo["signature"] = univ.BitString.fromOctetString(signature)
    reqs.append(msg)


def _answer_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A CA's answer that parses as a PKIMessage may still lack what it should carry: a clear CmpError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (PyAsn1Error, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise CmpError(f"malformed answer from the CA ({type(exc).__name__}: {str(exc)[:120]})") from None
        except ValueError as exc:  # cryptography refusing a certificate in it
            raise CmpError(f"malformed answer from the CA ({str(exc)[:120]})") from None

    return wrapper


@_answer_errors
def _certificate_exchange(tx: _Transaction, body_type: str, fill: Callable[[Any], None], key: Any, *,
                          extra: Sequence[x509.Certificate], implicit_confirm: bool, retry_count: int,
                          retry_interval: float, sleep: Callable[[float], None]) -> CmpEnrollment:
    answer = tx.send(body_type, fill, implicit_confirm=implicit_confirm, extra=extra)
    polls = 0
    while True:
        if answer.body_type == "pollRep":
            wait = float(answer.body[0]["checkAfter"]) if len(answer.body) else retry_interval
        elif answer.body_type in ("ip", "cp", "kup"):
            resp = answer.body["response"][0] if len(answer.body["response"]) else None
            if resp is None:
                raise CmpError(f"{tx.url}: {answer.body_type} without a response")
            status, fails, text = m.read_status(resp["status"])
            if status == PkiStatus.waiting:
                wait = retry_interval
            elif status in (PkiStatus.accepted, PkiStatus.grantedWithMods):
                break
            else:
                raise CmpError(f"the CA refused the {body_type}: status {status}"
                               + (f", failInfo {','.join(fails)}" if fails else "") + (f": {text}" if text else ""))
        else:
            raise CmpError(f"{tx.url}: unexpected {answer.body_type} in answer to {body_type}")
        if polls >= retry_count:
            raise CmpError(f"the request is still waiting for the CA operator after {polls} polls; "
                           "run the enrollment again later")
        polls += 1
        sleep(min(max(wait, 1.0), 3600.0))

        def poll(body: Any) -> None:
            item = body.componentType.clone()
            item["certReqId"] = 0
            body.append(item)

        answer = tx.send("pollReq", poll, extra=extra)
    coe = resp["certifiedKeyPair"]["certOrEncCert"]
    if not resp["certifiedKeyPair"].isValue or coe.getName() != "certificate":
        raise CmpError(f"{tx.url}: the answer carries no (plain) certificate")
    cert = m.cert_from_asn1(coe["certificate"])
    ca_pubs = [m.cert_from_asn1(c) for c in answer.body["caPubs"]] if answer.body["caPubs"].isValue else []
    good = _spki_der(cert.public_key()) == _spki_der(key.public_key())
    if not (implicit_confirm and answer.implicit_confirm):

        def conf(body: Any) -> None:
            st = body.componentType.clone()
            st["certHash"] = cert_hash(cert)
            st["certReqId"] = int(resp["certReqId"])
            st["statusInfo"] = m.status_info(PkiStatus.accepted) if good else m.status_info(
                PkiStatus.rejection, m.FailInfo.badCertTemplate, "the certificate is not for the requested key")
            body.append(st)

        done = tx.send("certConf", conf, extra=extra)
        if done.body_type != "pkiconf":
            raise CmpError(f"{tx.url}: {done.body_type} in answer to certConf, not pkiConf")
    if not good:
        raise CmpError("the CA returned a certificate for a different key")
    return CmpEnrollment(cert, ca_pubs, answer.extra_certs)


def enroll(url: str, key: Any, subject: x509.Name, sans: Sequence[x509.GeneralName] = (), *, reference: str,
           secret: str, ca_certs: Sequence[x509.Certificate] = (), recipient: bytes | None = None,
           implicit_confirm: bool = False,
           retry_count: int = 10, retry_interval: float = 30.0, sleep: Callable[[float], None] = time.sleep,
           transport: Transport | None = None) -> CmpEnrollment:
    """Initial enrollment (ir) with a reference number and secret (PasswordBasedMac).

    With ``ca_certs``, the new certificate must be issued by one of them; without, by the CA certificate the
    MAC-protected answer carries in caPubs (which the caller should then show and keep). ``recipient`` is the
    CA's name (DER) when no CA certificate is known yet (JUNOS ca-dn); else the NULL-DN is sent."""
    if not reference or not secret:
        raise ValueError("CMP initial enrollment needs a reference number and a secret")
    protection = m.MacProtection(reference.encode(), secret.encode())
    if ca_certs:
        recipient = ca_certs[0].subject.public_bytes()
    tx = _Transaction(url, protection, recipient=recipient, sender=subject.public_bytes(), trusted=ca_certs,
                      transport=transport)
    result = _certificate_exchange(
        tx, "ir", lambda body: _cert_req_messages(body, key, subject, sans), key, extra=(),
        implicit_confirm=implicit_confirm, retry_count=retry_count, retry_interval=retry_interval, sleep=sleep)
    anchors = list(ca_certs) or result.ca_pubs
    if not any(_issued_by(result.certificate, a) for a in anchors + result.extra_certs):
        raise CmpError("the new certificate is not issued by the CA certificate of the profile"
                       if ca_certs else "the new certificate is not issued by a CA certificate in caPubs")
    return result


def key_update(url: str, cert: x509.Certificate, key: Any, new_key: Any, ca_certs: Sequence[x509.Certificate], *,
               implicit_confirm: bool = False, retry_count: int = 10, retry_interval: float = 30.0,
               sleep: Callable[[float], None] = time.sleep, transport: Transport | None = None) -> CmpEnrollment:
    """Key update (kur) signed with the current certificate: its subject (which RFC 4211 4.1 wants in the template
    when the proof of possession is a plain signature) on ``new_key``; the CA copies the names."""
    if not ca_certs:
        raise CmpError("a key update needs the CA certificate to check the CA's signed answers")
    protection = m.SignatureProtection(key, cert)
    tx = _Transaction(url, protection, recipient=cert.issuer.public_bytes(), sender=cert.subject.public_bytes(),
                      trusted=ca_certs, transport=transport)
    result = _certificate_exchange(
        tx, "kur", lambda body: _cert_req_messages(body, new_key, cert.subject, (), old=cert), new_key, extra=[cert],
        implicit_confirm=implicit_confirm, retry_count=retry_count, retry_interval=retry_interval, sleep=sleep)
    if not any(_issued_by(result.certificate, a) for a in ca_certs):
        raise CmpError("the new certificate is not issued by the CA certificate of the profile")
    return result


_REASONS = {"unspecified": 0, "key_compromise": 1, "ca_compromise": 2, "affiliation_changed": 3,
            "superseded": 4, "cessation_of_operation": 5, "certificate_hold": 6, "privilege_withdrawn": 9,
            "aa_compromise": 10}


def revoke(url: str, cert: x509.Certificate, key: Any, ca_certs: Sequence[x509.Certificate], *,
           reason: str = "unspecified", transport: Transport | None = None) -> None:
    """Revocation request (rr) for ``cert``, signed with it (RFC 9483 4.2)."""
    code = _REASONS.get(reason.replace("-", "_").lower())
    if code is None:
        raise ValueError(f"unknown revocation reason {reason!r} ({', '.join(_REASONS)})")
    if not ca_certs:
        raise CmpError("a revocation request needs the CA certificate to check the CA's signed answer")
    tx = _Transaction(url, m.SignatureProtection(key, cert), recipient=cert.issuer.public_bytes(),
                      sender=cert.subject.public_bytes(), trusted=ca_certs, transport=transport)

    def fill(body: Any) -> None:
        details = body.componentType.clone()
        tmpl = details["certDetails"]
        m.set_name(tmpl["issuer"], cert.issuer.public_bytes())
        tmpl["serialNumber"] = cert.serial_number
        ext = rfc5280.Extension()
        ext["extnID"] = univ.ObjectIdentifier(m.OID_REASON_CODE)
        ext["extnValue"] = encoder.encode(univ.Enumerated(code))
        details["crlEntryDetails"].append(ext)
        body.append(details)

    _rr(tx, fill, cert)


@_answer_errors
def _rr(tx: _Transaction, fill: Callable[[Any], None], cert: x509.Certificate) -> None:
    url = tx.url
    answer = tx.send("rr", fill, extra=[cert])
    if answer.body_type != "rp":
        raise CmpError(f"{url}: {answer.body_type} in answer to rr, not rp")
    status, fails, text = m.read_status(answer.body["status"][0])
    if status not in (PkiStatus.accepted, PkiStatus.grantedWithMods, PkiStatus.revocationWarning,
                      PkiStatus.revocationNotification):
        raise CmpError(f"the CA refused the revocation: status {status}"
                       + (f", failInfo {','.join(fails)}" if fails else "") + (f": {text}" if text else ""))


def _is_ca_cert(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_ca_chain(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates of a caCerts answer, if they form chains to a self-signed root: every one a CA
    certificate, at least one root (self-signed, its signature verifying), and every other one issued by a
    certificate of the set that leads to a root. :class:`CmpError` says which rule failed."""
    if not certs:
        raise CmpError("the CA sent an empty set of CA certificates")
    for c in certs:
        if not _is_ca_cert(c):
            raise CmpError(f"{c.subject.rfc4514_string()} in the CA certificates is not a CA certificate "
                           "(basicConstraints cA is not set)")
    roots = [c for c in certs if c.subject == c.issuer and _issued_by(c, c)]
    if not roots:
        raise CmpError("no self-signed root among the CA certificates the CA sent")
    anchored = list(roots)
    for _ in range(len(certs)):  # each round anchors at least one more, or the rest never will
        more = [c for c in certs if c not in anchored and any(_issued_by(c, a) for a in anchored)]
        if not more:
            break
        anchored.extend(more)
    loose = [c for c in certs if c not in anchored]
    if loose:
        raise CmpError(f"{loose[0].subject.rfc4514_string()} in the CA certificates does not chain to a "
                       "self-signed root of the set")
    return list(certs)


def _ca_certs_of(answer: m.CmpMessage) -> list[x509.Certificate]:
    if answer.body_type != "genp":
        raise CmpError(f"{answer.body_type} in answer to genm, not genp")
    for itv in answer.body:
        if str(itv["infoType"]) != m.OID_IT_CA_CERTS:
            continue
        if not itv["infoValue"].isValue:
            raise CmpError("the CA has no CA certificates to send (caCerts without a value)")
        value = m._decode(bytes(itv["infoValue"]), m.rfc9480.CaCertsValue())
        return check_ca_chain([m.cert_from_asn1(c) for c in value])
    raise CmpError("the CA's genp carries no caCerts (it does not offer RFC 9483 4.3.1)")


@_answer_errors
def get_ca_certs(url: str, *, reference: str | None = None, secret: str | None = None,
                 recipient: bytes | None = None, transport: Transport | None = None) -> list[x509.Certificate]:
    """genm id-it-caCerts: the CA's certificates (the CA first, up to the root), as the CA's genp carries them.

    Unprotected unless ``reference`` and ``secret`` are given (PasswordBasedMac; a MAC-protected genp then needs
    no further proof). A signed genp must be signed by a certificate of the set or one it issued directly."""
    protection = m.MacProtection(reference.encode(), secret.encode()) if reference and secret else None
    tx = _Transaction(url, protection, recipient=recipient, sender=None, trusted=[], transport=transport)
    certs: list[x509.Certificate] = []

    def trust(answer: m.CmpMessage) -> list[x509.Certificate]:
        certs[:] = _ca_certs_of(answer)
        return certs

    tx.trust_from_answer = trust

    tx.send("genm", lambda body: m.append_itav(body, m.OID_IT_CA_CERTS))
    return certs
