"""Automatic re-enrollment of local certificates (JUNOS ``auto-re-enrollment``).

:func:`reenroll_at` is the deadline: the instant a certificate has used ``re-enroll-trigger-time-percentage`` of its
lifetime. :func:`due` says whether that deadline has passed at ``at``. :func:`reenroll` asks the CA for a new
certificate (same subject and SANs; a new key pair if ``re-generate-keypair``) and swaps the certificate-id's key
and certificate in atomically through :meth:`pki.store.Store.install`: until the swap, the old pair stays in use;
if enrollment fails nothing changes.

Nothing here reads the clock: the caller (a daemon timer) passes ``at`` and schedules itself at
:func:`next_deadline`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from pki.certs import sans_of
from pki.errors import PkiError, StoreError
from pki.keys import describe_public_key, generate_private_key, parse_key_spec
from pki.profile import AutoReenrollment
from pki.store import Store

__all__ = ["ReenrollResult", "due", "next_deadline", "reenroll", "reenroll_at", "run_due"]


def reenroll_at(cert: x509.Certificate, percentage: int) -> datetime:
    if not 1 <= percentage <= 99:
        raise ValueError("percentage must be between 1 and 99")
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    return nb + (na - nb) * percentage / 100


def due(cert: x509.Certificate, percentage: int, at: datetime) -> bool:
    return at >= reenroll_at(cert, percentage)


def next_deadline(store: Store) -> datetime | None:
    """The earliest re-enrollment deadline over the store's auto-re-enrollment settings (None: nothing to do)."""
    deadlines = []
    for s in store.reenrollments():
        cert = store.local_certificate(s.certificate_id)
        if cert is not None:
            deadlines.append(reenroll_at(cert, s.trigger_percentage))
    return min(deadlines) if deadlines else None


@dataclass(frozen=True)
class ReenrollResult:
    certificate_id: str
    old: x509.Certificate
    new: x509.Certificate
    new_key: bool


def reenroll(store: Store, setting: AutoReenrollment, at: datetime, *, passphrase: bytes | None = None,
             enroll: Callable[..., x509.Certificate] | None = None,
             sleep: Callable[[float], None] | None = None) -> ReenrollResult:
    """Enroll a replacement for ``setting.certificate_id`` now and swap it in atomically."""
    old = store.local_certificate(setting.certificate_id)
    if old is None:
        raise StoreError(f"certificate-id {setting.certificate_id!r} has no local certificate to re-enroll")
    old_key = store.private_key(setting.certificate_id, passphrase)
    if setting.regenerate_keypair:
        kind, size = describe_public_key(old_key)
        key = generate_private_key(parse_key_spec(kind.lower(), size))
    else:
        key = old_key
    profile = store.profile(setting.ca_profile)
    ca_certs = store.ca_certificates(setting.ca_profile)
    if not ca_certs:
        raise StoreError(f"no CA certificate for ca-profile {setting.ca_profile!r}")
    if profile.protocol == "cmpv2":  # CMP renews by key update (kur), signed with the current certificate
        from pki.cmp.enroll import key_update

        new = key_update(store, setting.certificate_id, setting.ca_profile, passphrase=passphrase, sleep=sleep)
        return ReenrollResult(setting.certificate_id, old, new, True)
    from pki.csr import build_csr

    # SCEP carries the challenge in the request; EST in HTTP basic, beside the current certificate as TLS credential
    in_csr = setting.challenge_password if profile.protocol == "scep" else None
    csr = build_csr(key, old.subject, sans_of(old) or None, in_csr)
    new = store._enroll(profile, key, csr, ca_certs, setting.challenge_password, enroll, sleep,
                        signer=(old, old_key), username=setting.certificate_id)
    store.install(setting.certificate_id, key, new, csr, passphrase=passphrase)
    return ReenrollResult(setting.certificate_id, old, new, key is not old_key)


def run_due(store: Store, at: datetime, **kw) -> list[ReenrollResult | PkiError]:  # type: ignore[no-untyped-def]
    """Re-enroll every certificate whose deadline has passed; failures are returned, not raised, so one CA
    being down does not stop the others (the caller retries at its next timer)."""
    out: list[ReenrollResult | PkiError] = []
    for s in store.reenrollments():
        cert = store.local_certificate(s.certificate_id)
        if cert is None or not due(cert, s.trigger_percentage, at):
            continue
        try:
            out.append(reenroll(store, s, at, **kw))
        except PkiError as exc:
            out.append(exc)
    return out
