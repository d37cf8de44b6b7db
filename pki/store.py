"""The router's certificate store, with JUNOS ``request security pki`` semantics.

Layout of a store directory (mode 0700)::

    ca-profiles.json             ca-profile definitions (pki.profile.CaProfile)
    auto-re-enrollment.json      auto-re-enrollment settings per certificate-id
    ca/<profile>/ca.pem          the CA certificate(s) of a profile (trust anchors)
    ca/<profile>/crl.der         an operator-loaded CRL
    crl-cache/                   CRLs fetched from distribution points, kept across restarts
    local/<certificate-id>       symlink to .<certificate-id>.<random>/ holding
                                 key.pem (0600), request.pem, cert.pem

A certificate-id's key, request and certificate live in one generation directory reached through a symlink, so
re-enrollment can write a complete new generation and swap it in with one atomic rename of the link.

Every write is atomic (temporary file, fsync, rename); nothing is left half-written when an input is refused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pki._files import PUBLIC_MODE, SECRET_MODE, read_bounded, write_atomic
from pki.certs import SubjectAltNames, certificates_to_pem, load_certificates, load_crl
from pki.csr import build_csr, csr_to_pem, load_csr
from pki.errors import CorruptInputError, KeyFileError, PkiError, ProfileError, StoreError
from pki.keys import (
    PrivateKey,
    generate_private_key,
    load_private_key,
    parse_key_spec,
    private_key_to_pem,
    read_private_file,
)
from pki.profile import AutoReenrollment, CaProfile, RevocationPolicy
from pki.revocation import CrlCache, OcspSource, default_fetch
from pki.validate import AnchorSource, TrustAnchor, ValidationPolicy, Validator

__all__ = ["LocalEntry", "Store"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
KEY, CERT, REQUEST, CHAIN = "key.pem", "cert.pem", "request.pem", "chain.pem"
#: the key pair's public half, in clear next to a possibly encrypted key: matching a certificate to the key pair
#: (local-certificate load) then needs no passphrase
PUBLIC = "public.pem"


def _same_key(a, b) -> bool:  # type: ignore[no-untyped-def]
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


@dataclass(frozen=True)
class LocalEntry:
    """What the store holds for one certificate-id."""

    certificate_id: str
    has_key: bool
    certificate: x509.Certificate | None
    request: x509.CertificateSigningRequest | None


class Store:
    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise StoreError(f"{self.path}: no such store")
            self.path.mkdir(parents=True, mode=0o700)
        elif not self.path.is_dir():
            raise StoreError(f"{self.path}: not a directory")
        (self.path / "local").mkdir(exist_ok=True, mode=0o700)
        (self.path / "ca").mkdir(exist_ok=True)

    # == ca-profiles ===========================================================================================
    def _read_json(self, name: str) -> list[dict]:
        p = self.path / name
        if not p.exists():
            return []
        try:
            data = json.loads(read_bounded(p))
        except (ValueError, RecursionError, MemoryError):  # json recurses per level: a deep file is corrupt too
            raise StoreError(f"{p}: corrupt JSON") from None
        if not isinstance(data, list):
            raise StoreError(f"{p}: expected a list")
        return data

    def _write_json(self, name: str, items: list[dict], mode: int = PUBLIC_MODE) -> None:
        write_atomic(self.path / name, (json.dumps(items, indent=2, sort_keys=True) + "\n").encode(), mode)

    def profiles(self) -> list[CaProfile]:
        return [CaProfile.from_dict(d) for d in self._read_json("ca-profiles.json")]

    def profile(self, name: str) -> CaProfile:
        for p in self.profiles():
            if p.name == name:
                return p
        raise ProfileError(f"no ca-profile {name!r}")

    def add_profile(self, profile: CaProfile, *, replace: bool = False) -> None:
        items = self.profiles()
        if any(p.name == profile.name for p in items) and not replace:
            raise ProfileError(f"ca-profile {profile.name!r} exists already")
        items = [p for p in items if p.name != profile.name] + [profile]
        self._write_json("ca-profiles.json", [p.to_dict() for p in items])

    def remove_profile(self, name: str) -> None:
        self.profile(name)
        self._write_json("ca-profiles.json", [p.to_dict() for p in self.profiles() if p.name != name])
        shutil.rmtree(self.path / "ca" / name, ignore_errors=True)

    # == key pairs, requests, local certificates =============================================================
    def _check_id(self, certificate_id: str) -> str:
        if not _ID.match(certificate_id or ""):
            raise StoreError(f"invalid certificate-id {certificate_id!r} (letters, digits, '.', '_', '-'; max 63)")
        return certificate_id

    def _entry_dir(self, certificate_id: str) -> Path | None:
        link = self.path / "local" / self._check_id(certificate_id)
        if not os.path.islink(link):
            return None
        target = link.resolve()
        return target if target.is_dir() else None

    def local_ids(self) -> list[str]:
        return sorted(p.name for p in (self.path / "local").iterdir() if p.is_symlink())

    def generate_key_pair(self, certificate_id: str, type: str = "rsa", size: int | None = None,
                          passphrase: bytes | None = None) -> PrivateKey:
        """JUNOS ``request security pki generate-key-pair certificate-id ID type T size N``."""
        self._check_id(certificate_id)
        if self._entry_dir(certificate_id) is not None:
            raise StoreError(f"certificate-id {certificate_id!r} has a key pair already (clear it first)")
        key = generate_private_key(parse_key_spec(type, size))
        self.install(certificate_id, key, None, passphrase=passphrase)
        return key

    def import_key_pair(self, certificate_id: str, data: bytes, passphrase: bytes | None = None,
                        store_passphrase: bytes | None = None) -> PrivateKey:
        self._check_id(certificate_id)
        if self._entry_dir(certificate_id) is not None:
            raise StoreError(f"certificate-id {certificate_id!r} has a key pair already (clear it first)")
        key = load_private_key(data, passphrase, source=f"key for {certificate_id}")
        self.install(certificate_id, key, None, passphrase=store_passphrase)
        return key

    def install(self, certificate_id: str, key: PrivateKey, cert: x509.Certificate | None,
                request: x509.CertificateSigningRequest | None = None, *, passphrase: bytes | None = None,
                chain: Sequence[x509.Certificate] = ()) -> None:
        """Write a complete new generation (key, certificate, request) and swap it in atomically."""
        self._check_id(certificate_id)
        if cert is not None and not _same_key(cert.public_key(), key.public_key()):
            raise StoreError("certificate does not match the key pair")
        local = self.path / "local"
        gen = local / f".{certificate_id}.{os.urandom(6).hex()}"
        gen.mkdir(mode=0o700)
        try:
            write_atomic(gen / KEY, private_key_to_pem(key, passphrase), SECRET_MODE)
            write_atomic(gen / PUBLIC, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), PUBLIC_MODE)
            if request is not None:
                write_atomic(gen / REQUEST, csr_to_pem(request), PUBLIC_MODE)
            if chain:
                write_atomic(gen / CHAIN, certificates_to_pem(list(chain)), PUBLIC_MODE)
            if cert is not None:
                write_atomic(gen / CERT, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
            link = local / certificate_id
            old = link.resolve() if link.is_symlink() else None
            tmp_link = local / f".{certificate_id}.link.{os.urandom(4).hex()}"
            os.symlink(gen.name, tmp_link)
            os.replace(tmp_link, link)  # the atomic swap
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        if old is not None and old != gen.resolve():
            shutil.rmtree(old, ignore_errors=True)

    def private_key(self, certificate_id: str, passphrase: bytes | None = None) -> PrivateKey:
        d = self._entry_dir(certificate_id)
        if d is None or not (d / KEY).exists():
            raise KeyFileError(f"no key pair for certificate-id {certificate_id!r} (generate-key-pair first)")
        return load_private_key(read_private_file(d / KEY), passphrase, source=f"key pair {certificate_id}")

    def public_key(self, certificate_id: str, passphrase: bytes | None = None):  # type: ignore[no-untyped-def]
        """The key pair's public key, without the passphrase when the store has it in clear (public.pem, or the
        request or certificate); only key pairs from older stores with none of these need the passphrase."""
        d = self._entry_dir(certificate_id)
        if d is None or not (d / KEY).exists():
            raise KeyFileError(f"no key pair for certificate-id {certificate_id!r} (generate-key-pair first)")
        if (d / PUBLIC).exists():
            try:
                return serialization.load_pem_public_key(read_bounded(d / PUBLIC))
            except ValueError:
                pass  # damaged: fall through to the other sources
        for holder in (self.local_certificate(certificate_id), self.request(certificate_id)):
            if holder is not None:
                return holder.public_key()
        return self.private_key(certificate_id, passphrase).public_key()

    def key_path(self, certificate_id: str) -> Path:
        d = self._entry_dir(certificate_id)
        if d is None:
            raise KeyFileError(f"no key pair for certificate-id {certificate_id!r}")
        return d / KEY

    def generate_certificate_request(self, certificate_id: str, subject: str, sans: SubjectAltNames | None = None,
                                     challenge_password: str | None = None, *, filename: str | os.PathLike[str] | None = None,
                                     passphrase: bytes | None = None) -> x509.CertificateSigningRequest:
        """JUNOS ``generate-certificate-request certificate-id ID subject DN domain-name ... filename F``."""
        key = self.private_key(certificate_id, passphrase)
        try:
            csr = build_csr(key, subject, sans, challenge_password)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        d = self._entry_dir(certificate_id)
        assert d is not None
        # a request carrying a SCEP challenge password holds a secret: owner-only like a key file
        mode = SECRET_MODE if challenge_password is not None else PUBLIC_MODE
        write_atomic(d / REQUEST, csr_to_pem(csr), mode)
        if filename is not None:
            write_atomic(filename, csr_to_pem(csr), mode)
        return csr

    def request(self, certificate_id: str) -> x509.CertificateSigningRequest | None:
        d = self._entry_dir(certificate_id)
        if d is None or not (d / REQUEST).exists():
            return None
        return load_csr(read_bounded(d / REQUEST), source=str(d / REQUEST))

    def load_local_certificate(self, certificate_id: str, data: bytes, passphrase: bytes | None = None, *,
                               key: bytes | None = None, key_passphrase: bytes | None = None) -> x509.Certificate:
        """JUNOS ``local-certificate load filename F certificate-id ID [key K]``: the certificate must match the
        certificate-id's key pair, or ``key`` (a PEM/DER private key, e.g. from strongSwan or openssl), which is
        then stored with it in one atomic step (the certificate-id must be new)."""
        certs = load_certificates(data, source=f"local certificate for {certificate_id}")
        if key is not None:
            self._check_id(certificate_id)
            if self._entry_dir(certificate_id) is not None:
                raise StoreError(f"certificate-id {certificate_id!r} exists already (clear it first)")
            priv = load_private_key(key, key_passphrase, source=f"key for {certificate_id}")
            match = [c for c in certs if _same_key(c.public_key(), priv.public_key())]
            if not match:
                raise StoreError("the certificate does not match the key")
            self.install(certificate_id, priv, match[0], chain=[c for c in certs if c is not match[0]],
                         passphrase=passphrase)
            return match[0]
        pub = self.public_key(certificate_id, passphrase)
        mine = [c for c in certs if _same_key(c.public_key(), pub)]
        if not mine:
            raise StoreError(f"the certificate does not match the key pair of certificate-id {certificate_id!r}")
        d = self._entry_dir(certificate_id)
        assert d is not None
        others = [c for c in certs if c is not mine[0]]
        if others:  # intermediates that came with it: sent to IKE peers along with the certificate
            write_atomic(d / CHAIN, certificates_to_pem(others), PUBLIC_MODE)
        else:
            (d / CHAIN).unlink(missing_ok=True)
        write_atomic(d / CERT, mine[0].public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
        return mine[0]

    def credential(self, certificate_id: str, passphrase: bytes | None = None
                   ) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
        """(private key, certificate, intermediates) for IKE to authenticate with. The intermediates are those
        loaded with the certificate, else the non-root CA certificates of the store's profiles above it."""
        key = self.private_key(certificate_id, passphrase)
        cert, inter = self.certificate_chain(certificate_id)
        return key, cert, inter

    def certificate_chain(self, certificate_id: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """(certificate, intermediates) of a local certificate: what :meth:`credential` returns minus the key,
        so verifying or showing it needs no passphrase."""
        cert = self.local_certificate(certificate_id)
        if cert is None:
            raise StoreError(f"certificate-id {certificate_id!r} has no local certificate")
        d = self._entry_dir(certificate_id)
        assert d is not None
        if (d / CHAIN).exists():
            inter = load_certificates(read_bounded(d / CHAIN), source=str(d / CHAIN))
        else:
            pool = [a.certificate for a in self.trust_anchors()]
            inter, cur = [], cert
            for _ in range(8):
                up = next((c for c in pool if c.subject == cur.issuer and c.subject != c.issuer and c not in inter), None)
                if up is None:
                    break
                inter.append(up)
                cur = up
        return cert, [c for c in inter if c.subject != c.issuer]

    def local_certificate(self, certificate_id: str) -> x509.Certificate | None:
        d = self._entry_dir(certificate_id)
        if d is None or not (d / CERT).exists():
            return None
        return load_certificates(read_bounded(d / CERT), source=str(d / CERT))[0]

    def entry(self, certificate_id: str) -> LocalEntry:
        d = self._entry_dir(certificate_id)
        if d is None:
            raise StoreError(f"no certificate-id {certificate_id!r}")
        return LocalEntry(certificate_id, (d / KEY).exists(), self.local_certificate(certificate_id),
                          self.request(certificate_id))

    def clear_local(self, certificate_id: str, *, what: str = "all") -> None:
        """JUNOS ``clear security pki local-certificate|key-pair|certificate-request certificate-id ID``.

        ``what``: "certificate", "request" or "all" (key pair, request and certificate)."""
        d = self._entry_dir(certificate_id)
        if d is None:
            raise StoreError(f"no certificate-id {certificate_id!r}")
        if what == "certificate":
            (d / CERT).unlink(missing_ok=True)
        elif what == "request":
            (d / REQUEST).unlink(missing_ok=True)
        elif what == "all":
            link = self.path / "local" / certificate_id
            link.unlink()
            shutil.rmtree(d, ignore_errors=True)
            self._write_json("auto-re-enrollment.json",
                             [r.to_dict() for r in self.reenrollments() if r.certificate_id != certificate_id],
                             SECRET_MODE)
        else:
            raise ValueError(f"unknown clear target {what!r}")

    def enroll_local_certificate(
        self,
        certificate_id: str,
        profile_name: str,
        subject: str,
        sans: SubjectAltNames | None = None,
        challenge_password: str | None = None,
        *,
        passphrase: bytes | None = None,
        enroll: Callable[..., x509.Certificate] | None = None,
        sleep: Callable[[float], None] | None = None,
        protocol: str | None = None,
    ) -> x509.Certificate:
        """JUNOS ``local-certificate enroll``: SCEP PKCSReq with the challenge password, polling while PENDING; or
        EST simpleenroll (``protocol`` or the profile's), the password as HTTP basic credentials."""
        profile = self.profile(profile_name)
        if protocol is not None and protocol != profile.protocol:
            profile = replace(profile, protocol=protocol)  # validated again: EST needs an https:// URL
        if not profile.enrollment_url:
            raise ProfileError(f"ca-profile {profile_name!r} has no enrollment url")
        if profile.protocol == "cmpv2":  # an ir needs a reference number and its secret, not a challenge password
            raise StoreError("CMPv2 enrollment is pki.cmp.enroll (local-certificate enroll --protocol cmpv2 "
                             "--reference-number REF)")
        ca_certs = self.ca_certificates(profile_name)
        if not ca_certs:
            raise StoreError(f"no CA certificate for ca-profile {profile_name!r} (ca-certificate enroll/load first)")
        key = self.private_key(certificate_id, passphrase)
        if profile.protocol == "scep" and not isinstance(key, rsa.RSAPrivateKey):
            raise StoreError("SCEP enrollment needs an RSA key pair (generate-key-pair --type rsa); "
                             "EST (--protocol est) takes any key type")
        # EST carries the password in HTTP basic authentication, not in the request
        in_csr = challenge_password if profile.protocol == "scep" else None
        csr = self.generate_certificate_request(certificate_id, subject, sans, in_csr, passphrase=passphrase)
        cert = self._enroll(profile, key, csr, ca_certs, challenge_password, enroll, sleep,
                            username=certificate_id)
        if not _same_key(cert.public_key(), key.public_key()):
            raise StoreError("the CA returned a certificate for a different key")
        d = self._entry_dir(certificate_id)
        assert d is not None
        write_atomic(d / CERT, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
        return cert

    @classmethod
    def _enroll(cls, profile: CaProfile, key: PrivateKey, csr: x509.CertificateSigningRequest,
                ca_certs: list[x509.Certificate], challenge: str | None,
                enroll: Callable[..., x509.Certificate] | None, sleep: Callable[[float], None] | None,
                signer: tuple[x509.Certificate, PrivateKey] | None = None, username: str | None = None
                ) -> x509.Certificate:
        """Enroll over the profile's protocol. ``signer``: the current certificate and key, for a renewal (SCEP
        signs the request with it; EST re-enrolls with it as TLS client credential)."""
        if profile.protocol != "est":
            return cls._scep_enroll(profile, key, csr, ca_certs, challenge, enroll, sleep,
                                    signer if signer is not None and isinstance(signer[1], rsa.RSAPrivateKey) else None)
        if enroll is None:
            from pki.est.client import enroll as est_enroll

            enroll = est_enroll
        kw: dict = {"password": challenge, "username": username, "retry_count": profile.retry,
                    "retry_interval": float(profile.retry_interval), "client": signer, "reenroll": signer is not None}
        if sleep is not None:
            kw["sleep"] = sleep
        return enroll(profile.enrollment_url, key, csr, ca_certs, **kw)

    @staticmethod
    def _scep_enroll(profile: CaProfile, key: PrivateKey, csr: x509.CertificateSigningRequest,
                     ca_certs: list[x509.Certificate], challenge: str | None,
                     enroll: Callable[..., x509.Certificate] | None,
                     sleep: Callable[[float], None] | None,
                     signer: tuple[x509.Certificate, PrivateKey] | None = None) -> x509.Certificate:
        if enroll is None:
            from pki.scep.client import enroll as scep_enroll

            enroll = scep_enroll
        kw: dict = {"challenge": challenge, "retry_count": profile.retry, "retry_interval": float(profile.retry_interval)}
        if sleep is not None:
            kw["sleep"] = sleep
        if signer is not None:  # RFC 8894 renewal: the request is signed with the current certificate and key
            kw["signer"] = signer
        return enroll(profile.enrollment_url, key, csr, ca_certs, **kw)  # type: ignore[arg-type]

    # == CA certificates and CRLs =============================================================================
    def _ca_dir(self, profile_name: str) -> Path:
        self.profile(profile_name)
        return self.path / "ca" / profile_name

    def load_ca_certificate(self, profile_name: str, data: bytes) -> list[x509.Certificate]:
        """JUNOS ``ca-certificate load ca-profile P filename F``: a PEM/DER certificate or a PEM chain."""
        self.profile(profile_name)
        certs = load_certificates(data, source=f"CA certificate for {profile_name}")
        return self._install_ca(profile_name, certs)

    def enroll_ca_certificate(self, profile_name: str, *,
                              get_ca_certs: Callable[[str], list[x509.Certificate]] | None = None,
                              protocol: str | None = None) -> list[x509.Certificate]:
        """JUNOS ``ca-certificate enroll ca-profile P``: SCEP GetCACert, EST /cacerts (bootstrap: accepted only
        from a server whose TLS certificate that CA issued), or CMP genm caCerts. Show the fingerprint to the
        operator!"""
        profile = self.profile(profile_name)
        if protocol is not None and protocol != profile.protocol:
            profile = replace(profile, protocol=protocol)
        if not profile.enrollment_url:
            raise ProfileError(f"ca-profile {profile_name!r} has no enrollment url")
        if get_ca_certs is None and profile.protocol == "cmpv2":
            from pki.cmp.client import get_ca_certs as cmp_get  # genm id-it-caCerts (RFC 9483 4.3.1)

            get_ca_certs = cmp_get
        elif get_ca_certs is None and profile.protocol == "est":
            from pki.est.client import get_ca_certs as est_get

            get_ca_certs = est_get
        elif get_ca_certs is None:
            from pki.scep.client import get_ca_certs as scep_get

            get_ca_certs = scep_get
        certs = get_ca_certs(profile.enrollment_url)
        cas = [c for c in certs if _is_ca(c)]
        return self._install_ca(profile_name, cas or certs)

    def _install_ca(self, profile_name: str, certs: list[x509.Certificate]) -> list[x509.Certificate]:
        d = self._ca_dir(profile_name)
        for c in certs:
            if not _is_ca(c):
                raise StoreError(f"{c.subject.rfc4514_string()} is not a CA certificate (basicConstraints cA is not set)")
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / "ca.pem", certificates_to_pem(certs), PUBLIC_MODE)
        return certs

    def ca_certificates(self, profile_name: str) -> list[x509.Certificate]:
        p = self._ca_dir(profile_name) / "ca.pem"
        if not p.exists():
            return []
        return load_certificates(read_bounded(p), source=str(p))

    def clear_ca_certificate(self, profile_name: str) -> None:
        d = self._ca_dir(profile_name)
        if not (d / "ca.pem").exists():
            raise StoreError(f"no CA certificate for ca-profile {profile_name!r}")
        (d / "ca.pem").unlink()

    def load_crl(self, profile_name: str, data: bytes) -> x509.CertificateRevocationList:
        """JUNOS ``crl load ca-profile P filename F``: refused unless signed by a CA certificate of the profile."""
        cas = self.ca_certificates(profile_name)
        crl = load_crl(data)
        if not cas:
            raise StoreError(f"no CA certificate for ca-profile {profile_name!r}: load it before its CRL")
        if not any(crl.issuer == c.subject and _crl_signed_by(crl, c) for c in cas):
            raise StoreError(f"the CRL is not signed by the CA of ca-profile {profile_name!r}")
        write_atomic(self._ca_dir(profile_name) / "crl.der", crl.public_bytes(serialization.Encoding.DER), PUBLIC_MODE)
        return crl

    def crl(self, profile_name: str) -> x509.CertificateRevocationList | None:
        p = self._ca_dir(profile_name) / "crl.der"
        return load_crl(read_bounded(p), source=str(p)) if p.exists() else None

    def clear_crl(self, profile_name: str) -> None:
        p = self._ca_dir(profile_name) / "crl.der"
        if not p.exists():
            raise StoreError(f"no CRL for ca-profile {profile_name!r}")
        p.unlink()

    # == auto re-enrollment settings ==========================================================================
    def reenrollments(self) -> list[AutoReenrollment]:
        return [AutoReenrollment.from_dict(d) for d in self._read_json("auto-re-enrollment.json")]

    def set_reenrollment(self, setting: AutoReenrollment) -> None:
        self._entry_dir(setting.certificate_id) or self._missing(setting.certificate_id)
        self.profile(setting.ca_profile)
        items = [r for r in self.reenrollments() if r.certificate_id != setting.certificate_id] + [setting]
        self._write_json("auto-re-enrollment.json", [r.to_dict() for r in items], SECRET_MODE)  # holds challenges

    @staticmethod
    def _missing(certificate_id: str) -> None:
        raise StoreError(f"no certificate-id {certificate_id!r}")

    # == validation ===========================================================================================
    def trust_anchors(self, profile: str | None = None) -> list[TrustAnchor]:
        """Every CA certificate of every ca-profile (or of one), with that profile's revocation policy."""
        out: list[TrustAnchor] = []
        for p in self.profiles():
            if profile is not None and p.name != profile:
                continue
            for c in self.ca_certificates(p.name):
                out.append(TrustAnchor(c, p.revocation, p.name))
        return out

    def crl_cache(self, fetch: Callable[[str], bytes] | None = default_fetch) -> CrlCache:
        cache = CrlCache(fetch=fetch, directory=self.path / "crl-cache")
        for p in self.profiles():
            try:
                crl = self.crl(p.name)
            except PkiError:
                continue
            if crl is not None:
                cache.add(crl)
        return cache

    def validator(self, policy: ValidationPolicy | None = None, *,
                  fetch: Callable[[str], bytes] | None = default_fetch,
                  ocsp: OcspSource | None = None, profile: str | None = None) -> Validator:
        """A validator over this store's anchors (all, or one ca-profile's). CRLs: loaded ones, others fetched
        through ``fetch`` (None: no fetching) and cached under ``crl-cache/``. OCSP: ``ocsp`` if given, else
        ``pki.ocsp.OcspChecker`` with each profile's URL override and nonce setting."""
        anchors: AnchorSource | list[TrustAnchor] = self
        if profile is not None:
            anchors = self.trust_anchors(profile)
            if not anchors:
                raise ProfileError(f"ca-profile {profile!r} has no CA certificate")
        return Validator(anchors, policy, crl_source=self.crl_cache(fetch), ocsp=ocsp,
                         ocsp_factory=None if ocsp is not None else _default_ocsp)


def _default_ocsp(rp: RevocationPolicy) -> OcspSource:
    from pki.ocsp import OcspChecker  # the network edge, written by PKI-SCEP

    return OcspChecker(rp.ocsp_url, use_nonce=rp.ocsp_nonce)  # type: ignore[no-any-return]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        # X.509 v1 self-signed roots (old strongSwan/openssl defaults) are accepted as trust anchors
        return cert.version is x509.Version.v1 and cert.issuer == cert.subject
    except ValueError:
        raise CorruptInputError(f"{cert.subject.rfc4514_string()}: malformed extensions") from None


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except Exception:
        return False


