"""SCEP pkiMessage, CertRep and their CMS layers (RFC 8894), built and parsed with asn1crypto.

Pure: no sockets, no clock (the signing time is passed in), randomness injectable. A pkiMessage is a CMS
SignedData whose content is the pkcsPKIEnvelope (a CMS EnvelopedData ContentInfo, DER, as id-data) and whose
single signer carries the SCEP attributes (messageType, transactionID, nonces, pkiStatus, failInfo).
Everything that can be wrong with bytes a peer sent raises :class:`~pki.scep.errors.ScepFormatError` (not SCEP
at all) or :class:`~pki.scep.errors.ScepFailure` with the failInfo the other side should get back (a bad
signature is badMessageCheck, an algorithm we do not implement is badAlg).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from asn1crypto import algos, cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .constants import MAX_MESSAGE_SIZE, FailInfo, MessageType, Oid, PkiStatus
from .errors import ScepFailure, ScepFormatError

__all__ = [
    "CIPHERS",
    "DIGESTS",
    "PkiMessage",
    "certs_only",
    "envelope",
    "envelope_cipher",
    "issuer_and_serial",
    "issuer_and_subject",
    "open_envelope",
    "parse_certs_only",
    "parse_crls_only",
    "parse_issuer_and_serial",
    "parse_issuer_and_subject",
    "parse_pki_message",
    "sign_pki_message",
    "transaction_id_for",
]

# asn1crypto learns the SCEP attribute types once, so CMSAttribute parses their values with the right spec.
_ATTR_NAMES = {
    Oid.messageType.value: "scep_message_type",
    Oid.pkiStatus.value: "scep_pki_status",
    Oid.failInfo.value: "scep_fail_info",
    Oid.senderNonce.value: "scep_sender_nonce",
    Oid.recipientNonce.value: "scep_recipient_nonce",
    Oid.transactionID.value: "scep_transaction_id",
    Oid.failInfoText.value: "scep_fail_info_text",
}


class _SetOfPrintable(core.SetOf):
    _child_spec = core.PrintableString


class _SetOfOctets(core.SetOf):
    _child_spec = core.OctetString


class _SetOfUtf8(core.SetOf):
    _child_spec = core.UTF8String


_ATTR_SPECS = {
    "scep_message_type": _SetOfPrintable,
    "scep_pki_status": _SetOfPrintable,
    "scep_fail_info": _SetOfPrintable,
    "scep_sender_nonce": _SetOfOctets,
    "scep_recipient_nonce": _SetOfOctets,
    "scep_transaction_id": _SetOfPrintable,
    "scep_fail_info_text": _SetOfUtf8,
}
for _oid, _name in _ATTR_NAMES.items():
    cms.CMSAttributeType._map.setdefault(_oid, _name)
    if cms.CMSAttributeType._reverse_map is not None:  # already set up by asn1crypto: keep both maps in step
        cms.CMSAttributeType._reverse_map.setdefault(_name, _oid)
    cms.CMSAttribute._oid_specs.setdefault(_name, _ATTR_SPECS[_name])

#: Content-encryption algorithms: asn1crypto name -> (key length, cryptography algorithm factory).
CIPHERS: dict[str, tuple[int, Callable[[bytes], object]]] = {
    "aes128_cbc": (16, algorithms.AES),
    "aes192_cbc": (24, algorithms.AES),
    "aes256_cbc": (32, algorithms.AES),
}
try:  # 3DES lives in cryptography's "decrepit" corner; SCEP clients may still ask for it
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES as _TripleDES

    CIPHERS["tripledes_3key"] = (24, _TripleDES)
except ImportError:  # pragma: no cover - older cryptography
    pass

#: Digest algorithms accepted in SignerInfo.
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_NONCE_LEN = 16


@dataclass(frozen=True)
class PkiMessage:
    """A parsed, signature-checked pkiMessage (a request or a CertRep).

    ``signer`` is the certificate that verified the signature; whether to *trust* it is the caller's call
    (a server accepts a requester's self-signed transient certificate, a client wants the CA or its RA).
    """

    message_type: MessageType
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate
    digest_algorithm: str
    recipient_nonce: bytes | None = None
    pki_status: PkiStatus | None = None
    fail_info: FailInfo | None = None
    fail_info_text: str | None = None
    envelope: bytes | None = field(default=None, repr=False)
    certificates: tuple[x509.Certificate, ...] = field(default=(), repr=False)


# --------------------------------------------------------------------------- helpers


def _to_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def _from_asn1(cert: asn1_x509.Certificate) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(cert.dump())
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is not a ValueError
        raise ScepFormatError(f"a certificate in the message does not parse: {exc}") from None


def _load_content_info(der: bytes, what: str, max_size: int = MAX_MESSAGE_SIZE) -> cms.ContentInfo:
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes")
    der = bytes(der)
    if len(der) > max_size:
        raise ScepFormatError(f"{what} is {len(der)} bytes, more than the {max_size} allowed")
    if not der:
        raise ScepFormatError(f"{what} is empty")
    try:
        info = cms.ContentInfo.load(der, strict=True)
        info["content_type"].native  # noqa: B018 - force the lazy parse now
        info["content"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"{what} is not a DER CMS ContentInfo: {exc}") from None
    return info


def transaction_id_for(public_key: object) -> str:
    """The transactionID RFC 8894 recommends: a hash of the requester's public key (SPKI), hex."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(spki).hexdigest().upper()


# --------------------------------------------------------------------------- EnvelopedData


def envelope(
    content: bytes,
    recipient: x509.Certificate,
    *,
    cipher: str = "aes128_cbc",
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``content`` to ``recipient`` (RSA key transport, PKCS#1 v1.5): the pkcsPKIEnvelope, DER."""
    if cipher not in CIPHERS:
        raise ValueError(f"unsupported content cipher {cipher!r}; use one of {sorted(CIPHERS)}")
    pub = recipient.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise ValueError("SCEP key transport needs an RSA recipient certificate")
    key_len, algo = CIPHERS[cipher]
    cek = random(key_len)
    block = algo(cek).block_size // 8  # type: ignore[attr-defined]
    iv = random(block)
    padder = padding.PKCS7(block * 8).padder()
    padded = padder.update(content) + padder.finalize()
    enc = Cipher(algo(cek), modes.CBC(iv)).encryptor()  # type: ignore[arg-type]
    ciphertext = enc.update(padded) + enc.finalize()
    rcert = _to_asn1(recipient)
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber(
                    {"issuer": rcert.issuer, "serial_number": rcert.serial_number}
                ),
            ),
            "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}),
            "encrypted_key": pub.encrypt(cek, asym_padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
            "encrypted_content_info": cms.EncryptedContentInfo(
                {
                    "content_type": "data",
                    "content_encryption_algorithm": algos.EncryptionAlgorithm(
                        {"algorithm": cipher, "parameters": core.OctetString(iv)}
                    ),
                    "encrypted_content": ciphertext,
                }
            ),
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _open_envelope(der: bytes, key: rsa.RSAPrivateKey, certificate: x509.Certificate | None = None) -> bytes:
    """Decrypt a pkcsPKIEnvelope addressed to ``key`` (the recipient chosen by ``certificate`` when given)."""
    info = _load_content_info(der, "pkcsPKIEnvelope")
    if info["content_type"].native != "enveloped_data":
        raise ScepFormatError(f"pkcsPKIEnvelope is {info['content_type'].native}, not envelopedData")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("SCEP key transport needs an RSA private key")
    try:
        env = info["content"]
        recipients = list(env["recipient_infos"])
        eci = env["encrypted_content_info"]
        alg = eci["content_encryption_algorithm"]
        cipher_name = alg["algorithm"].native
        iv = alg["parameters"].native
        ciphertext = eci["encrypted_content"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed EnvelopedData: {exc}") from None
    if cipher_name not in CIPHERS:
        raise ScepFailure(FailInfo.badAlg, f"content cipher {cipher_name} is not supported")
    if not isinstance(iv, bytes) or not isinstance(ciphertext, bytes):
        raise ScepFormatError("EnvelopedData lacks an IV or the encrypted content")
    wanted = None
    if certificate is not None:
        c = _to_asn1(certificate)
        wanted = (c.issuer.dump(), c.serial_number)
    encrypted_key = None
    for ri in recipients:
        if ri.name != "ktri":
            continue
        ktri = ri.chosen
        rid = ktri["rid"]
        if wanted is not None and rid.name == "issuer_and_serial_number":
            ias = rid.chosen
            if (ias["issuer"].dump(), ias["serial_number"].native) != wanted:
                continue
        encrypted_key = (ktri["key_encryption_algorithm"]["algorithm"].native, ktri["encrypted_key"].native)
        break
    if encrypted_key is None:
        raise ScepFailure(FailInfo.badMessageCheck, "the envelope is not addressed to us")
    kalg, ekey = encrypted_key
    try:
        if kalg == "rsaes_pkcs1v15":
            cek = key.decrypt(ekey, asym_padding.PKCS1v15())
        elif kalg == "rsaes_oaep":
            cek = key.decrypt(ekey, asym_padding.OAEP(asym_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
        else:
            raise ScepFailure(FailInfo.badAlg, f"key transport {kalg} is not supported")
    except ValueError:
        raise ScepFailure(FailInfo.badMessageCheck, "cannot decrypt the content-encryption key") from None
    key_len, algo = CIPHERS[cipher_name]
    if len(cek) != key_len:
        raise ScepFailure(FailInfo.badMessageCheck, "content-encryption key has the wrong length")
    block = algo(cek).block_size // 8  # type: ignore[attr-defined]
    if len(iv) != block or not ciphertext or len(ciphertext) % block:
        raise ScepFormatError("EnvelopedData IV or ciphertext length is wrong for the cipher")
    dec = Cipher(algo(cek), modes.CBC(iv)).decryptor()  # type: ignore[arg-type]
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(block * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ScepFailure(FailInfo.badMessageCheck, "bad padding after decryption") from None


def _envelope_cipher(der: bytes) -> str:
    """The content cipher a pkcsPKIEnvelope uses (a server answers with the one the requester chose)."""
    info = _load_content_info(der, "pkcsPKIEnvelope")
    try:
        return str(
            info["content"]["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed EnvelopedData: {exc}") from None


# --------------------------------------------------------------------------- degenerate SignedData


def certs_only(
    certs: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = ()
) -> bytes:
    """A degenerate SignedData with certificates and/or CRLs (CertRep payloads, the GetCACert chain)."""
    content: dict[str, object] = {
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "certificates": [cms.CertificateChoices(name="certificate", value=_to_asn1(c)) for c in certs],
        "signer_infos": [],
    }
    if crls:
        content["crls"] = [
            cms.RevocationInfoChoice(
                name="crl", value=asn1_crl.CertificateList.load(c.public_bytes(Encoding.DER))
            )
            for c in crls
        ]
    signed = cms.SignedData(content)
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _parse_crls_only(der: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> list[x509.CertificateRevocationList]:
    """The CRLs of a degenerate SignedData (the GetCRL answer)."""
    info = _load_content_info(der, "degenerate SignedData", max_size)
    if info["content_type"].native != "signed_data":
        raise ScepFormatError(f"expected a SignedData, got {info['content_type'].native}")
    out = []
    for choice in info["content"]["crls"] or []:
        if choice.name == "crl":
            try:
                out.append(x509.load_der_x509_crl(choice.chosen.dump()))
            except ValueError as exc:
                raise ScepFormatError(f"malformed CRL in SignedData: {exc}") from None
    return out


def _parse_certs_only(der: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> list[x509.Certificate]:
    """The certificates of a (degenerate) SignedData (a DER SET OF: the order carries no meaning)."""
    info = _load_content_info(der, "certs-only SignedData", max_size)
    if info["content_type"].native != "signed_data":
        raise ScepFormatError(f"expected a SignedData, got {info['content_type'].native}")
    try:
        out = []
        for choice in info["content"]["certificates"] or []:
            if choice.name == "certificate":
                out.append(_from_asn1(choice.chosen))
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed certificate in SignedData: {exc}") from None
    return out


# --------------------------------------------------------------------------- request payloads


def issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    """The CertPoll (GetCertInitial) payload: IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }."""
    return _IssuerAndSubject(
        {
            "issuer": asn1_x509.Name.load(issuer.public_bytes()),
            "subject": asn1_x509.Name.load(subject.public_bytes()),
        }
    ).dump()


def parse_issuer_and_subject(der: bytes) -> tuple[bytes, bytes]:
    """(issuer, subject) as DER Names: compare them with ``x509.Name.public_bytes()``."""
    try:
        v = _IssuerAndSubject.load(der, strict=True)
        return v["issuer"].dump(force=True), v["subject"].dump(force=True)
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed IssuerAndSubject: {exc}") from None


def issuer_and_serial(issuer: x509.Name, serial: int) -> bytes:
    """The GetCert payload: IssuerAndSerialNumber."""
    return cms.IssuerAndSerialNumber(
        {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "serial_number": serial}
    ).dump()


def parse_issuer_and_serial(der: bytes) -> tuple[bytes, int]:
    """(issuer as DER Name, serial)."""
    try:
        v = cms.IssuerAndSerialNumber.load(der, strict=True)
        return v["issuer"].dump(force=True), int(v["serial_number"].native)
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed IssuerAndSerialNumber: {exc}") from None


class _IssuerAndSubject(core.Sequence):
    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]  # noqa: RUF012 - asn1crypto spec


# --------------------------------------------------------------------------- pkiMessage


def _printable(text: object) -> bool:
    return isinstance(text, str) and 0 < len(text) <= 256 and all(32 <= ord(c) < 127 for c in text)


def _attr(name: str, value: object) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": name, "values": [value]})


def sign_pki_message(
    *,
    message_type: MessageType,
    transaction_id: str,
    sender_nonce: bytes,
    signer_cert: x509.Certificate,
    signer_key: object,
    envelope: bytes | None = None,
    recipient_nonce: bytes | None = None,
    pki_status: PkiStatus | None = None,
    fail_info: FailInfo | None = None,
    fail_info_text: str | None = None,
    digest: str = "sha256",
    extra_certs: Sequence[x509.Certificate] = (),
    signing_time: datetime | None = None,
) -> bytes:
    """Sign a pkiMessage (request or CertRep) over ``envelope``; the DER ContentInfo."""
    if digest not in DIGESTS:
        raise ValueError(f"unsupported digest {digest!r}")
    if not _printable(transaction_id):
        raise ValueError("transactionID must be a non-empty printable string")
    content = envelope if envelope is not None else b""
    h = hashes.Hash(DIGESTS[digest]())
    h.update(content)
    attrs = [
        _attr("content_type", "data"),
        _attr("message_digest", h.finalize()),
        _attr("scep_message_type", core.PrintableString(str(int(message_type)))),
        _attr("scep_transaction_id", core.PrintableString(transaction_id)),
        _attr("scep_sender_nonce", core.OctetString(sender_nonce)),
    ]
    if signing_time is not None:
        attrs.insert(2, _attr("signing_time", cms.Time(name="utc_time", value=core.UTCTime(signing_time))))
    if recipient_nonce is not None:
        attrs.append(_attr("scep_recipient_nonce", core.OctetString(recipient_nonce)))
    if pki_status is not None:
        attrs.append(_attr("scep_pki_status", core.PrintableString(str(int(pki_status)))))
    if fail_info is not None:
        attrs.append(_attr("scep_fail_info", core.PrintableString(str(int(fail_info)))))
    if fail_info_text:
        attrs.append(_attr("scep_fail_info_text", core.UTF8String(fail_info_text)))
    signed_attrs = cms.CMSAttributes(attrs)
    to_sign = signed_attrs.dump()  # tagged as SET OF for the signature (RFC 5652 5.4)
    sig_alg, signature = _sign(signer_key, to_sign, digest)
    scert = _to_asn1(signer_cert)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber(
                    {"issuer": scert.issuer, "serial_number": scert.serial_number}
                ),
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    encap: dict[str, object] = {"content_type": "data"}
    if envelope is not None:
        encap["content"] = core.OctetString(envelope)
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": digest})],
            "encap_content_info": encap,
            "certificates": [
                cms.CertificateChoices(name="certificate", value=_to_asn1(c))
                for c in (signer_cert, *extra_certs)
            ],
            "signer_infos": [signer_info],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _sign(key: object, data: bytes, digest: str) -> tuple[algos.SignedDigestAlgorithm, bytes]:
    h = DIGESTS[digest]()
    if isinstance(key, rsa.RSAPrivateKey):
        return (
            algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
            key.sign(data, asym_padding.PKCS1v15(), h),
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return (algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"}), key.sign(data, ec.ECDSA(h)))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return algos.SignedDigestAlgorithm({"algorithm": "ed25519"}), key.sign(data)
    raise TypeError(f"cannot sign a SCEP message with {type(key).__name__}")


def _verify(
    pub: object, sig_alg: algos.SignedDigestAlgorithm, signature: bytes, data: bytes, digest: str
) -> None:
    name = sig_alg["algorithm"].native
    h = DIGESTS[digest]()
    if isinstance(pub, rsa.RSAPublicKey):
        if name == "rsassa_pss":
            params = sig_alg["parameters"]
            hname = params["hash_algorithm"]["algorithm"].native
            if hname not in DIGESTS:
                raise ScepFailure(FailInfo.badAlg, f"PSS hash {hname} is not supported")
            ph = DIGESTS[hname]()
            pub.verify(
                signature, data, asym_padding.PSS(asym_padding.MGF1(ph), params["salt_length"].native), ph
            )
        elif name == "rsassa_pkcs1v15" or name.endswith("_rsa"):
            if name.endswith("_rsa"):
                hname = name[: -len("_rsa")]
                if hname not in DIGESTS:
                    raise ScepFailure(FailInfo.badAlg, f"signature algorithm {name} is not supported")
                h = DIGESTS[hname]()
            pub.verify(signature, data, asym_padding.PKCS1v15(), h)
        else:
            raise ScepFailure(FailInfo.badAlg, f"signature algorithm {name} does not fit an RSA key")
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        if name.endswith("_ecdsa") and name[: -len("_ecdsa")] in DIGESTS:
            h = DIGESTS[name[: -len("_ecdsa")]]()
        elif name != "ecdsa":
            raise ScepFailure(FailInfo.badAlg, f"signature algorithm {name} does not fit an EC key")
        pub.verify(signature, data, ec.ECDSA(h))
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(signature, data)
    else:
        raise ScepFailure(FailInfo.badAlg, f"signer key type {type(pub).__name__} is not supported")


def _parse_pki_message(
    der: bytes, *, max_size: int = MAX_MESSAGE_SIZE, extra_signers: Sequence[x509.Certificate] = ()
) -> PkiMessage:
    """Parse a pkiMessage and verify its signature with the signer certificate it names.

    The signer certificate is looked up among the certificates in the message and ``extra_signers`` (a client
    passes the CA/RA certificates it got from GetCACert, since CAs may omit them from a CertRep).
    """
    info = _load_content_info(der, "pkiMessage", max_size)
    if info["content_type"].native != "signed_data":
        raise ScepFormatError(f"pkiMessage is {info['content_type'].native}, not signedData")
    try:
        signed = info["content"]
        signer_infos = list(signed["signer_infos"])
        certs = []
        for choice in signed["certificates"] or []:
            if choice.name == "certificate":
                certs.append(choice.chosen)
        encap = signed["encap_content_info"]
        econtent = encap["content"].native
        content = bytes(econtent) if econtent is not None else None
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed SignedData: {exc}") from None
    if len(signer_infos) != 1:
        raise ScepFormatError(f"pkiMessage has {len(signer_infos)} signers, SCEP wants exactly one")
    si = signer_infos[0]
    try:
        sid = si["sid"]
        digest = si["digest_algorithm"]["algorithm"].native
        sig_alg = si["signature_algorithm"]
        signature = si["signature"].native
        attrs_field = si["signed_attrs"]
        if attrs_field.native is None:
            raise ScepFormatError("pkiMessage signer has no authenticated attributes")
        attrs: dict[str, object] = {}
        for a in attrs_field:
            t = a["type"].native
            vals = a["values"]
            if len(vals) != 1:
                raise ScepFormatError(f"attribute {t} must have exactly one value")
            if t in attrs:
                raise ScepFormatError(f"attribute {t} appears twice")
            attrs[t] = vals[0].native
        signed_bytes = b"\x31" + attrs_field.dump()[1:]
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFormatError(f"malformed SignerInfo: {exc}") from None
    if digest not in DIGESTS:
        raise ScepFailure(FailInfo.badAlg, f"digest {digest} is not supported")

    tid_raw = attrs.get("scep_transaction_id")
    if not _printable(tid_raw):
        tid_raw = None  # not something we could echo in a reply
    nonce_raw = attrs.get("scep_sender_nonce")
    try:
        signer_cert = _check_signature(
            sid,
            sig_alg,
            signature,
            signed_bytes,
            digest,
            attrs,
            content,
            certs + [_to_asn1(c) for c in extra_signers],
        )
    except ScepFailure as exc:
        # enough context for the server to answer FAILURE to the right transaction
        exc.transaction_id = tid_raw if isinstance(tid_raw, str) else None
        exc.sender_nonce = nonce_raw if isinstance(nonce_raw, bytes) else None
        raise

    def printable_int(key: str, enum: type, required: bool = False):  # type: ignore[no-untyped-def]
        raw = attrs.get(key)
        if raw is None:
            if required:
                raise ScepFormatError(f"pkiMessage lacks the {key[5:]} attribute")
            return None
        try:
            return enum(int(str(raw).strip()))
        except ValueError:
            raise ScepFormatError(f"bad {key[5:]} value {raw!r}") from None

    message_type = printable_int("scep_message_type", MessageType, required=True)
    tid = attrs.get("scep_transaction_id")
    if not isinstance(tid, str) or not tid:
        raise ScepFormatError("pkiMessage lacks the transactionID attribute")
    if not _printable(tid):
        raise ScepFormatError("transactionID is not a printable string")
    sender_nonce = attrs.get("scep_sender_nonce")
    if not isinstance(sender_nonce, bytes):
        raise ScepFormatError("pkiMessage lacks the senderNonce attribute")
    recipient_nonce = attrs.get("scep_recipient_nonce")
    status = printable_int("scep_pki_status", PkiStatus)
    fail = printable_int("scep_fail_info", FailInfo)
    text = attrs.get("scep_fail_info_text")
    return PkiMessage(
        message_type=message_type,
        transaction_id=tid,
        sender_nonce=sender_nonce,
        recipient_nonce=recipient_nonce if isinstance(recipient_nonce, bytes) else None,
        pki_status=status,
        fail_info=fail,
        fail_info_text=text if isinstance(text, str) else None,
        signer=signer_cert,
        digest_algorithm=digest,
        envelope=content or None,
        certificates=tuple(_from_asn1(c) for c in certs),
    )


def _check_signature(sid, sig_alg, signature, signed_bytes, digest, attrs, content, candidates):  # type: ignore[no-untyped-def]
    """Find the signer certificate, verify the signature and messageDigest; the signer certificate."""
    # find the signer certificate
    signer = None
    for c in candidates:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if c.issuer.dump() == ias["issuer"].dump() and c.serial_number == ias["serial_number"].native:
                signer = c
                break
        elif sid.name == "subject_key_identifier":
            if c.key_identifier == sid.chosen.native:
                signer = c
                break
    if signer is None:
        raise ScepFailure(FailInfo.badCertId, "the signer certificate is not in the message")
    try:
        signer_cert = _from_asn1(signer)
        pub = signer_cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ScepFormatError(f"the signer certificate does not parse: {exc}") from None

    # the signature over the attributes, and the digest of the content
    try:
        _verify(pub, sig_alg, signature, signed_bytes, digest)
    except InvalidSignature:
        raise ScepFailure(FailInfo.badMessageCheck, "the pkiMessage signature does not verify") from None
    except UnsupportedAlgorithm as exc:
        raise ScepFailure(FailInfo.badAlg, f"pkiMessage signature algorithm not supported: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepFailure(
            FailInfo.badMessageCheck, f"cannot verify the pkiMessage signature: {exc}"
        ) from None
    h = hashes.Hash(DIGESTS[digest]())
    h.update(content or b"")
    if attrs.get("message_digest") != h.finalize():
        raise ScepFailure(FailInfo.badMessageCheck, "messageDigest does not match the content")
    if attrs.get("content_type") not in (None, "data"):
        raise ScepFormatError(f"signed contentType is {attrs.get('content_type')}, not data")
    return signer_cert


def _robust(fn):  # type: ignore[no-untyped-def]
    """asn1crypto parses lazily, so malformed input surfaces anywhere: here it becomes ScepFormatError."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            if args and not isinstance(args[0], (bytes, bytearray, memoryview)):
                raise  # misuse (wrong argument type): not the peer's fault
            raise ScepFormatError(f"malformed SCEP structure: {str(exc).splitlines()[0][:200]}") from None

    return wrapper


open_envelope = _robust(_open_envelope)
parse_certs_only = _robust(_parse_certs_only)
parse_crls_only = _robust(_parse_crls_only)
parse_pki_message = _robust(_parse_pki_message)
envelope_cipher = _robust(_envelope_cipher)
