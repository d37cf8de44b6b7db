"""``python -m pki`` verbs about trust (ca-certificate verify, ca-profile-group, trusted-ca-group), kept out of
``__main__`` so that file stays the parser and the common plumbing. Same conventions: output to stdout, user
errors raised as PkiError/ValueError for ``__main__`` to print as one line."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime

from pki import trust
from pki._files import read_bounded
from pki.certs import fingerprint
from pki.errors import PkiError
from pki.profile import RevocationMode, RevocationPolicy
from pki.revocation import verify_crl
from pki.validate import ValidationPolicy

__all__ = ["ca_profile_group", "confirming_get_ca_certs", "print_ca_fingerprints", "show_groups", "trusted_ca_group",
           "verify_ca_certificates"]


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def verify_ca_certificates(profile: str, store, at: datetime,  # type: ignore[no-untyped-def]
                           fetch: Callable[[str], bytes] | None) -> None:
    """JUNOS ``request security pki ca-certificate verify ca-profile P``: each CA certificate of the profile
    checked as a CA (:meth:`pki.validate.Validator.verify_ca`), then the profile's loaded CRL against it."""
    cas = store.ca_certificates(profile)
    if not cas:
        raise PkiError(f"no CA certificate for ca-profile {profile!r}")
    validator = store.validator(ValidationPolicy(check_revocation=True), fetch=fetch)
    for c in cas:
        chain = validator.verify_ca(c, [x for x in cas if x is not c], at)
        how = "self-signed, signature verified" if len(chain.chain) == 1 else \
            f"issued by {chain.chain[1].subject.rfc4514_string()} (ca-profile {chain.profile or '-'})"
        _print(f"CA certificate {c.subject.rfc4514_string()} of ca-profile {profile}: verified ({how})")
        for cc, r in zip(chain.chain, chain.revocation):
            _print(f"  {cc.subject.rfc4514_string()}: revocation {r.status.value} [{r.source}]")
    crl = store.crl(profile)
    if crl is not None:
        signer = next((c for c in cas if c.subject == crl.issuer), None)
        try:
            if signer is None:
                raise PkiError(f"issued by {crl.issuer.rfc4514_string()}, not a CA certificate of the profile")
            verify_crl(crl, signer, at)
            _print(f"  CRL: signed by {signer.subject.rfc4514_string()}, next update {crl.next_update_utc}")
        except PkiError as exc:
            raise PkiError(f"CRL of ca-profile {profile}: {exc}") from None


def ca_profile_group(args: argparse.Namespace, store) -> None:  # type: ignore[no-untyped-def]
    if args.action == "load":
        if not args.ca_group_name or not args.filename:
            raise ValueError("ca-profile-group load needs --ca-group-name and --file")
        rev = RevocationPolicy(mode=RevocationMode(args.revocation_check))
        members = trust.load_ca_group(store, args.ca_group_name, read_bounded(args.filename), rev,
                                      source=args.filename)
        _print(f"ca-profile-group {args.ca_group_name}: {len(members)} CA certificate(s) loaded")
        for name, cert in members:
            _print(f"  {name}: {cert.subject.rfc4514_string()}  {fingerprint(cert, 'sha256')}")
    elif args.action == "delete":
        g = trust.delete_group(store, args.ca_group_name or "")
        _print(f"ca-profile-group {g.name} deleted"
               + (f" with its {len(g.profiles)} ca-profile(s)" if g.loaded else ""))
    else:
        show_groups(store)


def trusted_ca_group(args: argparse.Namespace, store) -> None:  # type: ignore[no-untyped-def]
    if args.action == "set":
        if not args.name or not args.ca_profiles:
            raise ValueError("trusted-ca-group set needs a NAME and --ca-profiles")
        g = trust.set_trusted_group(store, args.name, [p for v in args.ca_profiles for p in v.split(",")])
        _print(f"trusted-ca-group {g.name}: {', '.join(g.profiles)}")
    elif args.action == "delete":
        trust.delete_group(store, args.name or "")
        _print(f"trusted-ca-group {args.name} deleted")
    else:
        show_groups(store)


def show_groups(store) -> None:  # type: ignore[no-untyped-def]
    for g in trust.groups(store):
        kind = "ca-profile-group (loaded)" if g.loaded else "trusted-ca-group"
        _print(f"{kind} {g.name}: {', '.join(g.profiles)}")


def print_ca_fingerprints(profile: str, certs, verb: str) -> None:  # type: ignore[no-untyped-def]
    for c in certs:
        _print(f"CA certificate for profile {profile} {verb}: {c.subject.rfc4514_string()}")
        _print(f"  Fingerprint: {fingerprint(c, 'sha256')} (sha256)")
        _print(f"               {fingerprint(c, 'sha1')} (sha1)")


def confirming_get_ca_certs(args: argparse.Namespace, protocol: str):  # type: ignore[no-untyped-def]
    """SCEP GetCACert, EST /cacerts or CMP genm caCerts, then (without --yes) JUNOS's question before anything is
    stored."""
    if protocol == "est":
        from pki.est.client import get_ca_certs
    elif protocol == "cmpv2":
        from pki.cmp.client import get_ca_certs
    else:
        from pki.scep.client import get_ca_certs
    from pki.store import _is_ca

    def get(url: str):  # type: ignore[no-untyped-def]
        certs = get_ca_certs(url)
        if args.yes:
            return certs
        shown = [c for c in certs if _is_ca(c)] or certs
        print_ca_fingerprints(args.ca_profile, shown, "received")
        sys.stdout.write("Do you want to load the above CA certificate? [yes,no] (no) ")
        sys.stdout.flush()
        try:
            answer = input().strip().lower()
        except EOFError:
            answer = ""
        if answer not in ("yes", "y"):
            raise PkiError(f"CA certificate for profile {args.ca_profile} not stored (fingerprint not confirmed)")
        return certs

    return get
