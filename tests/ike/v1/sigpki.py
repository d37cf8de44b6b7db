"""Certificates for IKEv1 signature tests: a root, an intermediate that issues both ends, the CRLs of both CAs,
and the ``SignatureAuth`` each end configures (trusting the root only, the intermediate sent in CERT)."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ike.v1.auth import SignatureAuth
from pki.revocation import CrlCache
from pki.validate import TrustAnchor, Validator
from tests.interop.strongswan import Credential, LabPki


def wall_clock(now: float) -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _crl(ca: LabPki, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
    now = _dt.datetime.now(_dt.timezone.utc)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.ca.cert.subject)
         .last_update(now - _dt.timedelta(minutes=5)).next_update(now + _dt.timedelta(days=1))
         .add_extension(x509.CRLNumber(1), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.ca.key.public_key()),  # type: ignore[arg-type]
                        critical=False))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                      .revocation_date(now - _dt.timedelta(minutes=1)).build())
    return b.sign(ca.ca.key, hashes.SHA256())  # type: ignore[arg-type]


@dataclass
class V1Pki:
    kind: str = "ecdsa"  # LabPki kinds: rsa, ecdsa, ecdsa384
    revoked: tuple[str, ...] = ()  # names ("e", "s") whose certificates the intermediate's CRL revokes
    root: LabPki = field(init=False)
    sub: LabPki = field(init=False)
    creds: dict[str, Credential] = field(init=False)

    def __post_init__(self) -> None:
        self.root = LabPki(self.kind, "v1 root")
        self.sub = self.root.intermediate("v1 sub")
        self.creds = {"e": self.sub.issue("e", "e.test"), "s": self.sub.issue("s", "s.test")}

    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Both CAs' CRLs, with the authorityKeyIdentifier strongSwan finds a CA's CRL by."""
        return _crl(self.root, []), _crl(self.sub, [self.creds[n].cert for n in self.revoked])

    def validator(self) -> Validator:
        cache = CrlCache(fetch=None)
        for crl in self.crls():
            cache.add(crl)
        return Validator([TrustAnchor(self.root.ca.cert)], crl_source=cache)

    def auth(self, name: str) -> SignatureAuth:
        c = self.creds[name]
        return SignatureAuth(c.key, c.cert, self.validator().verify, wall_clock, chain=(self.sub.ca.cert,),
                             ca_certs=(self.root.ca.cert,))
