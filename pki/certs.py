"""Parsing certificates and CRLs from untrusted bytes, and the small facts ``show`` and IKE need about them.

Every parser here accepts PEM or DER, is bounded in size, and turns any parse failure into
:class:`~pki.errors.CorruptInputError` with a one-line message.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pki._files import MAX_INPUT_BYTES
from pki.errors import CorruptInputError, InputTooLargeError

__all__ = [
    "SubjectAltNames",
    "certificates_to_pem",
    "fingerprint",
    "load_certificate",
    "load_der_certificate",
    "load_certificates",
    "load_crl",
    "not_after",
    "not_before",
    "parse_subject",
    "sans_of",
    "subject_text",
]

_PEM_CERT = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----.*?-----END (?:X509 |TRUSTED )?CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class SubjectAltNames:
    """The SAN types IKE identities map to (RFC 7296 ID_FQDN, ID_IPV4/6_ADDR, ID_RFC822_ADDR)."""

    dns: tuple[str, ...] = ()
    ip: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    email: tuple[str, ...] = ()
    other: tuple[str, ...] = field(default=())  # anything else, printed by show, never matched

    def __bool__(self) -> bool:
        return bool(self.dns or self.ip or self.email)

    def to_extension(self) -> x509.SubjectAlternativeName:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        names += [x509.IPAddress(a) for a in self.ip]
        names += [x509.RFC822Name(e) for e in self.email]
        return x509.SubjectAlternativeName(names)

    @classmethod
    def build(cls, dns: list[str] | tuple[str, ...] = (), ip: list[str] | tuple = (),
              email: list[str] | tuple[str, ...] = ()) -> SubjectAltNames:
        """Validate textual SANs (``ValueError`` on a bad one) as an operator types them."""
        addrs = []
        for a in ip:
            try:
                addrs.append(ipaddress.ip_address(str(a)))
            except ValueError:
                raise ValueError(f"not an IP address: {a!r}") from None
        for d in dns:
            if not d or any(c.isspace() for c in d) or len(d) > 253:
                raise ValueError(f"not a DNS name: {d!r}")
        for e in email:
            if e.count("@") != 1 or any(c.isspace() for c in e):
                raise ValueError(f"not an e-mail address: {e!r}")
        return cls(tuple(dns), tuple(addrs), tuple(email))

    def describe(self) -> list[str]:
        return ([f"DNS:{d}" for d in self.dns] + [f"IP:{a}" for a in self.ip]
                + [f"email:{e}" for e in self.email] + list(self.other))


def _check_size(data: bytes, what: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes")
    if len(data) > MAX_INPUT_BYTES:
        raise InputTooLargeError(f"{what}: larger than {MAX_INPUT_BYTES} bytes")
    if not data:
        raise CorruptInputError(f"{what}: empty")


def load_certificates(data: bytes, *, source: str = "certificate") -> list[x509.Certificate]:
    """One or more certificates: a PEM bundle (chain) or a single DER certificate."""
    _check_size(data, source)
    data = bytes(data)
    if b"-----BEGIN" in data:
        blocks = _PEM_CERT.findall(data)
        if not blocks:
            raise CorruptInputError(f"{source}: PEM without a CERTIFICATE block")
        out = []
        for i, block in enumerate(blocks):
            block = block.replace(b"TRUSTED CERTIFICATE", b"CERTIFICATE").replace(b"X509 CERTIFICATE", b"CERTIFICATE")
            try:
                out.append(_parsed(x509.load_pem_x509_certificate(block)))
            except _PARSE_ERRORS as exc:
                raise CorruptInputError(f"{source}: certificate #{i + 1} is corrupt ({_short(exc)})") from None
        return out
    try:
        return [_parsed(x509.load_der_x509_certificate(data))]
    except _PARSE_ERRORS as exc:
        raise CorruptInputError(f"{source}: not a PEM or DER certificate ({_short(exc)})") from None


#: What parsing untrusted bytes may raise: cryptography raises ValueError mostly, but also KeyError (unknown
#: string tag in a Name), InvalidVersion (an Exception subclass) and UnsupportedAlgorithm. All mean "corrupt".
_PARSE_ERRORS = (Exception,)


def _parsed(cert: x509.Certificate) -> x509.Certificate:
    """Touch the lazily parsed parts now, so a malformed certificate is refused at load time, not deep inside
    the validator or ``show``."""
    cert.version, cert.serial_number, cert.signature_algorithm_oid
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    cert.extensions
    cert.not_valid_before_utc, cert.not_valid_after_utc
    cert.public_key()
    return cert


def load_der_certificate(data: bytes, *, source: str = "certificate") -> x509.Certificate:
    """One DER certificate from a peer (an IKE CERT payload): never treated as PEM, every lazily parsed part
    touched, so anything malformed is a :class:`CorruptInputError` here and nowhere later."""
    _check_size(data, source)
    try:
        return _parsed(x509.load_der_x509_certificate(bytes(data)))
    except _PARSE_ERRORS as exc:
        raise CorruptInputError(f"{source}: not a DER certificate ({_short(exc)})") from None


def load_certificate(data: bytes, *, source: str = "certificate") -> x509.Certificate:
    certs = load_certificates(data, source=source)
    if len(certs) != 1:
        raise CorruptInputError(f"{source}: expected one certificate, found {len(certs)}")
    return certs[0]


def load_crl(data: bytes, *, source: str = "CRL") -> x509.CertificateRevocationList:
    _check_size(data, source)
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        crl.issuer.rfc4514_string()
        crl.extensions
        crl.last_update_utc, crl.next_update_utc
        for entry in crl:
            entry.serial_number, entry.revocation_date_utc, entry.extensions
        return crl
    except _PARSE_ERRORS as exc:
        raise CorruptInputError(f"{source}: not a valid CRL ({_short(exc)})") from None


def certificates_to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def fingerprint(cert: x509.Certificate, algorithm: str = "sha256") -> str:
    """Colon-separated hex, as ``openssl x509 -fingerprint`` and JUNOS print it."""
    algo = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "md5": hashes.MD5()}[algorithm]
    return ":".join(f"{b:02x}" for b in cert.fingerprint(algo))


def sans_of(obj: x509.Certificate | x509.CertificateSigningRequest) -> SubjectAltNames:
    try:
        ext = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    except ValueError as exc:
        raise CorruptInputError(f"subjectAltName is malformed ({_short(exc)})") from None
    dns, ip, email, other = [], [], [], []
    for gn in ext:
        if isinstance(gn, x509.DNSName):
            dns.append(gn.value)
        elif isinstance(gn, x509.IPAddress) and not isinstance(gn.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            ip.append(gn.value)
        elif isinstance(gn, x509.RFC822Name):
            email.append(gn.value)
        elif isinstance(gn, x509.UniformResourceIdentifier):
            other.append(f"URI:{gn.value}")
        elif isinstance(gn, x509.DirectoryName):
            other.append(f"DirName:{gn.value.rfc4514_string()}")
        else:
            other.append(type(gn).__name__)
    return SubjectAltNames(tuple(dns), tuple(ip), tuple(email), tuple(other))


_SUBJECT_FORMS = ("expected a distinguished name of TYPE=value parts, e.g. \"CN=r1,O=Example,C=US\" "
                  "or \"/C=US/O=Example/CN=r1\" (types CN, O, OU, L, ST, C, DC, emailAddress ...)")


def parse_subject(dn: str | x509.Name) -> x509.Name:
    """An operator's DN: RFC 4514 (``CN=r1,O=Example,C=US``) or OpenSSL's slash form (``/C=US/O=Example/CN=r1``)."""
    if isinstance(dn, x509.Name):
        return dn
    text = dn.strip()
    if not text:
        raise ValueError("empty subject")
    try:
        if text.startswith("/"):
            parts = [p for p in re.split(r"(?<!\\)/", text) if p]
            # slash form lists the most significant RDN first; RFC 4514 the least significant first
            text = ",".join(reversed([p.replace(",", "\\,") for p in parts]))
        else:
            # tolerate "CN=r1, O=Example" (spaces after separators, as strongSwan and JUNOS print DNs)
            text = re.sub(r"(?<!\\)\s*([,+])\s*(?=[A-Za-z][A-Za-z0-9.-]*\s*=)", r"\1", text)
            text = re.sub(r"^([A-Za-z][A-Za-z0-9.-]*)\s*=\s*", r"\1=", text)
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        detail = str(exc).strip()
        raise ValueError(f"invalid subject {dn!r}: {_SUBJECT_FORMS}" + (f" ({_short(exc)})" if detail else "")) from None
    if not list(name):
        raise ValueError(f"invalid subject {dn!r}: {_SUBJECT_FORMS}")
    return name


def subject_text(name: x509.Name) -> str:
    return name.rfc4514_string()


def not_before(cert: x509.Certificate) -> datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split(": ParseError", 1)[0].split(" {", 1)[0]  # drop the parser's debug dump
    text = re.sub(r"\s*See https?://\S+ for more details\.", "", text)  # cryptography's FAQ pointer
    if len(text) > 160:  # cut at a word boundary, never mid-word
        text = text[:160].rsplit(" ", 1)[0] + " ..."
    return text
