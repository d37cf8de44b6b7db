"""``CaProfile``: how the router deals with one CA, as a JUNOS ``security pki ca-profile`` has it.

A profile names the CA (``ca-identity``), where to enroll (``enrollment url``, ``retry``, ``retry-interval``) and how to
check revocation (``revocation-check crl [url U] [refresh-interval H] | ocsp [url U] | disable``, with
``disable on-download-failure`` as ``fail_open``). Profiles are frozen and validated on construction; the store
persists them as JSON.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from pki.errors import ProfileError

__all__ = ["AutoReenrollment", "CaProfile", "RevocationMode", "RevocationPolicy"]

#: Enrollment protocols a ca-profile may name.
PROTOCOLS = ("scep", "est", "cmpv2")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RevocationMode(str, enum.Enum):
    CRL = "crl"
    OCSP = "ocsp"
    DISABLE = "disable"


@dataclass(frozen=True)
class RevocationPolicy:
    """Revocation checking for certificates that chain to one CA.

    ``fail_open``: when the CRL cannot be fetched, is expired or invalid, or the OCSP responder cannot be reached,
    accept the certificate (JUNOS ``disable on-download-failure``). The default fails closed.
    ``ocsp_fallback_crl``: when OCSP fails, try the CRL before deciding.
    """

    mode: RevocationMode = RevocationMode.CRL
    crl_url: str | None = None  # overrides the certificate's CRL distribution point
    refresh_interval: timedelta | None = None  # re-fetch this often even if the CRL's nextUpdate is later
    ocsp_url: str | None = None  # overrides the certificate's AIA OCSP URL
    ocsp_nonce: bool = True
    ocsp_fallback_crl: bool = False
    fail_open: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", RevocationMode(self.mode))
        for u in (self.crl_url, self.ocsp_url):
            if u is not None and not u.lower().startswith(("http://", "https://")):
                raise ProfileError(f"revocation URL must be http:// or https://: {u!r}")
        if self.refresh_interval is not None and self.refresh_interval <= timedelta(0):
            raise ProfileError("refresh-interval must be positive")


@dataclass(frozen=True)
class CaProfile:
    name: str
    ca_identity: str = ""  # JUNOS ca-identity: the CA's name as sent in SCEP (defaults to the profile name)
    enrollment_url: str | None = None
    retry: int = 10  # polls while the CA answers PENDING
    retry_interval: int = 30  # seconds between polls
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)
    #: how ``enrollment_url`` is spoken to: ``scep`` (RFC 8894, RSA keys) or ``est`` (RFC 7030 over https://,
    #: any key type; the URL is ``https://HOST:PORT/.well-known/est``)
    protocol: str = "scep"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ProfileError(f"invalid ca-profile name {self.name!r} (letters, digits, '.', '_', '-'; max 63)")
        if not self.ca_identity:
            object.__setattr__(self, "ca_identity", self.name)
        if self.enrollment_url is not None and not self.enrollment_url.lower().startswith(("http://", "https://")):
            raise ProfileError(f"enrollment url must be http:// or https://: {self.enrollment_url!r}")
        if self.protocol not in PROTOCOLS:
            raise ProfileError(f"unknown enrollment protocol {self.protocol!r} ({', '.join(PROTOCOLS)})")
        if self.protocol == "est" and self.enrollment_url and not self.enrollment_url.lower().startswith("https://"):
            raise ProfileError(f"EST runs over TLS: the enrollment url must be https://, not {self.enrollment_url!r}")
        if not 0 <= self.retry <= 1000:
            raise ProfileError("retry must be between 0 and 1000")
        if not 0 <= self.retry_interval <= 3600:
            raise ProfileError("retry-interval must be between 0 and 3600 seconds")

    def with_revocation(self, **changes: Any) -> CaProfile:
        return replace(self, revocation=replace(self.revocation, **changes))

    def to_dict(self) -> dict[str, Any]:
        r = self.revocation
        return {
            "name": self.name, "ca_identity": self.ca_identity, "enrollment_url": self.enrollment_url,
            "retry": self.retry, "retry_interval": self.retry_interval, "protocol": self.protocol,
            "revocation": {
                "mode": r.mode.value, "crl_url": r.crl_url,
                "refresh_interval": None if r.refresh_interval is None else r.refresh_interval.total_seconds(),
                "ocsp_url": r.ocsp_url, "ocsp_nonce": r.ocsp_nonce, "ocsp_fallback_crl": r.ocsp_fallback_crl,
                "fail_open": r.fail_open,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaProfile:
        try:
            r = dict(d.get("revocation") or {})
            if r.get("refresh_interval") is not None:
                r["refresh_interval"] = timedelta(seconds=float(r["refresh_interval"]))
            return cls(
                name=d["name"], ca_identity=d.get("ca_identity") or "", enrollment_url=d.get("enrollment_url"),
                retry=int(d.get("retry", 10)), retry_interval=int(d.get("retry_interval", 30)),
                protocol=str(d.get("protocol") or "scep"),
                revocation=RevocationPolicy(**r),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"invalid ca-profile record: {exc}") from None


@dataclass(frozen=True)
class AutoReenrollment:
    """JUNOS ``auto-re-enrollment certificate-id ID { ca-profile-name P; challenge-password;
    re-enroll-trigger-time-percentage N; re-generate-keypair; }``."""

    certificate_id: str
    ca_profile: str
    trigger_percentage: int = 80
    regenerate_keypair: bool = False
    challenge_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.trigger_percentage <= 99:
            raise ProfileError("re-enroll-trigger-time-percentage must be between 1 and 99")

    def to_dict(self) -> dict[str, Any]:
        return {"certificate_id": self.certificate_id, "ca_profile": self.ca_profile,
                "trigger_percentage": self.trigger_percentage, "regenerate_keypair": self.regenerate_keypair,
                "challenge_password": self.challenge_password}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoReenrollment:
        try:
            return cls(d["certificate_id"], d["ca_profile"], int(d.get("trigger_percentage", 80)),
                       bool(d.get("regenerate_keypair", False)), d.get("challenge_password"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"invalid auto-re-enrollment record: {exc}") from None
