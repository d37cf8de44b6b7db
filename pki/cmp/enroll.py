"""CMPv2 for the router's store: the JUNOS verbs ``local-certificate enroll ... cmpv2``, key update and revocation.

Kept beside the store rather than in it: the store knows files, this module knows which of them a CMP exchange
reads and writes. The key and certificate of a certificate-id change together (:meth:`Store.install`), so an
interrupted key update leaves the old pair in use.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.certs import SubjectAltNames, certificates_to_pem, parse_subject
from pki.errors import StoreError
from pki.keys import generate_private_key, parse_key_spec

from . import client
from .messages import CmpError

__all__ = ["enroll_local_certificate", "key_update", "revoke_local_certificate"]


def _url(store: Any, profile_name: str) -> str:
    profile = store.profile(profile_name)
    if not profile.enrollment_url:
        raise StoreError(f"ca-profile {profile_name!r} has no enrollment url (the CA's CMP URL)")
    return str(profile.enrollment_url)


def _signed_by_current(store: Any, certificate_id: str, profile_name: str, passphrase: bytes | None,
                       purpose: str) -> tuple[x509.Certificate, Any, list[x509.Certificate]]:
    """What a kur or rr signed with the current certificate needs: that certificate, its key, and the CA
    certificates that check the answer (the operator is told which is missing, before any message is sent)."""
    cert = store.local_certificate(certificate_id)
    if cert is None:
        raise StoreError(f"certificate-id {certificate_id!r} has no certificate to {purpose}")
    key = store.private_key(certificate_id, passphrase)
    ca_certs = store.ca_certificates(profile_name)
    if not ca_certs:
        raise StoreError(f"no CA certificate for ca-profile {profile_name!r}")
    return cert, key, ca_certs


def enroll_local_certificate(store: Any, certificate_id: str, profile_name: str, subject: str,
                             sans: SubjectAltNames | None, *, reference: str, secret: str,
                             ca_dn: str | None = None, passphrase: bytes | None = None,
                             transport: client.Transport | None = None,
                             sleep: Any = None) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """JUNOS ``local-certificate enroll cmpv2 ... reference-number R challenge-password S``: an ir for the key
    pair of ``certificate_id``. Returns the certificate and the CA certificates newly stored for the profile
    (from caPubs, when the profile had none: show their fingerprints to the operator)."""
    url = _url(store, profile_name)
    profile = store.profile(profile_name)
    key = store.private_key(certificate_id, passphrase)
    ca_certs = store.ca_certificates(profile_name)
    try:
        name = parse_subject(subject)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    names = list(sans.to_extension()) if sans else []
    kw: dict[str, Any] = {"retry_count": profile.retry, "retry_interval": float(profile.retry_interval)}
    if sleep is not None:
        kw["sleep"] = sleep
    if ca_dn and not ca_certs:
        # no CA certificate yet: the recipient is the DN the administrator gave (JUNOS ca-dn)
        kw["recipient"] = parse_subject(ca_dn).public_bytes()
    result = client.enroll(url, key, name, names, reference=reference, secret=secret, ca_certs=ca_certs,
                           transport=transport, **kw)
    new_cas: list[x509.Certificate] = []
    if not ca_certs:
        # the trust anchor from caPubs and, under an intermediate CA, the chain from extraCerts: both came in
        # the MAC-protected answer
        new_cas = []
        for c in result.extra_certs + result.ca_pubs:
            if c not in new_cas and _is_ca(c):
                new_cas.append(c)
        if not any(result.certificate.issuer == c.subject for c in new_cas):
            raise CmpError("the CA sent no CA certificate (caPubs) and the profile has none: "
                           "ca-certificate load it first")
        store.load_ca_certificate(profile_name, certificates_to_pem(new_cas))
    _store_certificate(store, certificate_id, key, result.certificate, passphrase)
    return result.certificate, new_cas


def key_update(store: Any, certificate_id: str, profile_name: str, *, key_type: str | None = None,
               size: int | None = None, passphrase: bytes | None = None,
               transport: client.Transport | None = None, sleep: Any = None) -> x509.Certificate:
    """kur: a certificate for a new key pair (of the same type unless ``key_type``), signed with the current one;
    the new pair replaces the old once the CA confirmed it."""
    url = _url(store, profile_name)
    profile = store.profile(profile_name)
    cert, key, ca_certs = _signed_by_current(store, certificate_id, profile_name, passphrase, "update")
    if key_type is None:
        from pki.keys import describe_public_key

        kind, bits = describe_public_key(key.public_key())
        key_type, size = kind.lower(), size or bits
    new_key = generate_private_key(parse_key_spec(key_type, size))
    kw: dict[str, Any] = {"retry_count": profile.retry, "retry_interval": float(profile.retry_interval)}
    if sleep is not None:
        kw["sleep"] = sleep
    result = client.key_update(url, cert, key, new_key, ca_certs, transport=transport, **kw)
    store.install(certificate_id, new_key, result.certificate, passphrase=passphrase)
    return result.certificate


def revoke_local_certificate(store: Any, certificate_id: str, profile_name: str, *, reason: str = "unspecified",
                             passphrase: bytes | None = None, transport: client.Transport | None = None) -> int:
    """rr for the certificate of ``certificate_id``, signed with it; returns its serial number."""
    url = _url(store, profile_name)
    cert, key, ca_certs = _signed_by_current(store, certificate_id, profile_name, passphrase, "revoke")
    client.revoke(url, cert, key, ca_certs, reason=reason, transport=transport)
    return int(cert.serial_number)


def _store_certificate(store: Any, certificate_id: str, key: Any, cert: x509.Certificate,
                       passphrase: bytes | None) -> None:
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise StoreError("the CA returned a certificate for a different key")
    store.load_local_certificate(certificate_id, cert.public_bytes(serialization.Encoding.PEM), passphrase)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
