"""Local certificates made or moved without a CA: JUNOS ``local-certificate generate-self-signed``, ``export``
and PKCS#12 import.

A self-signed certificate lets two routers authenticate each other before any CA exists (each loads the other's
certificate as a ca-profile's CA certificate). Export hands a certificate to a peer administrator (PEM, DER) or
moves a router's identity, key included, to another box or to strongSwan/Windows (PKCS#12, always encrypted).
PKCS#12 files are written with PBES2 (AES-256-CBC, PBKDF2-SHA256) and an HMAC-SHA256 MAC, what OpenSSL 3 writes
by default (its ``pkcs12`` reads ours, tested); files ``openssl pkcs12 -export`` writes are read back.

These functions work on a :class:`pki.store.Store` through its public methods only.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pki.certs import SubjectAltNames, certificates_to_pem, load_certificates, parse_subject
from pki.csr import signing_hash
from pki.errors import CorruptInputError, InputTooLargeError, PassphraseError, StoreError
from pki.keys import PrivateKey

__all__ = ["PKCS12_KDF_ROUNDS", "ExportFormat", "export_local", "generate_self_signed", "import_pkcs12",
           "is_pkcs12", "load_pkcs12", "to_pkcs12"]

#: PBKDF2 iterations for PKCS#12 files we write (OpenSSL 3's default is 2048; a router's identity deserves more)
PKCS12_KDF_ROUNDS = 100_000
#: JUNOS generate-self-signed has no validity option; a year unless the operator says otherwise
DEFAULT_SELF_SIGNED_DAYS = 365


class ExportFormat(str, enum.Enum):
    PEM = "pem"  # the certificate, then the intermediates stored with it
    DER = "der"  # the certificate alone
    PKCS12 = "pkcs12"  # key, certificate and intermediates, encrypted with a passphrase


def generate_self_signed(store, certificate_id: str, subject: str | x509.Name,  # type: ignore[no-untyped-def]
                         sans: SubjectAltNames | None = None, *, at: datetime, days: int = DEFAULT_SELF_SIGNED_DAYS,
                         add_ca_constraint: bool = False, passphrase: bytes | None = None) -> x509.Certificate:
    """JUNOS ``local-certificate generate-self-signed certificate-id ID subject DN [domain-name D] [ip-address A]
    [email E] [add-ca-constraint]``: a certificate for the certificate-id's key pair, signed by itself, stored
    as its local certificate. ``add_ca_constraint`` sets basicConstraints cA (and keyCertSign), so the
    certificate can also be a peer's trust anchor that issues further certificates."""
    if not 1 <= days <= 36500:
        raise ValueError(f"validity of {days} days is out of range (1-36500)")
    key = store.private_key(certificate_id, passphrase)
    name = parse_subject(subject)
    pub = key.public_key()
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(at - timedelta(minutes=5))  # a peer whose clock is a little behind accepts it
         .not_valid_after(at + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=add_ca_constraint, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=add_ca_constraint,
                                      crl_sign=add_ca_constraint, encipher_only=False, decipher_only=False),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))
    if sans:
        b = b.add_extension(sans.to_extension(), critical=False)
    cert = b.sign(key, signing_hash(key))  # type: ignore[arg-type]
    return store.load_local_certificate(certificate_id, cert.public_bytes(serialization.Encoding.PEM), passphrase)


def _pkcs12_encryption(passphrase: bytes) -> serialization.KeySerializationEncryption:
    if not passphrase:
        raise PassphraseError("a PKCS#12 export needs a non-empty passphrase (it carries the private key)")
    return (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256()).build(passphrase))


def to_pkcs12(name: str, key: PrivateKey, cert: x509.Certificate, chain: Sequence[x509.Certificate],
              passphrase: bytes) -> bytes:
    """DER PKCS#12 (PFX) with ``name`` as the friendlyName of key and certificate."""
    return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, list(chain) or None,
                                                 _pkcs12_encryption(passphrase))


def export_local(store, certificate_id: str, fmt: ExportFormat | str, *,  # type: ignore[no-untyped-def]
                 pkcs12_passphrase: bytes | None = None, passphrase: bytes | None = None) -> bytes:
    """JUNOS ``local-certificate export certificate-id ID type pem|der|pkcs12``. ``passphrase`` unlocks the
    stored key (PKCS#12 only); ``pkcs12_passphrase`` protects the exported file."""
    fmt = ExportFormat(fmt)
    cert, chain = store.certificate_chain(certificate_id)
    if fmt is ExportFormat.DER:
        return cert.public_bytes(serialization.Encoding.DER)
    if fmt is ExportFormat.PEM:
        return certificates_to_pem([cert, *chain])
    if pkcs12_passphrase is None:
        raise PassphraseError("a PKCS#12 export needs a passphrase for the file (--pkcs12-passphrase-file)")
    key = store.private_key(certificate_id, passphrase)
    return to_pkcs12(certificate_id, key, cert, chain, pkcs12_passphrase)


def is_pkcs12(data: bytes) -> bool:
    """Whether ``data`` is structurally a PFX (so a failure to open it means a wrong passphrase)."""
    try:
        from asn1crypto import pkcs12 as asn1_pkcs12

        pfx = asn1_pkcs12.Pfx.load(bytes(data), strict=True)
        return pfx["version"].native == "v3" and pfx["auth_safe"]["content_type"].native in ("data", "signed_data")
    except Exception:  # anything asn1crypto raises on foreign bytes means "not a PFX"
        return False


def load_pkcs12(data: bytes, passphrase: bytes | None, *, source: str = "PKCS#12 file"
                ) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    """(key, certificate, other certificates) of a PFX, with one clear error per way it can fail."""
    from pki._files import MAX_INPUT_BYTES

    if len(data) > MAX_INPUT_BYTES:
        raise InputTooLargeError(f"{source}: larger than {MAX_INPUT_BYTES} bytes")
    if not is_pkcs12(data):
        raise CorruptInputError(f"{source}: not a PKCS#12 (PFX) file")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(bytes(data), passphrase)
    except ValueError:
        if passphrase is None:
            raise PassphraseError(f"{source}: encrypted, a passphrase is needed (--pkcs12-passphrase-file)") from None
        raise PassphraseError(f"{source}: wrong passphrase (or a MAC/cipher this build cannot check)") from None
    except Exception as exc:  # unsupported algorithms and odd encodings from foreign tools
        raise CorruptInputError(f"{source}: cannot be read ({type(exc).__name__}: {exc})") from None
    if key is None or cert is None:
        raise CorruptInputError(f"{source}: holds no private key with its certificate")
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise StoreError(f"{source}: unsupported key type {type(key).__name__}")
    # re-parse through the one certificate loader, so the lazily parsed parts are checked now
    cert = load_certificates(cert.public_bytes(serialization.Encoding.DER), source=source)[0]
    others = [load_certificates(c.public_bytes(serialization.Encoding.DER), source=source)[0] for c in extra]
    return key, cert, others


def import_pkcs12(store, certificate_id: str, data: bytes, pkcs12_passphrase: bytes | None, *,  # type: ignore[no-untyped-def]
                  passphrase: bytes | None = None, source: str = "PKCS#12 file") -> x509.Certificate:
    """JUNOS ``local-certificate load`` of a PKCS#12 file: a new certificate-id gets the key (stored encrypted
    with ``passphrase`` if given), the certificate and the intermediates that came with it, in one atomic step."""
    if certificate_id in store.local_ids():
        raise StoreError(f"certificate-id {certificate_id!r} exists already (clear it first)")
    key, cert, others = load_pkcs12(data, pkcs12_passphrase, source=source)
    chain = [c for c in others if c != cert and c.subject != c.issuer]
    store.install(certificate_id, key, cert, chain=chain, passphrase=passphrase)
    return cert
