"""A certificate authority on a directory: its key (0600), its certificate and chain, and a SQLite database.

Layout of a CA directory::

    ca.key     PKCS#8 PEM, mode 0600, optionally encrypted
    ca.pem     this CA's certificate
    chain.pem  the parents of ca.pem up to the root (empty for a root CA)
    ca.db      SQLite: issued certificates, revocations, CRLs, configuration (see pki.db)
    crl.der    the latest CRL, also kept in ca.db (served by pki.service)

Time is explicit: every method that depends on it takes ``at`` (aware UTC ``datetime``); None means now, read once
at the edge of the call. Issuing signs and records the certificate in one database transaction.

Other processes may change the database at any time (``ca serve`` runs beside the ``ca ...`` verbs, see
:mod:`pki.db`): every operation reads what it depends on (statuses, configuration, CRL state) from the database
when it runs, never from an earlier read.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pki._files import PUBLIC_MODE, read_bounded, write_atomic
from pki.certs import certificates_to_pem, load_certificate, load_certificates, parse_subject, sans_of
from pki.csr import build_csr, signing_hash, verify_csr
from pki.db import CaDatabase, CertificateRecord, CertStatus
from pki.errors import CaError, SubjectKeyRefusedError, UnknownSerialError
from pki.keys import PrivateKey, generate_private_key, parse_key_spec, read_private_key, save_private_key

__all__ = [
    "IPSEC_IKE",
    "PROFILES",
    "CaConfig",
    "CertStatus",
    "CertificateAuthority",
    "CertificateRecord",
    "IssueProfile",
    "parse_reason",
]

#: id-kp-ipsecIKE (RFC 4945 section 5.1.3.12)
IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")

KEY_FILE, CERT_FILE, CHAIN_FILE, DB_FILE, CRL_FILE = "ca.key", "ca.pem", "chain.pem", "ca.db", "crl.der"

_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign",
)
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class IssueProfile:
    """What a CA puts into a certificate it issues from a CSR.

    ``san_types`` filters the CSR's SANs by type; ``dns_suffixes``/``ip_networks``/``email_domains``, when not
    empty, keep only names under them. SANs that fail the policy are dropped, not copied.
    """

    name: str = "ipsec"
    validity: timedelta = timedelta(days=365)
    key_usage: frozenset[str] = frozenset({"digital_signature", "key_encipherment"})
    extended_key_usage: tuple[ObjectIdentifier, ...] = ()
    san_types: frozenset[str] = frozenset({"dns", "ip", "email"})
    dns_suffixes: tuple[str, ...] = ()
    ip_networks: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()
    is_ca: bool = False
    path_length: int | None = None

    def __post_init__(self) -> None:
        bad = set(self.key_usage) - set(_KEY_USAGES)
        if bad:
            raise ValueError(f"unknown key usage {sorted(bad)}")
        if self.validity <= timedelta(0):
            raise ValueError("validity must be positive")

    def filter_sans(self, csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        sans = sans_of(csr)
        if "dns" in self.san_types:
            names += [x509.DNSName(d) for d in sans.dns if _under_dns(d, self.dns_suffixes)]
        if "ip" in self.san_types:
            nets = [ipaddress.ip_network(n, strict=False) for n in self.ip_networks]
            names += [x509.IPAddress(a) for a in sans.ip if not nets or any(a in n for n in nets)]
        if "email" in self.san_types:
            names += [
                x509.RFC822Name(e) for e in sans.email
                if not self.email_domains or e.rsplit("@", 1)[-1].lower() in {d.lower() for d in self.email_domains}
            ]
        return names


def _under_dns(name: str, suffixes: tuple[str, ...]) -> bool:
    if not suffixes:
        return True
    n = name.lower().rstrip(".")
    return any(n == s.lower().strip(".") or n.endswith("." + s.lower().strip(".")) for s in suffixes)


#: Named issuance profiles for ``ca issue --profile``. RFC 4945 allows no EKU at all (most interoperable), or
#: id-kp-ipsecIKE; Windows/macOS clients want serverAuth on a gateway certificate.
PROFILES: dict[str, IssueProfile] = {
    "ipsec": IssueProfile(name="ipsec"),
    "ipsec-ike": IssueProfile(name="ipsec-ike", extended_key_usage=(IPSEC_IKE,)),
    "ipsec-server": IssueProfile(
        name="ipsec-server", extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH, IPSEC_IKE)),
    "ipsec-client": IssueProfile(
        name="ipsec-client", extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH, IPSEC_IKE)),
}


@dataclass(frozen=True)
class CaConfig:
    """Per-CA settings, stored in the database so a restart keeps them.

    ``dns_suffixes`` / ``ip_networks`` / ``email_domains`` are the CA's SAN policy: when not empty, a requested
    SAN of that type is copied into a certificate only if it falls under one of them (others are dropped). They
    apply to every issuance path (``ca issue``, SCEP, ``ca approve``) unless the issue profile sets its own.
    """

    crl_url: str | None = None  # put into issued certificates as CRL distribution point
    ocsp_url: str | None = None  # put into issued certificates as AIA OCSP
    crl_validity: timedelta = timedelta(days=7)  # nextUpdate - thisUpdate
    rsa_pss: bool = False  # sign with RSASSA-PSS instead of PKCS#1 v1.5 (RSA CA keys only)
    dns_suffixes: tuple[str, ...] = ()
    ip_networks: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for n in self.ip_networks:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"invalid IP range {n!r} (a prefix such as 192.0.2.0/24 or 2001:db8::/32)") from None
        for d in (*self.dns_suffixes, *self.email_domains):
            if not d.strip(".") or any(c.isspace() or c in "/@*" for c in d):
                raise ValueError(f"invalid domain {d!r} (a DNS name such as example.net)")

    @property
    def san_policy(self) -> bool:
        return bool(self.dns_suffixes or self.ip_networks or self.email_domains)

    def to_json(self) -> str:
        return json.dumps({"crl_url": self.crl_url, "ocsp_url": self.ocsp_url,
                           "crl_validity": self.crl_validity.total_seconds(), "rsa_pss": self.rsa_pss,
                           "dns_suffixes": list(self.dns_suffixes), "ip_networks": list(self.ip_networks),
                           "email_domains": list(self.email_domains)})

    @classmethod
    def from_json(cls, text: str) -> CaConfig:
        """The CA's stored configuration; a damaged one is a CaError (never a traceback)."""
        try:
            d = json.loads(text)
            return cls(d.get("crl_url"), d.get("ocsp_url"), timedelta(seconds=d.get("crl_validity", 7 * 86400)),
                       bool(d.get("rsa_pss", False)), tuple(d.get("dns_suffixes", ())),
                       tuple(d.get("ip_networks", ())), tuple(d.get("email_domains", ())))
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError, MemoryError) as exc:
            raise CaError(f"the CA configuration is damaged ({type(exc).__name__}); restore it from a backup") \
                from None


_REASONS = {r.name.replace("_", "").lower(): r for r in x509.ReasonFlags}


def parse_reason(reason: str | x509.ReasonFlags) -> x509.ReasonFlags:
    """``key-compromise``, ``keyCompromise``, ``key_compromise`` ... -> ``ReasonFlags.key_compromise``."""
    if isinstance(reason, x509.ReasonFlags):
        r = reason
    else:
        key = str(reason).replace("-", "").replace("_", "").lower()
        if key not in _REASONS:
            raise ValueError(f"unknown revocation reason {reason!r} ({', '.join(sorted(_REASONS))})")
        r = _REASONS[key]
    if r is x509.ReasonFlags.remove_from_crl:
        raise ValueError("removeFromCRL is only meaningful in delta CRLs")
    return r


def _now(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    if at.tzinfo is None:
        raise ValueError("'at' must be timezone-aware (UTC)")
    return at.astimezone(timezone.utc).replace(microsecond=0)


def _private_dir(p: Path) -> None:
    """The CA directory holds the key and the request database: 0700, also for CAs made before this rule."""
    try:
        if p.stat().st_mode & 0o077:
            os.chmod(p, 0o700)
    except PermissionError:
        raise CaError(f"{p}: accessible by others and cannot be made private (chmod 700 it)") from None


def _random_serial() -> int:
    # 159 random bits, positive and non-zero (RFC 5280: at most 20 octets, CA/B: >= 64 bits of entropy)
    while True:
        s = int.from_bytes(os.urandom(20), "big") >> 1
        if s:
            return s


class CertificateAuthority:
    """A root or intermediate CA. Build with :meth:`init` (new) or :meth:`open` (existing directory)."""

    def __init__(self, path: Path, key: PrivateKey, cert: x509.Certificate, parents: list[x509.Certificate],
                 db: CaDatabase) -> None:
        self.path = path
        self._key = key
        self._cert = cert
        self._parents = parents
        self._db = db
        self.config = self._read_config()
        self.serial_source = _random_serial  # replaceable in tests (collision handling)

    def _read_config(self, conn: sqlite3.Connection | None = None) -> CaConfig:
        """The configuration as stored now; another process (``ca serve --allow-...``) may have changed it."""
        text = self._db.get_meta("config", conn)
        return CaConfig.from_json(text) if text else CaConfig()

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        subject: str | x509.Name,
        *,
        key_type: str = "ecdsa",
        key_size: int | None = None,
        validity: timedelta = timedelta(days=3650),
        path_length: int | None = None,
        parent: CertificateAuthority | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        crl_validity: timedelta = timedelta(days=7),
        rsa_pss: bool = False,
        passphrase: bytes | None = None,
        at: datetime | None = None,
        dns_suffixes: tuple[str, ...] = (),
        ip_networks: tuple[str, ...] = (),
        email_domains: tuple[str, ...] = (),
    ) -> CertificateAuthority:
        """Create a new CA in ``path`` (which must not hold one yet): a root, or an intermediate under ``parent``."""
        p = Path(path)
        if (p / CERT_FILE).exists():
            raise CaError(f"{p}: a CA exists there already")
        if (p / KEY_FILE).exists():
            raise CaError(f"{p}: incomplete CA directory ({KEY_FILE} without {CERT_FILE}, an interrupted init?); "
                          "remove it and run init again")
        if path_length is not None and path_length < 0:
            raise ValueError("path length must be >= 0")
        now = _now(at)
        name = parse_subject(subject)
        key = generate_private_key(parse_key_spec(key_type, key_size))
        config = CaConfig(crl_url, ocsp_url, crl_validity, rsa_pss, tuple(dns_suffixes), tuple(ip_networks),
                          tuple(email_domains))
        if parent is None:
            cert = _self_signed(key, name, now, validity, path_length, config)
            parents: list[x509.Certificate] = []
        else:
            csr = build_csr(key, name)
            profile = IssueProfile(name="sub-ca", validity=validity, key_usage=_CA_KEY_USAGE,
                                   san_types=frozenset(), is_ca=True, path_length=path_length)
            cert = parent.issue(csr, profile, at=now)
            parents = parent.chain
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_dir(p)
        # Key first (0600), database and chain next, ca.pem last: ca.pem is what marks the directory as a CA.
        save_private_key(p / KEY_FILE, key, passphrase)
        db = CaDatabase(p / DB_FILE)
        db.set_meta("config", config.to_json())
        write_atomic(p / CHAIN_FILE, certificates_to_pem(parents), PUBLIC_MODE)
        write_atomic(p / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
        return cls(p, key, cert, parents, db)

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> CertificateAuthority:
        p = Path(path)
        for f in (CERT_FILE, KEY_FILE, DB_FILE):
            if not (p / f).exists():
                raise CaError(f"{p}: not a CA directory (missing {f}); run 'ca init' first")
        cert = load_certificate(read_bounded(p / CERT_FILE), source=str(p / CERT_FILE))
        chain_bytes = read_bounded(p / CHAIN_FILE) if (p / CHAIN_FILE).exists() else b""
        parents = load_certificates(chain_bytes, source=str(p / CHAIN_FILE)) if chain_bytes.strip() else []
        key = read_private_key(p / KEY_FILE, passphrase)
        _private_dir(p)
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
                cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise CaError(f"{p}: {KEY_FILE} does not match {CERT_FILE}")
        return cls(p, key, cert, parents, CaDatabase(p / DB_FILE))

    def close(self) -> None:
        self._db.close()

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def chain(self) -> list[x509.Certificate]:
        """This CA's certificate, then its parents up to the root."""
        return [self._cert, *self._parents]

    @property
    def private_key(self) -> PrivateKey:
        return self._key

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    @property
    def db(self) -> CaDatabase:
        return self._db

    # -- issuing ----------------------------------------------------------------------------------------------
    def issue(self, csr: x509.CertificateSigningRequest, profile: IssueProfile | str | None = None,
              at: datetime | None = None, *, pop_verified: bool = False) -> x509.Certificate:
        """Sign a certificate for ``csr`` and record it, in one transaction.

        ``pop_verified``: the caller has already checked the request's signature over its original bytes (SCEP
        re-encodes requests from clients that send non-DER attribute sets, which breaks the signature)."""
        self.config = self._read_config()
        prof = self._profile(profile)
        now = _now(at)
        if not pop_verified:
            verify_csr(csr)
        self._check_usable(now)
        self._check_subject_key(csr.public_key())
        if prof.is_ca:
            own = self._cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if own.path_length is not None and own.path_length < 1:
                raise CaError("this CA has path length 0: it cannot issue CA certificates")
        sans = prof.filter_sans(csr)
        if not list(csr.subject) and not sans:
            raise CaError("certificate request has an empty subject and no acceptable subjectAltName")
        not_after = min(now + prof.validity, self._cert.not_valid_after_utc)
        with self._db.transaction() as conn:
            serial = self._unique_serial(conn)
            builder = (
                x509.CertificateBuilder()
                .subject_name(csr.subject)
                .issuer_name(self._cert.subject)
                .public_key(csr.public_key())
                .serial_number(serial)
                .not_valid_before(now - timedelta(minutes=5) if not prof.is_ca else now)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=prof.is_ca, path_length=prof.path_length if prof.is_ca else None),
                               critical=True)
                .add_extension(_key_usage(prof.key_usage), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
                .add_extension(_aki(self._cert), critical=False)
            )
            if prof.extended_key_usage:
                builder = builder.add_extension(x509.ExtendedKeyUsage(list(prof.extended_key_usage)), critical=False)
            if sans:
                # RFC 5280 4.2.1.6: critical when the subject is empty
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not list(csr.subject))
            if self.config.crl_url:
                builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(self.config.crl_url)], None, None, None)]), critical=False)
            if self.config.ocsp_url:
                builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                    x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.config.ocsp_url))]),
                    critical=False)
            cert = self._sign(builder)
            self._db.insert_certificate(conn, cert, now)
        return cert

    def set_san_policy(self, dns_suffixes: tuple[str, ...] | None = None, ip_networks: tuple[str, ...] | None = None,
                       email_domains: tuple[str, ...] | None = None) -> CaConfig:
        """Replace the given parts of the CA's SAN policy (None keeps a part); persisted in the database."""
        with self._db.transaction() as conn:  # read and write in one transaction: no other change is lost
            c = self._read_config(conn)
            self.config = CaConfig(c.crl_url, c.ocsp_url, c.crl_validity, c.rsa_pss,
                                   c.dns_suffixes if dns_suffixes is None else tuple(dns_suffixes),
                                   c.ip_networks if ip_networks is None else tuple(ip_networks),
                                   c.email_domains if email_domains is None else tuple(email_domains))
            self._db.set_meta("config", self.config.to_json(), conn)
        return self.config

    def _profile(self, profile: IssueProfile | str | None) -> IssueProfile:
        if profile is None:
            prof = PROFILES["ipsec"]
        elif isinstance(profile, str):
            if profile not in PROFILES:
                raise CaError(f"unknown profile {profile!r} ({', '.join(PROFILES)})")
            prof = PROFILES[profile]
        else:
            prof = profile
        # the CA's SAN policy fills in whatever the profile leaves open
        c = self.config
        return replace(prof, dns_suffixes=prof.dns_suffixes or c.dns_suffixes,
                       ip_networks=prof.ip_networks or c.ip_networks,
                       email_domains=prof.email_domains or c.email_domains)

    def _unique_serial(self, conn) -> int:  # type: ignore[no-untyped-def]
        for _ in range(16):
            s = self.serial_source()
            if s > 0 and s.bit_length() <= 159 and not self._db.serial_exists(s, conn):
                return s
        raise CaError("could not draw a unique serial number")

    def _check_usable(self, now: datetime) -> None:
        if now > self._cert.not_valid_after_utc:
            raise CaError(f"the CA certificate expired at {self._cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        if now < self._cert.not_valid_before_utc:
            raise CaError("the CA certificate is not valid yet")

    @staticmethod
    def _check_subject_key(key: object) -> None:
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            raise SubjectKeyRefusedError(f"RSA key of {key.key_size} bits refused (minimum {_MIN_RSA_BITS})")
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            raise SubjectKeyRefusedError(f"unsupported subject key type {type(key).__name__}")

    def _sign(self, builder):  # type: ignore[no-untyped-def]
        return _sign(builder, self._key, self.config.rsa_pss)

    # -- revocation -------------------------------------------------------------------------------------------
    def revoke(self, serial: int, reason: x509.ReasonFlags | str = "unspecified",
               at: datetime | None = None) -> CertificateRecord:
        flag = parse_reason(reason)
        now = _now(at)
        with self._db.transaction() as conn:
            rec = self._db.get(serial, conn)
            if rec is None:
                raise UnknownSerialError(f"no certificate with serial {serial:x} was issued by this CA")
            if rec.status is CertStatus.REVOKED:
                raise CaError(f"certificate {serial:x} is already revoked ({rec.reason.name if rec.reason else ''})")
            self._db.mark_revoked(conn, serial, now, flag)
            self._db.set_meta("crl_dirty", "1", conn)
            rec = self._db.get(serial, conn)
        assert rec is not None
        return rec

    def lookup(self, serial: int) -> CertificateRecord | None:
        return self._db.get(serial)

    def records(self) -> list[CertificateRecord]:
        return self._db.records()

    def crl(self, at: datetime | None = None) -> x509.CertificateRevocationList:
        """The current CRL: the stored one while fresh (less than half its life, no revocation since), else a
        newly signed one with thisUpdate ``at`` and nextUpdate ``at + config.crl_validity``."""
        now = _now(at)
        self.config = self._read_config()
        latest = self._db.latest_crl()
        if latest is not None and self._db.get_meta("crl_dirty") != "1":
            crl = x509.load_der_x509_crl(latest[1])
            half = crl.last_update_utc + (crl.next_update_utc - crl.last_update_utc) / 2  # type: ignore[operator]
            if crl.last_update_utc <= now < half:
                return crl
        return self.sign_crl(now)

    def sign_crl(self, at: datetime | None = None) -> x509.CertificateRevocationList:
        """Sign and store a new CRL unconditionally.

        ``crl.der`` is replaced inside the database transaction, so that of two processes signing at once the one
        with the higher CRL number also writes the file last."""
        now = _now(at)
        self._check_usable(now)
        with self._db.transaction() as conn:
            self.config = self._read_config(conn)
            number = self._db.next_crl_number(conn)
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(self._cert.subject)
                .last_update(now)
                .next_update(now + self.config.crl_validity)
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(_aki(self._cert), critical=False)
            )
            for rec in self._db.revoked(conn):
                assert rec.revoked_at is not None
                entry = x509.RevokedCertificateBuilder().serial_number(rec.serial).revocation_date(rec.revoked_at)
                if rec.reason is not None and rec.reason is not x509.ReasonFlags.unspecified:
                    entry = entry.add_extension(x509.CRLReason(rec.reason), critical=False)
                builder = builder.add_revoked_certificate(entry.build())
            crl = _sign(builder, self._key, self.config.rsa_pss)
            self._db.insert_crl(conn, number, crl)
            self._db.set_meta("crl_dirty", "0", conn)
            write_atomic(self.path / CRL_FILE, crl.public_bytes(serialization.Encoding.DER), PUBLIC_MODE)
        return crl


#: A CA certificate's keyUsage. digitalSignature because the CA key also signs CMP answers, which RFC 9483
#: section 3.2 (and OpenSSL's cmp client) require of a CMP protection certificate.
_CA_KEY_USAGE = frozenset({"digital_signature", "key_cert_sign", "crl_sign"})


def _key_usage(names: frozenset[str]) -> x509.KeyUsage:
    flags = {n: (n in names) for n in _KEY_USAGES}
    return x509.KeyUsage(encipher_only=False, decipher_only=False, **flags)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def _sign(builder, key: PrivateKey, rsa_pss: bool):  # type: ignore[no-untyped-def]
    if isinstance(key, rsa.RSAPrivateKey) and rsa_pss:
        return builder.sign(key, hashes.SHA256(),
                            rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
    return builder.sign(key, signing_hash(key))


def _self_signed(key: PrivateKey, name: x509.Name, now: datetime, validity: timedelta, path_length: int | None,
                 config: CaConfig) -> x509.Certificate:
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(_random_serial())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(_CA_KEY_USAGE), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    return _sign(builder, key, config.rsa_pss)
