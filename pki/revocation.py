"""Revocation: evaluating a CRL for one certificate (pure), the source protocols the validator calls, and a CRL
cache that fetches through an injected function.

The validator never does network I/O. It asks a :class:`CrlSource` for the CRL covering a certificate and an
:class:`OcspSource` (``pki.ocsp.OcspChecker`` implements it) for an OCSP answer. :class:`CrlCache` is the
standard ``CrlSource``: CRLs loaded by the operator, plus CRLs fetched from the distribution point (or the profile's
override URL) through ``fetch(url) -> bytes``, kept until their nextUpdate or the profile's refresh interval.
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki._files import PUBLIC_MODE, read_bounded, write_atomic
from pki.certs import load_crl
from pki.errors import PkiError, RevocationUnavailable
from pki.ocsp import CLOCK_SKEW

__all__ = [
    "CrlCache",
    "CrlSource",
    "OcspSource",
    "RevocationAnswer",
    "RevocationStatus",
    "check_crl",
    "crl_urls",
    "default_fetch",
    "ocsp_urls",
    "verify_crl",
]


class RevocationStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no answer could be had and the policy fails open
    NOT_CHECKED = "not-checked"  # the profile disables revocation checking


@dataclass(frozen=True)
class RevocationAnswer:
    status: RevocationStatus
    source: str  # "crl <url or 'loaded'>", "ocsp <url>", "disabled", or why it is unknown
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None


@runtime_checkable
class CrlSource(Protocol):
    def get_crl(self, issuer: x509.Certificate, urls: Sequence[str], at: datetime) -> tuple[x509.CertificateRevocationList, str]:
        """The CRL issued by ``issuer`` (tried from ``urls`` in order) and where it came from.

        Raises :class:`RevocationUnavailable` when none can be had. The CRL need not be fresh; the caller checks.
        """
        ...


@runtime_checkable
class OcspSource(Protocol):
    def check(self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime) -> Any:
        """An answer whose ``status.name`` is GOOD, REVOKED or UNKNOWN (``pki.ocsp.OcspResult``), with
        ``revocation_time`` / ``revocation_reason``; raises a :class:`PkiError` when no valid answer is had."""
        ...


def _uris(names: Sequence[x509.GeneralName]) -> list[str]:
    return [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)
            and n.value.lower().startswith(("http://", "https://"))]


def crl_urls(cert: x509.Certificate) -> list[str]:
    """HTTP(S) CRL distribution points of ``cert``, in order."""
    try:
        dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [u for dp in dps if dp.full_name for u in _uris(dp.full_name)]


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return _uris([d.access_location for d in aia if d.access_method == x509.AuthorityInformationAccessOID.OCSP])


def verify_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, at: datetime) -> None:
    """Is ``crl`` issued by ``issuer``, correctly signed, and current at ``at``? Raises RevocationUnavailable."""
    if crl.issuer != issuer.subject:
        raise RevocationUnavailable(f"CRL issuer {crl.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.crl_sign:
            raise RevocationUnavailable(f"{issuer.subject.rfc4514_string()} may not sign CRLs (keyUsage)")
    except x509.ExtensionNotFound:
        pass
    try:
        ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except Exception as exc:  # unsupported algorithm / key mismatch
        raise RevocationUnavailable(f"CRL signature cannot be checked ({exc})") from None
    if not ok:
        raise RevocationUnavailable("CRL signature does not verify")
    # thisUpdate is allowed the same skew as an OCSP response: a CRL the CA issues on demand is a few hundred
    # milliseconds newer than a validation time taken just before it was fetched, and CA clocks drift.
    if at + CLOCK_SKEW < crl.last_update_utc:
        raise RevocationUnavailable(f"CRL not valid before {crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC")
    nu = crl.next_update_utc
    if nu is not None and at > nu:
        raise RevocationUnavailable(f"CRL expired: nextUpdate {nu:%Y-%m-%d %H:%M:%S} UTC")
    for ext in crl.extensions:
        if ext.critical and isinstance(ext.value, (x509.DeltaCRLIndicator, x509.UnrecognizedExtension)):
            raise RevocationUnavailable(f"CRL has an unsupported critical extension {ext.oid.dotted_string}")


def check_crl(cert: x509.Certificate, issuer: x509.Certificate, crl: x509.CertificateRevocationList, at: datetime,
              source: str = "crl") -> RevocationAnswer:
    """Revocation status of ``cert`` per ``crl`` (verified against ``issuer`` and ``at`` first)."""
    verify_crl(crl, issuer, at)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return RevocationAnswer(RevocationStatus.GOOD, source)
    reason: x509.ReasonFlags | None = None
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except (x509.ExtensionNotFound, ValueError):
        pass
    if reason is x509.ReasonFlags.remove_from_crl:
        return RevocationAnswer(RevocationStatus.GOOD, source)
    return RevocationAnswer(RevocationStatus.REVOKED, source, entry.revocation_date_utc, reason)


def default_fetch(url: str) -> bytes:
    """Fetch through ``pki.fetch`` (imported late: the validator and tests never need it)."""
    from pki import fetch

    return fetch.http_get(url, timeout=10.0)


@dataclass
class _Entry:
    crl: x509.CertificateRevocationList
    fetched_at: datetime


class CrlCache:
    """A :class:`CrlSource`: operator-loaded CRLs by issuer, and fetched CRLs by URL.

    A fetched CRL is reused while ``at`` is before its nextUpdate and, if ``refresh_interval`` is set, before
    ``fetched_at + refresh_interval``. When a refresh fails, a cached CRL that has not expired is still used.
    ``fetch`` is any ``(url) -> bytes`` raising :class:`PkiError` on failure; None means no fetching at all.
    """

    def __init__(self, fetch: Callable[[str], bytes] | None = default_fetch, *,
                 refresh_interval: timedelta | None = None, directory: str | os.PathLike[str] | None = None) -> None:
        self._fetch = fetch
        self.refresh_interval = refresh_interval
        self._by_url: dict[str, _Entry] = {}
        self._loaded: dict[bytes, x509.CertificateRevocationList] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many fetches were attempted (observability; tests)
        self._dir = Path(directory) if directory is not None else None
        if self._dir is not None:
            self._load_directory()

    # -- persistence: fetched CRLs survive a restart (each is re-verified against its issuer when used) --------
    def _load_directory(self) -> None:
        assert self._dir is not None
        index = self._dir / "index.json"
        if not index.exists():
            return
        try:
            entries = json.loads(read_bounded(index))
            for url, e in entries.items():
                crl = load_crl(read_bounded(self._dir / e["file"]), source=url)
                self._by_url[url] = _Entry(crl, datetime.fromisoformat(e["fetched_at"]))
        except (PkiError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError):
            self._by_url.clear()  # a damaged cache is only a cache: start empty

    def _persist(self, url: str, entry: _Entry) -> None:
        if self._dir is None:
            return
        name = hashlib.sha256(url.encode()).hexdigest()[:32] + ".der"
        write_atomic(self._dir / name, entry.crl.public_bytes(serialization.Encoding.DER), PUBLIC_MODE)
        with self._lock:
            index = {u: {"file": hashlib.sha256(u.encode()).hexdigest()[:32] + ".der",
                         "fetched_at": e.fetched_at.isoformat()} for u, e in self._by_url.items()}
        write_atomic(self._dir / "index.json", json.dumps(index, indent=1).encode(), PUBLIC_MODE)

    def add(self, crl: x509.CertificateRevocationList) -> None:
        """An operator-loaded CRL, used for its issuer when no URL yields one."""
        with self._lock:
            self._loaded[crl.issuer.public_bytes()] = crl

    def get_crl(self, issuer: x509.Certificate, urls: Sequence[str], at: datetime,
                refresh_interval: timedelta | None = None) -> tuple[x509.CertificateRevocationList, str]:
        refresh = refresh_interval if refresh_interval is not None else self.refresh_interval
        errors: list[str] = []
        for url in urls:
            with self._lock:
                entry = self._by_url.get(url)
            if entry is not None and self._fresh(entry, at, refresh):
                return entry.crl, f"crl {url} (cached)"
            if self._fetch is not None:
                try:
                    crl = self._download(url, issuer)
                except PkiError as exc:
                    errors.append(str(exc))
                else:
                    entry = _Entry(crl, at)
                    with self._lock:
                        self._by_url[url] = entry
                    self._persist(url, entry)
                    return crl, f"crl {url}"
            if entry is not None and (entry.crl.next_update_utc is None or at <= entry.crl.next_update_utc):
                return entry.crl, f"crl {url} (cached, refresh failed)"
        with self._lock:
            loaded = self._loaded.get(issuer.subject.public_bytes())
        if loaded is not None:
            return loaded, "crl (loaded)"
        if not urls:
            raise RevocationUnavailable("no CRL distribution point and no CRL loaded for this CA")
        if self._fetch is None:
            raise RevocationUnavailable(f"no CRL loaded for this CA and fetching is disabled ({', '.join(urls)})")
        raise RevocationUnavailable("; ".join(errors) or "no CRL available")

    @staticmethod
    def _fresh(entry: _Entry, at: datetime, refresh: timedelta | None) -> bool:
        nu = entry.crl.next_update_utc
        if nu is None or at >= nu:
            return False
        return refresh is None or at < entry.fetched_at + refresh

    def _download(self, url: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        assert self._fetch is not None
        self.fetches += 1
        data = self._fetch(url)
        crl = load_crl(data, source=url)
        if crl.issuer != issuer.subject:
            raise RevocationUnavailable(f"{url}: CRL issued by {crl.issuer.rfc4514_string()}, not the certificate's issuer")
        return crl

    def export(self) -> list[bytes]:
        with self._lock:
            return [e.crl.public_bytes(serialization.Encoding.DER) for e in self._by_url.values()]
