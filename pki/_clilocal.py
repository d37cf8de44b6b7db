"""``python -m pki local-certificate generate-self-signed|export`` and the PKCS#12 passphrase of load/export,
kept out of ``__main__`` so that file stays the parser and the common plumbing. Same conventions as
:mod:`pki._cliverbs`: output to stdout, user errors raised as PkiError/ValueError for ``__main__`` to print."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime

from pki._files import PUBLIC_MODE, SECRET_MODE, write_atomic
from pki.certs import SubjectAltNames, fingerprint

__all__ = ["local_certificate_localcert", "pkcs12_passphrase"]


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def pkcs12_passphrase(args: argparse.Namespace, *, required: bool) -> bytes | None:
    if not args.pkcs12_passphrase_file:
        if required:
            raise ValueError("local-certificate export --type pkcs12 needs --pkcs12-passphrase-file (the file "
                             "carries the private key)")
        return None
    from pki.keys import read_passphrase_file

    return read_passphrase_file(args.pkcs12_passphrase_file)


def local_certificate_localcert(args: argparse.Namespace, store, *,  # type: ignore[no-untyped-def]
                                sans: SubjectAltNames | None, passphrase: bytes | None, now: datetime) -> None:
    from pki.localcert import ExportFormat, export_local, generate_self_signed

    if args.action == "generate-self-signed":
        if not args.subject:
            raise ValueError("local-certificate generate-self-signed needs --subject")
        cert = generate_self_signed(store, args.certificate_id, args.subject, sans, at=now,
                                    days=args.days, add_ca_constraint=args.add_ca_constraint,
                                    passphrase=passphrase)
        _print(f"Self-signed certificate {args.certificate_id}: {cert.subject.rfc4514_string()}, "
               f"serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        _print(f"  Fingerprint: {fingerprint(cert, 'sha256')} (sha256)")
        return
    fmt = ExportFormat(args.type)
    p12 = pkcs12_passphrase(args, required=True) if fmt is ExportFormat.PKCS12 else None
    if fmt is not ExportFormat.PEM and not args.filename and sys.stdout.isatty():
        raise ValueError(f"local-certificate export: {fmt.value} is binary; give --filename FILE or redirect stdout")
    data = export_local(store, args.certificate_id, fmt, pkcs12_passphrase=p12, passphrase=passphrase)
    if args.filename:
        write_atomic(args.filename, data, SECRET_MODE if fmt is ExportFormat.PKCS12 else PUBLIC_MODE)
        _print(f"Local certificate {args.certificate_id} exported ({fmt.value}) to {args.filename}")
    elif fmt is ExportFormat.PEM:
        sys.stdout.write(data.decode())
    else:
        sys.stdout.buffer.write(data)
