"""``python -m pki`` verbs of CMPv2 (``local-certificate enroll|re-enroll|revoke`` over CMP, ``ca cmp-secret``),
kept out of ``__main__`` so that file stays the parser and the common plumbing. Same conventions as
:mod:`pki._cliverbs`: output to stdout, user errors raised as PkiError/ValueError for ``__main__`` to print as one
line. Secrets arrive already read (``__main__`` owns the option/file conventions), so nothing here touches argv
secrets twice."""
from __future__ import annotations

import argparse
import secrets as _secrets
import sys
from datetime import datetime, timedelta
from pathlib import Path

from pki.certs import SubjectAltNames, fingerprint
from pki.errors import PkiError

__all__ = ["cmp_secret", "local_certificate_cmp"]


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def local_certificate_cmp(args: argparse.Namespace, store, *, secret: str | None,  # type: ignore[no-untyped-def]
                          sans: SubjectAltNames | None, passphrase: bytes | None) -> None:
    """CMPv2 (JUNOS ``enroll cmpv2``): ir with reference number and secret; kur (re-enroll); rr (revoke)."""
    from pki.cmp import enroll as cmp

    if args.action == "revoke":
        serial = cmp.revoke_local_certificate(store, args.certificate_id, args.ca_profile, reason=args.reason,
                                              passphrase=passphrase)
        _print(f"Revoked certificate {args.certificate_id}, serial {serial:x} ({args.reason})")
        return
    if args.action == "re-enroll":
        cert = cmp.key_update(store, args.certificate_id, args.ca_profile, key_type=args.new_key_type,
                              size=args.size, passphrase=passphrase)
        _print(f"Key updated for {args.certificate_id}: {cert.subject.rfc4514_string()}, serial "
               f"{cert.serial_number:x}")
        _print(f"  Fingerprint: {fingerprint(cert, 'sha256')} (sha256)")
        return
    if not args.subject or not args.reference_number or not secret:
        raise ValueError("local-certificate enroll --protocol cmpv2 needs --subject, --reference-number and "
                         "--challenge-password(-file) (the secret the CA administrator gave with the reference)")
    cert, new_cas = cmp.enroll_local_certificate(store, args.certificate_id, args.ca_profile, args.subject, sans,
                                                 reference=args.reference_number, secret=secret, ca_dn=args.ca_dn,
                                                 passphrase=passphrase)
    for c in new_cas:
        _print(f"CA certificate for profile {args.ca_profile} received (caPubs): {c.subject.rfc4514_string()}")
        _print(f"  Fingerprint: {fingerprint(c, 'sha256')} (sha256)")
    _print(f"Received certificate {args.certificate_id}: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}")
    _print(f"  Fingerprint: {fingerprint(cert, 'sha256')} (sha256)")


def cmp_secret(args: argparse.Namespace, *, secret: str | None, now: datetime) -> None:
    """The reference numbers and secrets of CMP initial enrollment (what a JUNOS router is configured with)."""
    from pki.ca import DB_FILE
    from pki.cmp.server import SecretStore

    path = Path(args.ca) / DB_FILE
    if not path.exists():
        raise PkiError(f"{args.ca}: not a CA directory (missing ca.db); run 'ca init' first")
    store = SecretStore(path)
    try:
        if args.action == "list":
            for s in store.secrets():
                state = f"used by transaction {s.used_by}" if s.used_by else "unused"
                expires = f"expires {s.expires_at:%Y-%m-%d %H:%M}" if s.expires_at else "no expiry"
                _print(f"{s.reference}  created {s.created_at:%Y-%m-%d %H:%M}  {expires}  {state}")
            return
        if not args.reference_number:
            raise ValueError(f"ca cmp-secret {args.action} needs --reference-number")
        if args.action == "delete":
            store.delete(args.reference_number)
            _print(f"Deleted CMP reference {args.reference_number}")
            return
        generated = secret is None
        if secret is None:
            secret = _secrets.token_urlsafe(18)
        store.add(args.reference_number, secret, now, now + timedelta(days=args.days) if args.days else None,
                  replace=args.replace)
        _print(f"CMP reference {args.reference_number} added (one initial enrollment"
               + (f", valid {args.days} days)" if args.days else ")"))
        if generated:  # shown once, for the router's operator; never logged
            _print(f"  Secret: {secret}")
    finally:
        store.close()
