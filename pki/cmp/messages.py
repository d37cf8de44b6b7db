"""CMP's wire format (RFC 4210 with the RFC 9480 updates): parse and build PKIMessages, protect and check them.

The structures are ``pyasn1-alt-modules``' ``rfc9480`` classes; this module only adds what CMP's protection
needs: the PasswordBasedMac key derivation (RFC 4210 5.1.3.1) and signatures through ``cryptography``. The
protected bytes are taken from the message as received (its header and body TLVs), never from a re-encoding,
so a client that encodes a field in a way pyasn1 would write differently still verifies.

Nothing here touches a socket, a clock or the CA: the server and the client decide what to send.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, univ
from pyasn1_alt_modules import rfc5280, rfc9480

from pki.errors import PkiError

__all__ = [
    "CONTENT_TYPE",
    "MAX_MESSAGE_SIZE",
    "CmpError",
    "CmpFailure",
    "CmpFormatError",
    "CmpMessage",
    "FailInfo",
    "MacProtection",
    "PkiStatus",
    "SignatureProtection",
    "build_message",
    "parse_message",
]

#: RFC 6712 section 3.4: the media type of a PKIMessage over HTTP, both ways.
CONTENT_TYPE = "application/pkixcmp"
#: Largest PKIMessage accepted: a request with a few certificates in extraCerts fits many times over.
MAX_MESSAGE_SIZE = 64 * 1024
#: PBM iteration counts accepted from a peer: below, the secret is too cheap to guess offline; above, one
#: message could keep the CA busy (RFC 9481 section 6.1.1 leaves the bound to the implementation).
MIN_PBM_ITERATIONS = 100
MAX_PBM_ITERATIONS = 100_000

OID_PBM = "1.2.840.113533.7.66.13"
OID_IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"
OID_REGCTRL_OLDCERTID = "1.3.6.1.5.5.7.5.1.5"
OID_REASON_CODE = "2.5.29.21"
#: RFC 9480 section 4.3 / RFC 9483 section 4.3.1: genm asking for (genp carrying) the CA certificates
OID_IT_CA_CERTS = str(rfc9480.id_it_caCerts)

_OWF = {  # PBM one-way functions
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_OWF_OID = {v: k for k, v in _OWF.items()}
_MAC = {  # PBM MACs
    "1.3.6.1.5.5.8.1.2": "sha1",  # hmac-sha1 (RFC 2404), OpenSSL's default
    "1.2.840.113549.2.9": "sha256",
    "1.2.840.113549.2.10": "sha384",
    "1.2.840.113549.2.11": "sha512",
}
_MAC_OID = {"sha1": "1.3.6.1.5.5.8.1.2", "sha256": "1.2.840.113549.2.9", "sha384": "1.2.840.113549.2.10",
            "sha512": "1.2.840.113549.2.11"}
#: signature algorithms: OID -> (key family, hash name or None)
_SIG = {
    "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "1.2.840.10045.4.3.2": ("ec", "sha256"),
    "1.2.840.10045.4.3.3": ("ec", "sha384"),
    "1.2.840.10045.4.3.4": ("ec", "sha512"),
    "1.3.101.112": ("ed25519", None),
    "1.3.101.113": ("ed448", None),
}
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class FailInfo(enum.IntEnum):
    """PKIFailureInfo bits (RFC 4210 section 5.2.3, RFC 9480)."""

    badAlg = 0
    badMessageCheck = 1
    badRequest = 2
    badTime = 3
    badCertId = 4
    badDataFormat = 5
    wrongAuthority = 6
    incorrectData = 7
    missingTimeStamp = 8
    badPOP = 9
    certRevoked = 10
    certConfirmed = 11
    wrongIntegrity = 12
    badRecipientNonce = 13
    timeNotAvailable = 14
    unacceptedPolicy = 15
    unacceptedExtension = 16
    addInfoNotAvailable = 17
    badSenderNonce = 18
    badCertTemplate = 19
    signerNotTrusted = 20
    transactionIdInUse = 21
    unsupportedVersion = 22
    notAuthorized = 23
    systemUnavail = 24
    systemFailure = 25
    duplicateCertReq = 26


class PkiStatus(enum.IntEnum):
    accepted = 0
    grantedWithMods = 1
    rejection = 2
    waiting = 3
    revocationWarning = 4
    revocationNotification = 5
    keyUpdateWarning = 6


class CmpError(PkiError):
    """A CMP exchange failed (the client's view), or the CMP service cannot run."""


class CmpFormatError(CmpError):
    """The bytes are not a PKIMessage."""


class CmpFailure(CmpError):
    """A peer's message is refused with a PKIFailureInfo bit: the server answers it with an error message."""

    def __init__(self, fail_info: FailInfo, text: str) -> None:
        self.fail_info = fail_info
        self.text = text
        super().__init__(f"{fail_info.name}: {text}")


# -- small DER helpers ---------------------------------------------------------------------------------------
def _tlv(data: bytes, pos: int) -> int:
    """The end of the TLV starting at ``pos`` (definite lengths only, as DER has)."""
    if pos + 2 > len(data):
        raise CmpFormatError("truncated message")
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > len(data):
            raise CmpFormatError("bad length in message")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise CmpFormatError("truncated message")
    return pos + n


def _header_len(data: bytes, pos: int) -> int:
    n = data[pos + 1]
    return 2 + (n & 0x7F if n & 0x80 else 0)


def _seq(content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return b"\x30" + bytes([n]) + content
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(ln)]) + ln + content


def name_der(name: Any) -> bytes:
    """DER of a pyasn1 Name (whatever tag it carried in its container)."""
    plain = rfc5280.Name()
    plain["rdnSequence"] = name["rdnSequence"]
    return encoder.encode(plain)


def _decode(der: bytes, spec: Any) -> Any:
    value, rest = decoder.decode(der, asn1Spec=spec)
    if rest:
        raise PyAsn1Error("trailing data")
    return value


def set_name(target: Any, der: bytes) -> None:
    """Fill a pyasn1 Name slot (possibly tagged) from a Name's DER."""
    target["rdnSequence"] = _decode(der, rfc5280.Name())["rdnSequence"]


def alg_id(oid: str, params: Any = None, *, null: bool = False) -> rfc5280.AlgorithmIdentifier:
    a = rfc5280.AlgorithmIdentifier()
    a["algorithm"] = univ.ObjectIdentifier(oid)
    if params is not None:
        a["parameters"] = params
    elif null:
        a["parameters"] = univ.Null("")
    return a


def cert_to_asn1(cert: x509.Certificate) -> Any:
    return _decode(cert.public_bytes(serialization.Encoding.DER), rfc9480.CMPCertificate())


def cert_from_asn1(value: Any) -> x509.Certificate:
    """A certificate from a pyasn1 value, whatever tag its slot gave it."""
    return x509.load_der_x509_certificate(encoder.encode(_copy_into(rfc9480.CMPCertificate(), value)))


def ca_certs_value(certs: list[x509.Certificate]) -> Any:
    """The value of id-it-caCerts (RFC 9480 section 4.3): the CA's chain, the CA first."""
    value = rfc9480.CaCertsValue()
    for c in certs:
        value.append(cert_to_asn1(c))
    return value


def append_itav(body: Any, info_type: str, value: Any = None) -> None:
    """One InfoTypeAndValue more in a genm or genp body: a genm asks with the type alone (``value`` None), a genp
    answers with the pyasn1 ``value``, carried in DER."""
    itv = body.componentType.clone()
    itv["infoType"] = univ.ObjectIdentifier(info_type)
    if value is not None:
        itv["infoValue"] = univ.Any(encoder.encode(value))
    body.append(itv)


def free_text(text: str) -> rfc9480.PKIFreeText:
    t = rfc9480.PKIFreeText()
    t.append(char.UTF8String(text[:500]))
    return t


def status_info(status: PkiStatus, fail: FailInfo | None = None, text: str | None = None) -> Any:
    si = rfc9480.PKIStatusInfo()
    si["status"] = int(status)
    if text:
        si["statusString"].extend(free_text(text))
    if fail is not None:
        si["failInfo"] = rfc9480.PKIFailureInfo(binValue="0" * int(fail) + "1")
    return si


def read_status(si: Any) -> tuple[int, list[str], str]:
    """(status, names of the failInfo bits, statusString joined) of a PKIStatusInfo."""
    status = int(si["status"])
    fails: list[str] = []
    if si["failInfo"].isValue:
        bits = si["failInfo"].asBinary()
        fails = [FailInfo(i).name if i in FailInfo._value2member_map_ else str(i) for i, b in enumerate(bits)
                 if b == "1"]
    text = "; ".join(str(t) for t in si["statusString"]) if si["statusString"].isValue else ""
    return status, fails, text


# -- protection ----------------------------------------------------------------------------------------------
def pbm_key(secret: bytes, salt: bytes, owf: str, iterations: int) -> bytes:
    """RFC 4210 5.1.3.1: OWF(secret || salt), then OWF applied again until it ran ``iterations`` times."""
    key = hashlib.new(owf, secret + salt).digest()
    for _ in range(iterations - 1):
        key = hashlib.new(owf, key).digest()
    return key


@dataclass(frozen=True)
class MacProtection:
    """PasswordBasedMac with a shared secret; ``reference`` is the senderKID (JUNOS's reference number)."""

    reference: bytes
    secret: bytes = field(repr=False)
    owf: str = "sha256"
    mac: str = "sha256"
    iterations: int = 10_000
    salt: bytes = field(default_factory=lambda: os.urandom(16), repr=False)

    def algorithm(self) -> Any:
        p = rfc9480.PBMParameter()
        p["salt"] = self.salt
        p["owf"] = alg_id(_OWF_OID[self.owf])
        p["iterationCount"] = self.iterations
        p["mac"] = alg_id(_MAC_OID[self.mac])
        return alg_id(OID_PBM, p)

    def sender_kid(self) -> bytes:
        return self.reference

    def protect(self, data: bytes) -> bytes:
        return hmac.new(pbm_key(self.secret, self.salt, self.owf, self.iterations), data, self.mac).digest()


def _sig_hash(key: Any) -> str | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "sha256", 384: "sha384"}.get(key.curve.key_size, "sha512")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return "sha256"


def signature_alg(key: Any) -> str:
    """The signature algorithm OID this project signs with for a private key."""
    h = _sig_hash(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        fam = "ec"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "1.3.101.112"
    elif isinstance(key, ed448.Ed448PrivateKey):
        return "1.3.101.113"
    elif isinstance(key, rsa.RSAPrivateKey):
        fam = "rsa"
    else:
        raise CmpError(f"cannot sign CMP messages with a {type(key).__name__}")
    return next(oid for oid, v in _SIG.items() if v == (fam, h))


def sign(key: Any, data: bytes) -> tuple[str, bytes]:
    oid = signature_alg(key)
    h = _sig_hash(key)
    if isinstance(key, rsa.RSAPrivateKey):
        return oid, key.sign(data, padding.PKCS1v15(), _HASHES[h]())  # type: ignore[index]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return oid, key.sign(data, ec.ECDSA(_HASHES[h]()))  # type: ignore[index]
    return oid, key.sign(data)


def sig_alg_id(oid: str) -> Any:
    return alg_id(oid, null=_SIG[oid][0] == "rsa")


def verify_signature(public_key: Any, oid: str, signature: bytes, data: bytes) -> None:
    """:class:`CmpFailure` badAlg for an algorithm not used here, badMessageCheck/badPOP left to the caller."""
    fam_hash = _SIG.get(oid)
    if fam_hash is None:
        raise CmpFailure(FailInfo.badAlg, f"signature algorithm {oid} is not supported")
    fam, h = fam_hash
    try:
        if fam == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[h]())  # type: ignore[index]
        elif fam == "ec" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_HASHES[h]()))  # type: ignore[index]
        elif fam == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey) or fam == "ed448" and isinstance(public_key, ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        else:
            raise CmpFailure(FailInfo.badAlg, f"signature algorithm {oid} does not match the key")
    except InvalidSignature:
        raise CmpFailure(FailInfo.badMessageCheck, "the signature does not verify") from None


@dataclass(frozen=True)
class SignatureProtection:
    """Protection by a signature of the sender's key; its certificate goes first into extraCerts."""

    key: Any = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def algorithm(self) -> Any:
        return sig_alg_id(signature_alg(self.key))

    def sender_kid(self) -> bytes | None:
        try:
            return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return None

    def protect(self, data: bytes) -> bytes:
        return sign(self.key, data)[1]


Protection = MacProtection | SignatureProtection


# -- parsing -------------------------------------------------------------------------------------------------
@dataclass
class CmpMessage:
    """A received PKIMessage: the header's fields as Python values, the body as pyasn1."""

    pvno: int
    sender: bytes | None  # Name DER of a directoryName sender, else None
    recipient: bytes | None
    transaction_id: bytes | None
    sender_nonce: bytes | None
    recip_nonce: bytes | None
    sender_kid: bytes | None
    protection_alg: Any  # pyasn1 AlgorithmIdentifier or None
    implicit_confirm: bool
    body_type: str
    body: Any
    extra_certs: list[x509.Certificate]
    protected_part: bytes = field(repr=False)
    protection: bytes | None = field(repr=False)
    message_time: datetime | None = None
    #: the body's content as received, without its [n] tag (p10cr's request is verified over these bytes)
    body_content: bytes = field(default=b"", repr=False)

    @property
    def protection_oid(self) -> str | None:
        return None if self.protection_alg is None else str(self.protection_alg["algorithm"])

    def check_mac(self, secret: bytes) -> None:
        """Raise :class:`CmpFailure` unless the message carries a valid PBM made with ``secret``."""
        if self.protection is None or self.protection_oid != OID_PBM:
            raise CmpFailure(FailInfo.badMessageCheck, "the message is not protected by a shared secret (PBM)")
        params = self.protection_alg["parameters"]
        try:
            pbm = _decode(encoder.encode(params), rfc9480.PBMParameter())
        except PyAsn1Error:
            raise CmpFailure(FailInfo.badDataFormat, "malformed PBMParameter") from None
        owf = _OWF.get(str(pbm["owf"]["algorithm"]))
        mac = _MAC.get(str(pbm["mac"]["algorithm"]))
        if owf is None or mac is None:
            raise CmpFailure(FailInfo.badAlg, "PBM with a one-way function or MAC not supported here")
        n = int(pbm["iterationCount"])
        if not MIN_PBM_ITERATIONS <= n <= MAX_PBM_ITERATIONS:
            raise CmpFailure(FailInfo.badAlg, f"PBM iteration count {n} outside "
                             f"{MIN_PBM_ITERATIONS}..{MAX_PBM_ITERATIONS}")
        salt = bytes(pbm["salt"])
        if len(salt) > 128:
            raise CmpFailure(FailInfo.badDataFormat, "PBM salt too long")
        expected = hmac.new(pbm_key(secret, salt, owf, n), self.protected_part, mac).digest()
        if not hmac.compare_digest(expected, self.protection):
            raise CmpFailure(FailInfo.badMessageCheck, "the MAC does not verify (wrong shared secret?)")

    def check_signature(self, cert: x509.Certificate) -> None:
        if self.protection is None or self.protection_oid is None:
            raise CmpFailure(FailInfo.badMessageCheck, "the message is not protected")
        if self.protection_oid == OID_PBM:
            raise CmpFailure(FailInfo.badMessageCheck, "the message is MAC-protected where a signature is needed")
        verify_signature(cert.public_key(), self.protection_oid, self.protection, self.protected_part)


def parse_message(data: bytes) -> CmpMessage:
    """:class:`CmpFormatError` for anything that is not a PKIMessage; no exception but that one escapes."""
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise CmpFormatError(f"message larger than {MAX_MESSAGE_SIZE} bytes")
    if not data or data[0] != 0x30:
        raise CmpFormatError("not a DER SEQUENCE")
    try:
        if _tlv(data, 0) != len(data):
            raise CmpFormatError("trailing data after the PKIMessage")
        start = _header_len(data, 0)
        header_end = _tlv(data, start)
        body_end = _tlv(data, header_end)
        protected_part = _seq(data[start:body_end])
        msg = _decode(data, rfc9480.PKIMessage())
        parsed = _fields(msg, protected_part)
        parsed.body_content = data[header_end + _header_len(data, header_end) : body_end]
        return parsed
    except CmpFormatError:
        raise
    except (PyAsn1Error, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise CmpFormatError(f"not a PKIMessage ({type(exc).__name__}: {str(exc)[:120]})") from None


def _opt_bytes(v: Any) -> bytes | None:
    return bytes(v) if v.isValue else None


def _gn_name(gn: Any) -> bytes | None:
    if gn.getName() != "directoryName":
        return None
    return name_der(gn["directoryName"])


def _fields(msg: Any, protected_part: bytes) -> CmpMessage:
    h = msg["header"]
    pvno = int(h["pvno"])
    if pvno not in (2, 3):
        raise CmpFailure(FailInfo.unsupportedVersion, f"pvno {pvno}: only cmp2000 (2) and cmp2021 (3)")
    implicit = False
    if h["generalInfo"].isValue:
        implicit = any(str(itv["infoType"]) == OID_IMPLICIT_CONFIRM for itv in h["generalInfo"])
    extra: list[x509.Certificate] = []
    if msg["extraCerts"].isValue:
        for c in msg["extraCerts"]:
            try:
                extra.append(cert_from_asn1(c))
            except ValueError:
                raise CmpFormatError("a certificate in extraCerts cannot be parsed") from None
    mt = None
    if h["messageTime"].isValue:
        try:
            mt = h["messageTime"].asDateTime.astimezone(timezone.utc)
        except (ValueError, PyAsn1Error):
            mt = None
    body = msg["body"]
    return CmpMessage(
        pvno=pvno,
        sender=_gn_name(h["sender"]),
        recipient=_gn_name(h["recipient"]),
        transaction_id=_opt_bytes(h["transactionID"]),
        sender_nonce=_opt_bytes(h["senderNonce"]),
        recip_nonce=_opt_bytes(h["recipNonce"]),
        sender_kid=_opt_bytes(h["senderKID"]),
        protection_alg=h["protectionAlg"] if h["protectionAlg"].isValue else None,
        implicit_confirm=implicit,
        body_type=body.getName(),
        body=body.getComponent(),
        extra_certs=extra,
        protected_part=protected_part,
        protection=bytes(msg["protection"].asOctets()) if msg["protection"].isValue else None,
        message_time=mt,
    )


# -- building ------------------------------------------------------------------------------------------------
def build_message(
    *,
    body_type: str,
    fill_body: Any,
    sender: bytes | None,
    recipient: bytes | None,
    transaction_id: bytes,
    sender_nonce: bytes,
    recip_nonce: bytes | None = None,
    protection: Protection | None,
    extra_certs: list[x509.Certificate] = (),  # type: ignore[assignment]
    implicit_confirm: bool = False,
    pvno: int = 2,
    now: datetime | None = None,
) -> bytes:
    """A PKIMessage's DER. ``fill_body(component)`` fills the body's CHOICE component in place; ``sender`` and
    ``recipient`` are Name DER (None: the NULL-DN, as RFC 4210 allows when senderKID identifies the sender)."""
    msg = rfc9480.PKIMessage()
    h = msg["header"]
    h["pvno"] = pvno
    set_name(h["sender"]["directoryName"], sender or encoder.encode(rfc5280.Name()["rdnSequence"]))
    set_name(h["recipient"]["directoryName"], recipient or encoder.encode(rfc5280.Name()["rdnSequence"]))
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    h["messageTime"] = h["messageTime"].clone(when.strftime("%Y%m%d%H%M%SZ"))
    if protection is not None:
        _copy_into(h["protectionAlg"], protection.algorithm())
        kid = protection.sender_kid()
        if kid is not None:
            h["senderKID"] = kid
    h["transactionID"] = transaction_id
    h["senderNonce"] = sender_nonce
    if recip_nonce is not None:
        h["recipNonce"] = recip_nonce
    if implicit_confirm:
        itv = rfc9480.InfoTypeAndValue()
        itv["infoType"] = univ.ObjectIdentifier(OID_IMPLICIT_CONFIRM)
        itv["infoValue"] = univ.Null("")
        h["generalInfo"].append(itv)
    fill_body(msg["body"][body_type])
    if protection is not None:
        part = rfc9480.ProtectedPart()
        part["header"] = h
        part["body"] = msg["body"]
        msg["protection"] = msg["protection"].clone(hexValue=protection.protect(encoder.encode(part)).hex())
    for c in extra_certs:
        msg["extraCerts"].append(cert_to_asn1(c))
    return bytes(encoder.encode(msg))


def _copy_into(target: Any, value: Any) -> Any:
    """Copy a SEQUENCE's components into a slot that carries its own tag (pyasn1 checks tags on assignment)."""
    for i in range(len(value)):
        if value[i].isValue:
            target[i] = value[i]
    return target
