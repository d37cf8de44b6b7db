"""Text for ``show security pki ...``: summaries and ``detail`` views of certificates, requests and CRLs.

Pure formatting: callers pass the objects and the instant (``at``) that decides a certificate's status.
"""
from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.certs import fingerprint, sans_of
from pki.keys import describe_public_key
from pki.revocation import crl_urls, ocsp_urls

__all__ = ["certificate_status", "fmt_time", "show_certificate", "show_crl", "show_request"]

_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
              ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning", ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
              ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage"}


def fmt_time(dt: datetime) -> str:
    return dt.strftime("%m-%d-%Y %H:%M UTC")


def certificate_status(cert: x509.Certificate, at: datetime) -> str:
    if at < cert.not_valid_before_utc:
        return "not yet valid"
    if at > cert.not_valid_after_utc:
        return "expired"
    return "valid"


def _key(pub: object) -> str:
    kind, size = describe_public_key(pub)  # type: ignore[arg-type]
    if kind == "ECDSA":
        return f"ECDSA ({size} bits, {pub.curve.name})"  # type: ignore[attr-defined]
    return f"{kind} ({size} bits)"


def _sig(obj: x509.Certificate | x509.CertificateSigningRequest | x509.CertificateRevocationList) -> str:
    oid = obj.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string


def _sans(obj: x509.Certificate | x509.CertificateSigningRequest) -> str:
    try:
        names = sans_of(obj).describe()
    except Exception:
        return "(malformed)"
    return ", ".join(names) if names else "(none)"


def show_certificate(cert: x509.Certificate, at: datetime, *, label: str = "", detail: bool = False,
                     extra: dict[str, str] | None = None, label_kind: str = "Certificate identifier") -> str:
    lines = []
    if label:
        lines.append(f"{label_kind}: {label}")
    lines += [
        f"  Issued to: {cert.subject.rfc4514_string()}",
        f"  Issued by: {cert.issuer.rfc4514_string()}",
        f"  Serial number: {cert.serial_number:x}",
        "  Validity:",
        f"    Not before: {fmt_time(cert.not_valid_before_utc)}",
        f"    Not after: {fmt_time(cert.not_valid_after_utc)}",
        f"  Public key algorithm: {_key(cert.public_key())}",
        f"  Status: {certificate_status(cert, at)}",
    ]
    if detail:
        lines.append(f"  Certificate version: {cert.version.value + 1}")
        lines.append(f"  Signature algorithm: {_sig(cert)}")
        lines.append(f"  Subject alternative names: {_sans(cert)}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            lines.append(f"  Basic constraints: CA={'yes' if bc.ca else 'no'}"
                         + (f", path length {bc.path_length}" if bc.path_length is not None else ""))
        except x509.ExtensionNotFound:
            pass
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            names = [n for n in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                                 "key_agreement", "key_cert_sign", "crl_sign") if getattr(ku, n)]
            lines.append(f"  Key usage: {', '.join(names)}")
        except x509.ExtensionNotFound:
            pass
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            lines.append("  Extended key usage: " + ", ".join(
                _EKU_NAMES.get(o, "ipsecIKE" if o.dotted_string == "1.3.6.1.5.5.7.3.17" else o.dotted_string) for o in eku))
        except x509.ExtensionNotFound:
            pass
        for u in crl_urls(cert):
            lines.append(f"  Distribution CRL: {u}")
        for u in ocsp_urls(cert):
            lines.append(f"  OCSP responder: {u}")
        lines.append(f"  Fingerprint: {fingerprint(cert, 'sha256')} (sha256)")
        lines.append(f"               {fingerprint(cert, 'sha1')} (sha1)")
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def show_request(csr: x509.CertificateSigningRequest, *, label: str = "", detail: bool = False) -> str:
    from pki.csr import challenge_password

    lines = [f"Certificate identifier: {label}"] if label else []
    lines += [f"  Subject: {csr.subject.rfc4514_string()}", f"  Public key algorithm: {_key(csr.public_key())}",
              f"  Subject alternative names: {_sans(csr)}"]
    if detail:
        lines.append(f"  Signature algorithm: {_sig(csr)}")
        lines.append(f"  Signature: {'valid' if csr.is_signature_valid else 'INVALID'}")
        lines.append(f"  Challenge password: {'present' if challenge_password(csr) is not None else 'absent'}")
    return "\n".join(lines)


def show_crl(crl: x509.CertificateRevocationList, at: datetime, *, label: str = "", detail: bool = False) -> str:
    nu = crl.next_update_utc
    lines = [f"CA profile: {label}"] if label else []
    lines += [f"  Issuer: {crl.issuer.rfc4514_string()}", f"  Effective date: {fmt_time(crl.last_update_utc)}",
              f"  Next update: {fmt_time(nu) if nu else '(none)'}",
              f"  Status: {'expired' if nu is not None and at > nu else 'current'}",
              f"  Revoked certificates: {len(crl)}"]
    if detail:
        try:
            lines.append(f"  CRL number: {crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number}")
        except x509.ExtensionNotFound:
            pass
        for r in crl:
            reason = ""
            try:
                reason = " " + r.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
            except (x509.ExtensionNotFound, ValueError):
                pass
            lines.append(f"    Serial {r.serial_number:x} revoked {fmt_time(r.revocation_date_utc)}{reason}")
    return "\n".join(lines)
