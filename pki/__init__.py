"""espresso's PKI: key pairs, PKCS#10, a CA with a SQLite database, the router's certificate store, and the
certificate validator IKE calls for every peer.

Layers (importing only downward): errors, _files -> keys, certs, csr -> db, ca / profile, revocation -> validate ->
store, reenroll -> __main__. ``pki.scep``, ``pki.ocsp``, ``pki.fetch`` and ``pki.service`` (the network edges) sit
beside them.
"""
from __future__ import annotations

from pki.ca import PROFILES, CaConfig, CertificateAuthority, IssueProfile
from pki.certs import SubjectAltNames, fingerprint, load_certificate, load_certificates, load_crl
from pki.csr import build_csr, challenge_password, load_csr
from pki.db import CertificateRecord, CertStatus
from pki.errors import (
    CaError,
    CertificateRejected,
    CorruptInputError,
    CsrSignatureError,
    InputTooLargeError,
    KeyFileError,
    PassphraseError,
    PkiError,
    RejectReason,
    RevocationUnavailable,
    StoreError,
    UnknownSerialError,
)
from pki.keys import KeySpec, KeyType, generate_private_key, load_private_key, parse_key_spec
from pki.profile import AutoReenrollment, CaProfile, RevocationMode, RevocationPolicy
from pki.store import Store
from pki.validate import IdType, TrustAnchor, ValidationPolicy, Validator, VerifiedChain

__all__ = [
    "AutoReenrollment",
    "CaProfile",
    "IdType",
    "RevocationMode",
    "RevocationPolicy",
    "Store",
    "TrustAnchor",
    "ValidationPolicy",
    "Validator",
    "VerifiedChain",
    "PROFILES",
    "CaConfig",
    "CaError",
    "CertStatus",
    "CertificateAuthority",
    "CertificateRecord",
    "CertificateRejected",
    "CorruptInputError",
    "CsrSignatureError",
    "InputTooLargeError",
    "IssueProfile",
    "KeyFileError",
    "KeySpec",
    "KeyType",
    "PassphraseError",
    "PkiError",
    "RejectReason",
    "RevocationUnavailable",
    "StoreError",
    "SubjectAltNames",
    "UnknownSerialError",
    "build_csr",
    "challenge_password",
    "fingerprint",
    "generate_private_key",
    "load_certificate",
    "load_certificates",
    "load_crl",
    "load_csr",
    "load_private_key",
    "parse_key_spec",
]
