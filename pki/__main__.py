"""``python -m pki``: the router's ``request security pki ...`` verbs and the CA's ``ca ...`` verbs.

Router verbs (``--store DIR``, default ``$ESPRESSO_PKI_STORE`` or ./pki-store)::

    generate-key-pair --certificate-id ID --type rsa|ecdsa|ed25519 [--size N]
    ca-profile add NAME [--ca-identity X] [--enrollment-url U] [--protocol scep|est|cmpv2] [--retry N] [--retry-interval S]
                        [--revocation-check crl|ocsp|disable] [--crl-url U] [--refresh-interval HOURS]
                        [--ocsp-url U] [--no-ocsp-nonce] [--ocsp-fallback-crl] [--disable-on-download-failure]
    ca-profile delete NAME | ca-profile list
    ca-certificate enroll --ca-profile P [--yes] [--protocol scep|est|cmpv2] | ca-certificate load --ca-profile P --filename F
    ca-certificate verify --ca-profile P [--at T] [--offline]
    ca-profile-group load --ca-group-name G --file BUNDLE [--revocation-check M] | delete --ca-group-name G | list
    trusted-ca-group set G --ca-profiles P... | trusted-ca-group delete G | trusted-ca-group list
    local-certificate enroll --certificate-id ID --ca-profile P --subject DN --challenge-password-file F [SANs]
                             [--protocol scep|est|cmpv2] [--reference-number REF] [--ca-dn DN]
    local-certificate re-enroll|revoke --certificate-id ID --ca-profile P [--protocol cmpv2] [--new-key-type T]
                             [--size N] [--reason R]
    local-certificate load --certificate-id ID --filename F [--key KEYFILE | --pkcs12-passphrase-file P]
    local-certificate generate-self-signed --certificate-id ID --subject DN [SANs] [--days N] [--add-ca-constraint]
    local-certificate export --certificate-id ID [--type pem|der|pkcs12] [--pkcs12-passphrase-file P] [--filename F]
    generate-certificate-request --certificate-id ID --subject DN [--domain-name D] [--ip-address A] [--email E]
                                 [--filename F]
    crl load --ca-profile P --filename F | crl download --ca-profile P [--url U]
    auto-re-enrollment set --certificate-id ID --ca-profile P --re-enroll-trigger-time-percentage N
                           [--re-generate-keypair] [--challenge-password X] | auto-re-enrollment run [--at T]
    verify --filename F | --certificate-id ID [--intermediate F]... [--identity KIND:VALUE] [--at T] [--offline]
    show ca-certificate|local-certificate|certificate-request|crl|ca-profile [--detail] [--ca-profile P|--certificate-id ID]
    clear ca-certificate|crl --ca-profile P|--all
          | local-certificate|key-pair|certificate-request --certificate-id ID|--all

CA verbs (``--ca DIR``)::

    ca init --subject DN [--key-type T] [--key-size N] [--days N] [--path-length N] [--parent DIR]
            [--crl-url U] [--ocsp-url U] [--crl-days N] [--allow-dns-suffix D] [--allow-ip-range P]
            [--service-name NAME]...
    ca issue --csr F [--profile NAME] [--days N] [--out F] | ca revoke --serial HEX [--reason R]
    ca crl [--out F] [--pem] | ca list
    ca serve [--host H] [--port N] (--challenge-file F | --manual-approval | --no-challenge) [SAN policy]
             [--log-file F] [--request-timeout S] [--max-connections N] [--max-per-client N]
             [--est-port N [--est-cert F --est-key F] [--retry-after S]]
    ca pending | ca approve TRANSACTION-ID | ca reject TRANSACTION-ID [--reason R]
    ca cmp-secret add --reference-number REF [--secret-file F] [--days N] [--replace]
    ca cmp-secret delete --reference-number REF | ca cmp-secret list

Key passphrases come from ``--passphrase-file`` or ``$ESPRESSO_PKI_PASSPHRASE``, never from the command line;
challenge passwords preferably from ``--challenge-password-file`` / ``--challenge-file``.
User errors print one line to stderr and exit 1; usage errors exit 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pki._files import PUBLIC_MODE, read_bounded, write_atomic
from pki.certs import SubjectAltNames, certificates_to_pem, fingerprint, load_certificates
from pki.errors import PkiError

PEM = serialization.Encoding.PEM


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _at(text: str | None) -> datetime:
    if not text:
        return _now()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {text!r} (ISO 8601, e.g. 2026-06-01T12:00:00Z)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if getattr(args, "passphrase_file", None):
        from pki.keys import read_passphrase_file

        return read_passphrase_file(args.passphrase_file)  # line ending stripped only; empty refused
    env = os.environ.get("ESPRESSO_PKI_PASSPHRASE")
    return env.encode() if env else None


def _sans(args: argparse.Namespace) -> SubjectAltNames | None:
    sans = SubjectAltNames.build(dns=args.domain_name or [], ip=args.ip_address or [], email=args.email or [])
    return sans or None


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pki.store import Store

    return Store(args.store)


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# == router verbs ==============================================================================================
def cmd_generate_key_pair(args: argparse.Namespace) -> None:
    from pki.keys import describe_public_key

    key = _store(args).generate_key_pair(args.certificate_id, args.type, args.size, _passphrase(args))
    kind, size = describe_public_key(key)
    _print(f"Generated key pair {args.certificate_id}, key size {size} bits ({kind})")


def cmd_ca_profile(args: argparse.Namespace) -> None:
    from pki.profile import CaProfile, RevocationMode, RevocationPolicy

    store = _store(args)
    if args.action == "add":
        rev = RevocationPolicy(
            mode=RevocationMode(args.revocation_check), crl_url=args.crl_url,
            refresh_interval=timedelta(hours=args.refresh_interval) if args.refresh_interval else None,
            ocsp_url=args.ocsp_url, ocsp_nonce=not args.no_ocsp_nonce, ocsp_fallback_crl=args.ocsp_fallback_crl,
            fail_open=args.disable_on_download_failure)
        store.add_profile(CaProfile(args.name, args.ca_identity or "", args.enrollment_url, args.retry,
                                    args.retry_interval, rev, protocol=args.protocol), replace=args.replace)
        _print(f"ca-profile {args.name} {'updated' if args.replace else 'added'}")
    elif args.action == "delete":
        store.remove_profile(args.name)
        _print(f"ca-profile {args.name} deleted")
    else:
        _show_profiles(store)


def _show_profiles(store) -> None:  # type: ignore[no-untyped-def]
    for p in store.profiles():
        r = p.revocation
        _print(f"CA profile: {p.name}")
        _print(f"  CA identity: {p.ca_identity}")
        _print(f"  Enrollment URL: {p.enrollment_url or '(none)'} ({p.protocol.upper()}), retry {p.retry}, "
               f"retry-interval {p.retry_interval}s")
        rc = r.mode.value + (f" url {r.crl_url}" if r.crl_url else "") + (f" url {r.ocsp_url}" if r.ocsp_url else "")
        if r.refresh_interval:
            rc += f" refresh-interval {r.refresh_interval.total_seconds() / 3600:g}h"
        if r.fail_open:
            rc += " (disable on-download-failure)"
        _print(f"  Revocation check: {rc}")
        _print(f"  CA certificates: {len(store.ca_certificates(p.name))}")


def cmd_ca_certificate(args: argparse.Namespace) -> None:
    from pki._cliverbs import confirming_get_ca_certs, print_ca_fingerprints, verify_ca_certificates

    store = _store(args)
    if args.action == "verify":
        verify_ca_certificates(args.ca_profile, store, _at(args.at), None if args.offline else _default_fetch())
        return
    if args.action == "load":
        certs = store.load_ca_certificate(args.ca_profile, read_bounded(args.filename))
        verb = "loaded"
    else:
        protocol = args.protocol or store.profile(args.ca_profile).protocol  # a typo fails before anything
        if not args.yes and not sys.stdin.isatty():
            raise ValueError("ca-certificate enroll asks you to confirm the CA's fingerprint, but stdin is not a "
                             "terminal; check the fingerprint out of band and add --yes to store it unasked")
        certs = store.enroll_ca_certificate(args.ca_profile, get_ca_certs=confirming_get_ca_certs(args, protocol),
                                            protocol=protocol)
        verb = "received"
    if verb == "loaded" or args.yes:
        print_ca_fingerprints(args.ca_profile, certs, verb)
    if verb == "received":
        _print(f"CA certificate for profile {args.ca_profile} stored.")
        if args.yes:
            _print("Verify these fingerprints with the CA administrator out of band before relying on them.")


def cmd_local_certificate(args: argparse.Namespace) -> None:
    store = _store(args)
    if args.action in ("generate-self-signed", "export"):
        from pki._clilocal import local_certificate_localcert

        local_certificate_localcert(args, store, sans=_sans(args), passphrase=_passphrase(args), now=_now())
        return
    if args.action == "load":
        from pki._clilocal import pkcs12_passphrase
        from pki.localcert import import_pkcs12, is_pkcs12

        data = read_bounded(args.filename)
        if args.pkcs12_passphrase_file or is_pkcs12(data):  # JUNOS loads a .p12 with the same verb
            if args.key:
                raise ValueError("a PKCS#12 file carries its key: drop --key")
            cert = import_pkcs12(store, args.certificate_id, data, pkcs12_passphrase(args, required=False),
                                 passphrase=_passphrase(args), source=args.filename)
        else:
            key = read_bounded(args.key) if args.key else None
            cert = store.load_local_certificate(args.certificate_id, data, _passphrase(args), key=key)
        _print(f"Local certificate {args.certificate_id} loaded: {cert.subject.rfc4514_string()}")
        return
    if not args.ca_profile:
        raise ValueError(f"local-certificate {args.action} needs --ca-profile")
    protocol = args.protocol or store.profile(args.ca_profile).protocol  # a typo fails before anything
    if args.action in ("re-enroll", "revoke") or protocol == "cmpv2":
        if protocol != "cmpv2":
            raise ValueError(f"local-certificate {args.action} is CMPv2 (kur, rr): give --protocol cmpv2 or a "
                             f"ca-profile with --protocol cmpv2 (this one is {protocol})")
        from pki._clicmp import local_certificate_cmp

        local_certificate_cmp(args, store, secret=_secret_option(args, "challenge_password", "challenge_password_file"),
                              sans=_sans(args), passphrase=_passphrase(args))
        return
    if not args.subject:
        raise ValueError("local-certificate enroll needs --ca-profile and --subject")
    cert = store.enroll_local_certificate(args.certificate_id, args.ca_profile, args.subject, _sans(args),
                                          _secret_option(args, "challenge_password", "challenge_password_file"),
                                          passphrase=_passphrase(args), protocol=protocol)
    _print(f"Received certificate {args.certificate_id}: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}")
    _print(f"  Fingerprint: {fingerprint(cert, 'sha256')} (sha256)")


def cmd_generate_certificate_request(args: argparse.Namespace) -> None:
    from pki.csr import csr_to_pem

    store = _store(args)
    challenge = _secret_option(args, "challenge_password", "challenge_password_file")
    csr = store.generate_certificate_request(args.certificate_id, args.subject, _sans(args), challenge,
                                             filename=args.filename, passphrase=_passphrase(args))
    if args.filename:
        _print(f"Certificate request for {args.certificate_id} written to {args.filename}")
    else:
        sys.stdout.write(csr_to_pem(csr).decode())


def cmd_crl(args: argparse.Namespace) -> None:
    store = _store(args)
    if args.action == "load":
        crl = store.load_crl(args.ca_profile, read_bounded(args.filename))
        where = args.filename
    else:
        from pki.revocation import default_fetch
        from pki.trust import download_crl

        crl, where = download_crl(store, args.ca_profile, default_fetch, args.url)
    _print(f"CRL for {args.ca_profile} loaded from {where}: {len(crl)} revoked, next update {crl.next_update_utc}")


def cmd_auto_reenroll(args: argparse.Namespace) -> None:
    from pki.profile import AutoReenrollment
    from pki.reenroll import next_deadline, run_due

    store = _store(args)
    if args.action == "set":
        store.set_reenrollment(AutoReenrollment(args.certificate_id, args.ca_profile, args.re_enroll_trigger_time_percentage,
                                                args.re_generate_keypair,
                                                _secret_option(args, "challenge_password", "challenge_password_file")))
        _print(f"auto-re-enrollment set for {args.certificate_id}")
        return
    at = _at(args.at)
    results = run_due(store, at, passphrase=_passphrase(args))
    failed = False
    for r in results:
        if isinstance(r, PkiError):
            failed = True
            sys.stderr.write(f"error: re-enrollment failed: {r}\n")
        else:
            _print(f"Re-enrolled {r.certificate_id}: serial {r.new.serial_number:x}"
                   f"{' with a new key pair' if r.new_key else ''}")
    nd = next_deadline(store)
    _print(f"Next re-enrollment due: {nd.isoformat() if nd else '(none)'}")
    if failed:
        raise SystemExit(1)


def cmd_verify(args: argparse.Namespace) -> None:
    store = _store(args)
    if args.certificate_id:  # JUNOS "local-certificate verify certificate-id ID"
        own, chain = store.certificate_chain(args.certificate_id)  # the key (and its passphrase) is not needed
        leaf = [own, *chain]
    elif args.filename:
        leaf = load_certificates(read_bounded(args.filename), source=args.filename)
    else:
        raise ValueError("verify needs --filename or --certificate-id")
    inter = leaf[1:]
    for f in args.intermediate or []:
        inter += load_certificates(read_bounded(f), source=f)
    ident = None
    if args.identity:
        kind, _, value = args.identity.partition(":")
        if not value:
            raise ValueError("--identity is KIND:VALUE (fqdn, email, ipv4, ipv6, dn, keyid)")
        ident = (kind, value)
    chain = store.validator(fetch=None if args.offline else _default_fetch()).verify(leaf[0], inter, _at(args.at), ident)
    _print(f"OK: {leaf[0].subject.rfc4514_string()} via ca-profile {chain.profile}")
    for c, r in zip(chain.chain, chain.revocation):
        _print(f"  {c.subject.rfc4514_string()}: revocation {r.status.value} [{r.source}]")
    if chain.identity:
        _print(f"  identity matched {chain.identity}")


def _default_fetch():  # type: ignore[no-untyped-def]
    from pki.revocation import default_fetch

    return default_fetch


def cmd_show(args: argparse.Namespace) -> None:
    from pki.show import show_certificate, show_crl, show_request

    store = _store(args)
    at = _at(getattr(args, "at", None))
    what = args.what
    if what == "ca-profile":
        _show_profiles(store)
        return
    if what == "ca-certificate":
        names = [args.ca_profile] if args.ca_profile else [p.name for p in store.profiles()]
        for n in names:
            for c in store.ca_certificates(n):
                _print(show_certificate(c, at, label=n, detail=args.detail, label_kind="CA profile"))
        return
    if what == "crl":
        names = [args.ca_profile] if args.ca_profile else [p.name for p in store.profiles()]
        for n in names:
            crl = store.crl(n)
            if crl is not None:
                _print(show_crl(crl, at, label=n, detail=args.detail))
        return
    ids = [args.certificate_id] if args.certificate_id else store.local_ids()
    reenroll = {r.certificate_id: r for r in store.reenrollments()}
    for i in ids:
        e = store.entry(i)
        if what == "local-certificate" and e.certificate is not None:
            extra = {"Keypair location": "generated locally" if e.has_key else "missing"}
            if i in reenroll:
                from pki.reenroll import reenroll_at

                r = reenroll[i]
                extra["Auto-re-enrollment"] = (f"at {r.trigger_percentage}% of lifetime "
                                               f"({reenroll_at(e.certificate, r.trigger_percentage):%Y-%m-%d %H:%M} UTC)"
                                               + (", new key pair" if r.regenerate_keypair else ""))
            _print(show_certificate(e.certificate, at, label=i, detail=args.detail, extra=extra))
        elif what == "local-certificate" and e.has_key:
            # JUNOS lists a generated key pair that has no certificate yet instead of nothing
            from pki.keys import describe_public_key

            try:
                kind, bits = describe_public_key(store.public_key(i))
                alg = f"{kind.lower()} ({bits} bits)"
            except PkiError:  # an old store's encrypted key without public.pem: the passphrase would be needed
                alg = "unknown (key encrypted)"
            state = "certificate request generated" if e.request is not None else "no certificate request"
            _print(f"Certificate identifier: {i}\n  Certificate: none (key pair only; {state})\n"
                   f"  Public key algorithm: {alg}\n  Keypair location: generated locally")
        elif what == "certificate-request" and e.request is not None:
            _print(show_request(e.request, label=i, detail=args.detail))


def cmd_ca_profile_group(args: argparse.Namespace) -> None:
    from pki._cliverbs import ca_profile_group

    ca_profile_group(args, _store(args))


def cmd_trusted_ca_group(args: argparse.Namespace) -> None:
    from pki._cliverbs import trusted_ca_group

    trusted_ca_group(args, _store(args))


def cmd_clear(args: argparse.Namespace) -> None:
    store = _store(args)
    what = args.what
    if what in ("ca-certificate", "crl"):
        fn = store.clear_ca_certificate if what == "ca-certificate" else store.clear_crl
        if args.all:  # JUNOS clear security pki ca-certificate all / crl all
            if args.ca_profile:
                raise ValueError("give --ca-profile or --all, not both")
            have = store.ca_certificates if what == "ca-certificate" else store.crl
            names = [p.name for p in store.profiles() if have(p.name)]
            for n in names:
                fn(n)
            _print(f"{what}: {len(names)} cleared ({', '.join(names) or 'none held'})")
            return
        if not args.ca_profile:
            raise ValueError(f"clear {what} needs --ca-profile or --all")
        fn(args.ca_profile)
        _print(f"{what} of ca-profile {args.ca_profile} cleared")
        return
    target = {"local-certificate": "certificate", "certificate-request": "request", "key-pair": "all"}[what]
    if args.all:  # JUNOS clear security pki local-certificate all / certificate-request all / key-pair all
        if args.certificate_id:
            raise ValueError("give --certificate-id or --all, not both")
        holds = {"certificate": lambda e: e.certificate is not None, "request": lambda e: e.request is not None,
                 "all": lambda e: True}[target]
        ids = [i for i in store.local_ids() if holds(store.entry(i))]
        for i in ids:
            store.clear_local(i, what=target)
        _print(f"{what}: {len(ids)} cleared ({', '.join(ids) or 'none held'})")
        return
    if not args.certificate_id:
        raise ValueError(f"clear {what} needs --certificate-id or --all")
    store.clear_local(args.certificate_id, what=target)
    _print(f"{what} {args.certificate_id} cleared")


# == CA verbs ==================================================================================================
def _open_ca(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pki.ca import CertificateAuthority

    return CertificateAuthority.open(args.ca, _passphrase(args))


def cmd_ca(args: argparse.Namespace) -> None:
    getattr(sys.modules[__name__], "ca_" + args.ca_verb.replace("-", "_"))(args)


def ca_init(args: argparse.Namespace) -> None:
    from pki.ca import CertificateAuthority

    parent = CertificateAuthority.open(args.parent, _passphrase(args)) if args.parent else None
    ca = CertificateAuthority.init(args.ca, args.subject, key_type=args.key_type, key_size=args.key_size,
                                   validity=timedelta(days=args.days), path_length=args.path_length, parent=parent,
                                   crl_url=args.crl_url, ocsp_url=args.ocsp_url,
                                   crl_validity=timedelta(days=args.crl_days), passphrase=_passphrase(args),
                                   dns_suffixes=tuple(args.allow_dns_suffix or ()),
                                   ip_networks=tuple(args.allow_ip_range or ()),
                                   email_domains=tuple(args.allow_email_domain or ()))
    _print(f"CA initialised in {args.ca}: {ca.certificate.subject.rfc4514_string()}")
    _print(f"  Fingerprint: {fingerprint(ca.certificate, 'sha256')} (sha256)")
    from pki.est.server import DEFAULT_SERVICE_NAMES, issue_service_certificate

    names = args.service_name or list(DEFAULT_SERVICE_NAMES)
    tls = issue_service_certificate(ca, names, passphrase=_passphrase(args))
    _print(f"  EST TLS certificate: serial {tls.serial_number:x} for {', '.join(names)}")


def ca_issue(args: argparse.Namespace) -> None:
    from pki.ca import PROFILES
    from pki.csr import parse_csr

    ca = _open_ca(args)
    csr, reencoded = parse_csr(read_bounded(args.csr), source=args.csr)
    if args.profile not in PROFILES:
        raise ValueError(f"unknown profile {args.profile!r} ({', '.join(PROFILES)})")
    profile = PROFILES[args.profile]
    if args.days:
        profile = replace(profile, validity=timedelta(days=args.days))
    cert = ca.issue(csr, profile, pop_verified=reencoded)
    pem = certificates_to_pem([cert])
    if args.out:
        write_atomic(args.out, pem, PUBLIC_MODE)
        _print(f"Issued serial {cert.serial_number:x} to {cert.subject.rfc4514_string()}: {args.out}")
    else:
        sys.stdout.write(pem.decode())


def ca_revoke(args: argparse.Namespace) -> None:
    ca = _open_ca(args)
    try:
        serial = int(args.serial.replace(":", ""), 16)
    except ValueError:
        raise ValueError(f"invalid serial {args.serial!r} (hex)") from None
    rec = ca.revoke(serial, args.reason)
    ca.crl()
    _print(f"Revoked serial {serial:x} ({rec.reason.name if rec.reason else 'unspecified'}); CRL updated")


def ca_crl(args: argparse.Namespace) -> None:
    if not args.out and not args.pem and sys.stdout.isatty():
        raise ValueError("ca crl: the CRL is binary DER; give --out FILE, or --pem to print it, or redirect stdout")
    ca = _open_ca(args)
    crl = ca.crl()
    data = crl.public_bytes(PEM if args.pem else serialization.Encoding.DER)
    if args.out:
        write_atomic(args.out, data, PUBLIC_MODE)
        _print(f"CRL ({len(crl)} revoked, next update {crl.next_update_utc}) written to {args.out}")
    elif args.pem:
        sys.stdout.write(data.decode())
    else:
        sys.stdout.buffer.write(data)


def ca_list(args: argparse.Namespace) -> None:
    from pki.db import CaDatabase

    if not (Path(args.ca) / "ca.db").exists():
        raise PkiError(f"{args.ca}: not a CA directory (missing ca.db); run 'ca init' first")
    db = CaDatabase(Path(args.ca) / "ca.db")  # no key needed to list
    at = _now()
    for r in db.records():
        status = r.status_at(at).value
        extra = f" {r.revoked_at:%Y-%m-%d %H:%M} {r.reason.name if r.reason else ''}" if r.revoked_at else ""
        _print(f"{r.serial:x}  {status:8} {r.not_after:%Y-%m-%d}  {r.subject}{extra}")


def _secret_option(args: argparse.Namespace, name: str, file_name: str) -> str | None:
    """A secret given inline (``--X``, visible in ps and shell history) or in a file (``--X-file``, preferred)."""
    inline, path = getattr(args, name, None), getattr(args, file_name, None)
    if inline is not None and path is not None:
        raise ValueError(f"give --{name.replace('_', '-')} or --{file_name.replace('_', '-')}, not both")
    if path is None:
        return inline
    from pki.errors import PassphraseError
    from pki.keys import read_passphrase_file

    try:
        return read_passphrase_file(path).decode("utf-8", "strict")
    except PassphraseError:
        raise ValueError(f"{path}: empty first line: refusing an empty {name.replace('_', ' ')}") from None


def _serve_logging(log_file: str | None) -> Callable[[], None]:
    """Access lines (one per request) go to ``log_file`` or stderr, each with an ISO 8601 UTC timestamp; the
    service's warnings go to stderr as ``warning: ...``, like the CLI's own."""
    import logging
    import time

    class _Utc(logging.Formatter):
        converter = time.gmtime

        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
            return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"

    class _Cli(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            record.levelname_lower = record.levelname.lower()
            return super().format(record)

    access = logging.getLogger("pki.service.access")
    if log_file is not None:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        handler: logging.Handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Utc("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(_Cli("%(levelname_lower)s: %(message)s"))
    pki_log = logging.getLogger("pki")
    pki_log.addHandler(errors)
    level = pki_log.level
    pki_log.setLevel(logging.WARNING)

    def undo() -> None:
        """The handlers go with the service: a ``ca serve`` run in-process (tests, an embedding router) must not
        leave them writing to a stream that its caller closes."""
        access.removeHandler(handler)
        access.propagate = True
        pki_log.removeHandler(errors)
        pki_log.setLevel(level)
        handler.close()

    return undo


def ca_serve(args: argparse.Namespace) -> None:
    from pki.service import HttpLimits, serve

    challenge = _secret_option(args, "challenge", "challenge_file")
    if challenge is None and not args.manual_approval and not args.no_challenge:
        raise ValueError("ca serve: without --challenge/--challenge-file or --manual-approval anyone who can reach "
                         "the port gets a certificate; add --no-challenge to really run it that way (lab only)")
    if challenge is not None and args.no_challenge:
        raise ValueError("--no-challenge contradicts --challenge/--challenge-file")
    limits = HttpLimits(request_timeout=args.request_timeout, max_connections=args.max_connections,
                        max_per_client=min(args.max_per_client, args.max_connections))
    ca = _open_ca(args)  # fail early with a clear message
    try:
        if args.allow_dns_suffix or args.allow_ip_range or args.allow_email_domain:
            ca.set_san_policy(tuple(args.allow_dns_suffix) if args.allow_dns_suffix else None,
                              tuple(args.allow_ip_range) if args.allow_ip_range else None,
                              tuple(args.allow_email_domain) if args.allow_email_domain else None)
        config = ca.config
    finally:
        ca.close()
    if challenge is None and not args.manual_approval:
        sys.stderr.write("warning: --no-challenge: this CA issues a certificate to ANY client that asks\n")
    if not config.san_policy:
        sys.stderr.write("warning: no SAN policy (--allow-dns-suffix / --allow-ip-range / --allow-email-domain): "
                         "requested subjectAltNames are copied unfiltered\n")

    def ready(svc) -> None:  # type: ignore[no-untyped-def]
        scep = "SCEP off" if svc.scep_off_reason else "SCEP /scep"
        sys.stderr.write(f"serving CA {args.ca} on {svc.url}/ ({scep}, CMP /.well-known/cmp, CRL /crl, OCSP /ocsp)\n")
        if svc.est_url:
            sys.stderr.write(f"serving EST on {svc.est_url}\n")
        sys.stderr.flush()

    if (args.est_cert is None) != (args.est_key is None):
        raise ValueError("give --est-cert and --est-key together")
    est_tls = (args.est_cert, args.est_key) if args.est_cert else None

    undo_logging = _serve_logging(args.log_file)
    try:
        serve(args.ca, host=args.host, port=args.port, challenge=challenge, manual_approval=args.manual_approval,
              passphrase=_passphrase(args), ready=ready, limits=limits, est_port=args.est_port, est_tls=est_tls,
              retry_after=args.retry_after)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise PkiError(f"cannot listen on {args.host} port {args.port}: {exc.strerror}") from None
        raise
    finally:
        undo_logging()


def ca_cmp_secret(args: argparse.Namespace) -> None:
    from pki._clicmp import cmp_secret

    cmp_secret(args, secret=_secret_option(args, "secret", "secret_file"), now=_now())


def ca_pending(args: argparse.Namespace) -> None:
    from pki.service import list_pending

    for t in list_pending(args.ca):
        _print(f"{t.transaction_id}  {t.received_at:%Y-%m-%d %H:%M:%S}  {t.subject}")


def ca_reject(args: argparse.Namespace) -> None:
    from pki.service import reject

    reject(args.ca, args.transaction_id, args.reason, passphrase=_passphrase(args))
    _print(f"Rejected {args.transaction_id}")


def ca_approve(args: argparse.Namespace) -> None:
    from pki.service import approve

    cert = approve(args.ca, args.transaction_id, passphrase=_passphrase(args))
    _print(f"Approved {args.transaction_id}: serial {cert.serial_number:x} {cert.subject.rfc4514_string()}")


# == argument parsing ==========================================================================================
def _add_sans(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain-name", action="append", metavar="FQDN", help="subjectAltName dNSName (repeatable)")
    p.add_argument("--ip-address", action="append", metavar="ADDR", help="subjectAltName iPAddress (repeatable)")
    p.add_argument("--email", action="append", metavar="ADDR", help="subjectAltName rfc822Name (repeatable)")


def _add_san_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-dns-suffix", action="append", metavar="DOMAIN",
                   help="SAN policy, saved in the CA: copy only dNSNames equal to or under DOMAIN (repeatable)")
    p.add_argument("--allow-ip-range", action="append", metavar="PREFIX",
                   help="SAN policy, saved in the CA: copy only iPAddresses inside PREFIX, e.g. 192.0.2.0/24 "
                   "(repeatable)")
    p.add_argument("--allow-email-domain", action="append", metavar="DOMAIN",
                   help="SAN policy, saved in the CA: copy only rfc822Names @DOMAIN (repeatable)")


def _add_challenge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--challenge-password", metavar="SECRET",
                   help="SCEP challenge password from the CA administrator (visible in ps: prefer "
                   "--challenge-password-file)")
    p.add_argument("--challenge-password-file", metavar="FILE",
                   help="file whose first line is the SCEP challenge password")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


_KEY_SIZES = "RSA 2048 (default), 3072 or 4096; ECDSA 256 (P-256, default), 384 or 521; Ed25519 256"
_REASONS_HELP = ("unspecified (default), key-compromise, ca-compromise, affiliation-changed, superseded, "
                 "cessation-of-operation, certificate-hold, privilege-withdrawn, aa-compromise")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pki",
        description="espresso PKI: the router's certificate store (JUNOS 'request security pki ...' verbs) and a "
                    "small CA with SCEP, CMPv2, CRL and OCSP ('ca ...' verbs).",
        epilog="Key passphrases come from --passphrase-file or $ESPRESSO_PKI_PASSPHRASE, never from the command "
               "line. 'python -m pki VERB --help' describes each verb. Errors print one line and exit 1.")
    store_help = "store directory (default: $ESPRESSO_PKI_STORE or ./pki-store)"
    pp_help = ("file whose first line (line ending stripped, blanks kept) is the private key passphrase; "
               "an empty file is refused")
    ap.add_argument("--store", default=os.environ.get("ESPRESSO_PKI_STORE", "pki-store"), help=store_help)
    ap.add_argument("--passphrase-file", metavar="FILE", help=pp_help)
    # the same options are accepted after the verb too (SUPPRESS: they only override when given there)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--passphrase-file", metavar="FILE", default=argparse.SUPPRESS, help=pp_help)
    ca_common = argparse.ArgumentParser(add_help=False, parents=[common])
    ca_common.add_argument("--ca", default=argparse.SUPPRESS,
                           help="CA directory (default: $ESPRESSO_PKI_CA or ./pki-ca)")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB", help="what to do (VERB --help for details)")
    cid = "certificate-id: the name of the key pair and its certificate in the store"

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    p = verb("generate-key-pair", "generate a key pair in the store (JUNOS generate-key-pair)")
    p.add_argument("--certificate-id", required=True, help=cid)
    p.add_argument("--type", default="rsa", choices=["rsa", "ecdsa", "ed25519"],
                   help="key type (default rsa; SCEP enrollment needs rsa)")
    p.add_argument("--size", type=int, help=f"key size in bits: {_KEY_SIZES}")
    p.set_defaults(func=cmd_generate_key_pair)

    p = verb("ca-profile", "add, delete or list CA profiles (JUNOS security pki ca-profile)")
    p.add_argument("action", choices=["add", "delete", "list"], help="add (or --replace) a profile, delete it, "
                   "or list all")
    p.add_argument("name", nargs="?", help="profile name (add, delete)")
    p.add_argument("--ca-identity", help="CA identity, as JUNOS ca-identity (informational)")
    p.add_argument("--enrollment-url", metavar="URL", help="SCEP URL of the CA, e.g. http://ca.example.net/scep")
    p.add_argument("--retry", type=int, default=10, help="SCEP polls while a request is PENDING (default 10)")
    p.add_argument("--retry-interval", type=int, default=30, metavar="SECONDS",
                   help="seconds between SCEP polls (default 30)")
    p.add_argument("--revocation-check", choices=["crl", "ocsp", "disable"], default="crl",
                   help="how peer certificates of this CA are checked for revocation (default crl)")
    p.add_argument("--crl-url", metavar="URL", help="CRL location; default: the certificate's distribution point")
    p.add_argument("--refresh-interval", type=float, metavar="HOURS",
                   help="re-download the CRL after this many hours even before its nextUpdate")
    p.add_argument("--ocsp-url", metavar="URL", help="OCSP responder; default: the certificate's AIA OCSP URL")
    p.add_argument("--no-ocsp-nonce", action="store_true", help="send OCSP requests without a nonce")
    p.add_argument("--ocsp-fallback-crl", action="store_true",
                   help="use the CRL when the OCSP responder cannot be reached")
    p.add_argument("--disable-on-download-failure", action="store_true",
                   help="accept certificates when the CRL/OCSP answer cannot be obtained (fail open; "
                   "JUNOS disable on-download-failure)")
    p.add_argument("--replace", action="store_true", help="add: overwrite an existing profile of that name")
    p.add_argument("--protocol", choices=["scep", "est", "cmpv2"], default="scep",
                   help="how the enrollment url is spoken to: scep (default; RSA keys), est (RFC 7030, any key "
                   "type; the url is https://HOST:PORT/.well-known/est) or cmpv2 (RFC 4210/6712, any key type; "
                   "the url is http://HOST:PORT/.well-known/cmp)")
    p.set_defaults(func=cmd_ca_profile)

    p = verb("ca-certificate", "get the CA certificate of a profile by SCEP, EST or CMPv2, load it from a file, or "
             "verify it")
    p.add_argument("action", choices=["enroll", "load", "verify"],
                   help="enroll: SCEP GetCACert, EST /cacerts or CMPv2 genm caCerts (RFC 9483 4.3.1) from the "
                   "profile's enrollment-url, shows the fingerprint and asks "
                   "before storing; load: from --filename; verify: check the profile's CA certificate(s) as CAs "
                   "(cA, keyCertSign, validity, signature or chain, revocation) and its loaded CRL")
    p.add_argument("--ca-profile", required=True, help="the CA profile it belongs to")
    p.add_argument("--filename", metavar="FILE", help="load: PEM or DER certificate(s)")
    p.add_argument("--protocol", choices=["scep", "est", "cmpv2"], help="enroll: scep, est or cmpv2 (default: "
                   "the profile's)")
    p.add_argument("--yes", action="store_true", help="enroll: store without asking (scripts; check the printed "
                   "fingerprint out of band)")
    p.add_argument("--at", help="verify: at this ISO 8601 instant (default: now)")
    p.add_argument("--offline", action="store_true", help="verify: use loaded CRLs only, fetch nothing")
    p.set_defaults(func=cmd_ca_certificate)

    p = verb("ca-profile-group", "load a bundle of CA certificates as one ca-profile each (JUNOS ca-profile-group "
             "load), delete such a group, or list groups")
    p.add_argument("action", choices=["load", "delete", "list"], help="load: from --file (loading again replaces "
                   "the group); delete: the group and its profiles; list: all groups")
    p.add_argument("--ca-group-name", metavar="NAME", help="the group (its profiles are NAME-<fingerprint prefix>)")
    p.add_argument("--file", "--filename", dest="filename", metavar="BUNDLE", help="load: PEM bundle of CA "
                   "certificates")
    p.add_argument("--revocation-check", choices=["crl", "ocsp", "disable"], default="crl",
                   help="load: revocation checking of the group's profiles (default crl)")
    p.set_defaults(func=cmd_ca_profile_group)

    p = verb("trusted-ca-group", "name a set of ca-profiles that IKE may trust together (JUNOS trusted-ca-group; "
             "ike config: trusted_ca_group = NAME)")
    p.add_argument("action", choices=["set", "delete", "list"], help="set (or replace), delete or list")
    p.add_argument("name", nargs="?", help="group name (set, delete)")
    p.add_argument("--ca-profiles", nargs="+", metavar="PROFILE", help="set: the profiles (space or comma "
                   "separated)")
    p.set_defaults(func=cmd_trusted_ca_group)

    p = verb("local-certificate", "enroll a local certificate by SCEP, EST or CMPv2, load one issued out of band "
             "(PEM, DER, PKCS#12), generate a self-signed one, export one, or (CMPv2) update its key or revoke it")
    p.add_argument("action", choices=["enroll", "load", "generate-self-signed", "export", "re-enroll", "revoke"],
                   help="enroll: SCEP PKCSReq (RSA key pairs), EST simpleenroll or CMPv2 ir to the profile's CA; "
                   "load: from --filename (a PKCS#12 file creates the certificate-id with its key); "
                   "generate-self-signed: sign the key pair's certificate with itself; export: write it as --type "
                   "pem|der|pkcs12; re-enroll: CMPv2 key update (kur) to a new key pair; revoke: CMPv2 rr")
    p.add_argument("--reference-number", metavar="REF", help="cmpv2 enroll: the reference number from the CA "
                   "administrator; its secret goes in --challenge-password(-file)")
    p.add_argument("--ca-dn", metavar="DN", help="cmpv2 enroll: the CA's DN, when the profile has no CA "
                   "certificate yet (default: the NULL-DN)")
    p.add_argument("--new-key-type", choices=["rsa", "ecdsa", "ed25519"],
                   help="re-enroll: type of the new key pair (default: the current one's)")
    p.add_argument("--size", type=int, help=f"re-enroll: size of the new key pair: {_KEY_SIZES}")
    p.add_argument("--reason", default="unspecified", help=f"revoke: revocation reason: {_REASONS_HELP}")
    p.add_argument("--certificate-id", required=True, help=cid)
    p.add_argument("--ca-profile", help="enroll: the CA profile to enroll with")
    p.add_argument("--protocol", choices=["scep", "est", "cmpv2"], help="enroll: scep, est or cmpv2 (default: "
                   "the profile's; re-enroll and revoke are cmpv2); EST sends the challenge password as HTTP basic "
                   "password, CMPv2 uses it as the secret of --reference-number")
    p.add_argument("--subject", metavar="DN", help="enroll, generate-self-signed: subject DN in RFC 4514 order "
                   "(most significant last), e.g. CN=r1,O=Example,C=US; or /C=US/O=Example/CN=r1")
    _add_challenge(p)
    p.add_argument("--filename", metavar="FILE", help="load: the certificate (PEM/DER), optionally with its "
                   "chain, or a PKCS#12 file; export: where to write (default: stdout)")
    p.add_argument("--key", metavar="FILE", help="load: a private key file to store with the certificate "
                   "(for a new certificate-id)")
    p.add_argument("--type", default="pem", choices=["pem", "der", "pkcs12"],
                   help="export: pem (certificate and stored intermediates, default), der (certificate), pkcs12 "
                   "(key, certificate and intermediates, encrypted)")
    p.add_argument("--pkcs12-passphrase-file", metavar="FILE",
                   help="export --type pkcs12, load of a PKCS#12 file: file whose first line is its passphrase")
    p.add_argument("--days", type=int, default=365, help="generate-self-signed: validity in days (default 365)")
    p.add_argument("--add-ca-constraint", action="store_true",
                   help="generate-self-signed: make it a CA certificate (basicConstraints cA, keyCertSign)")
    _add_sans(p)
    p.set_defaults(func=cmd_local_certificate)

    p = verb("generate-certificate-request", "write a PKCS#10 request for a key pair (JUNOS "
             "generate-certificate-request)")
    p.add_argument("--certificate-id", required=True, help=cid)
    p.add_argument("--subject", required=True, metavar="DN", help="subject DN, e.g. CN=r1,O=Example,C=US")
    _add_challenge(p)
    p.add_argument("--filename", metavar="FILE", help="also write the request there (default: print it)")
    _add_sans(p)
    p.set_defaults(func=cmd_generate_certificate_request)

    p = verb("crl", "load or download the CRL of a CA profile")
    p.add_argument("action", choices=["load", "download"], help="load: from --filename; download: from --url, "
                   "else the profile's crl-url, else the CRL distribution point of a certificate the profile's CA "
                   "issued (local certificates), else of the CA certificate")
    p.add_argument("--ca-profile", required=True, help="the CA profile the CRL belongs to")
    p.add_argument("--filename", metavar="FILE", help="load: CRL file (PEM or DER)")
    p.add_argument("--url", help="download: URL overriding the profile's crl-url")
    p.set_defaults(func=cmd_crl)

    p = verb("auto-re-enrollment", "set automatic SCEP re-enrollment, or run the re-enrollments due now")
    p.add_argument("action", choices=["set", "run"], help="set: configure a certificate-id; run: re-enroll what "
                   "is due (call it periodically, e.g. from cron)")
    p.add_argument("--certificate-id", help=cid)
    p.add_argument("--ca-profile", help="set: the CA profile to re-enroll with")
    p.add_argument("--re-enroll-trigger-time-percentage", type=int, default=80, metavar="PERCENT",
                   help="re-enroll when this share of the validity period has passed (1-99, default 80)")
    p.add_argument("--re-generate-keypair", action="store_true", help="set: use a new key pair for the new "
                   "certificate")
    _add_challenge(p)
    p.add_argument("--at", help="run: act as if it were this ISO 8601 instant (default: now)")
    p.set_defaults(func=cmd_auto_reenroll)

    p = verb("verify", "validate a certificate against the store's CA profiles (chain, validity, revocation, "
             "identity)")
    p.add_argument("--filename", metavar="FILE", help="certificate (optionally followed by its chain) to verify")
    p.add_argument("--certificate-id", help="verify a local certificate of the store instead (no passphrase needed)")
    p.add_argument("--intermediate", action="append", metavar="FILE", help="intermediate CA certificate(s) "
                   "(repeatable)")
    p.add_argument("--identity", metavar="KIND:VALUE", help="IKE identity the certificate must match: fqdn, email, "
                   "ipv4, ipv6, dn or keyid, e.g. fqdn:gw.example.net")
    p.add_argument("--at", help="validate at this ISO 8601 instant (default: now)")
    p.add_argument("--offline", action="store_true", help="use loaded CRLs only, fetch nothing")
    p.set_defaults(func=cmd_verify)

    for name, fn, text in (("show", cmd_show, "show the store's contents (JUNOS show security pki ...)"),
                           ("clear", cmd_clear, "remove items from the store (JUNOS clear security pki ...)")):
        p = verb(name, text)
        choices = ["ca-certificate", "local-certificate", "certificate-request", "crl"]
        choices += ["ca-profile"] if name == "show" else ["key-pair"]
        p.add_argument("what", choices=choices, help="what to " + name)
        p.add_argument("--ca-profile", help="only this CA profile (ca-certificate, crl)")
        p.add_argument("--certificate-id", help="only this certificate-id (local-certificate, certificate-request"
                       + (")" if name == "show" else ", key-pair)"))
        if name == "clear":
            p.add_argument("--all", action="store_true", help="every ca-profile's (ca-certificate, crl) or every "
                           "certificate-id's (local-certificate, certificate-request, key-pair): JUNOS '... all'")
        if name == "show":
            p.add_argument("--detail", action="store_true", help="all fields (JUNOS detail)")
            p.add_argument("--at", help="show validity status at this ISO 8601 instant (default: now)")
        p.set_defaults(func=fn)

    p = verb("ca", "certificate authority: init, issue, revoke, crl, list, serve (SCEP/CMPv2/CRL/OCSP), pending, "
             "approve, reject, cmp-secret")
    p.add_argument("--ca", default=os.environ.get("ESPRESSO_PKI_CA", "pki-ca"),
                   help="CA directory (default: $ESPRESSO_PKI_CA or ./pki-ca)")
    casub = p.add_subparsers(dest="ca_verb", required=True, metavar="CA-VERB",
                             help="what to do with the CA (CA-VERB --help for details)")

    def ca_verb(name: str, text: str) -> argparse.ArgumentParser:
        return casub.add_parser(name, parents=[ca_common], help=text, description=text)

    q = ca_verb("init", "create a root CA, or an intermediate with --parent")
    q.add_argument("--subject", required=True, metavar="DN", help="CA subject DN, e.g. \"CN=Lab Root,O=Example\"")
    q.add_argument("--key-type", default="ecdsa", choices=["rsa", "ecdsa", "ed25519"],
                   help="CA key type (default ecdsa; SCEP needs rsa)")
    q.add_argument("--key-size", type=int, help=f"key size in bits: {_KEY_SIZES}")
    q.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    q.add_argument("--path-length", type=int, help="basicConstraints pathLenConstraint (default: none)")
    q.add_argument("--parent", metavar="DIR", help="directory of the parent CA (makes an intermediate)")
    q.add_argument("--crl-url", metavar="URL", help="CRL distribution point put into issued certificates")
    q.add_argument("--ocsp-url", metavar="URL", help="OCSP responder URL put into issued certificates (AIA)")
    q.add_argument("--crl-days", type=int, default=7, help="CRL validity (nextUpdate) in days (default 7)")
    q.add_argument("--service-name", action="append", metavar="NAME",
                   help="DNS name or IP address of the EST TLS certificate the CA issues itself (repeatable; "
                   "default: localhost, 127.0.0.1, ::1)")
    _add_san_policy(q)
    q = ca_verb("issue", "issue a certificate from a PKCS#10 request")
    q.add_argument("--csr", required=True, metavar="FILE", help="the request (PEM or DER)")
    q.add_argument("--profile", default="ipsec", help="issuance profile: ipsec (default, no EKU), ipsec-ike, "
                   "ipsec-server, ipsec-client")
    q.add_argument("--days", type=int, help="validity in days (default: the profile's, 365)")
    q.add_argument("--out", metavar="FILE", help="write the certificate there (default: print it)")
    q = ca_verb("revoke", "revoke a certificate and re-sign the CRL")
    q.add_argument("--serial", required=True, help="serial number in hex (colons allowed)")
    q.add_argument("--reason", default="unspecified", help=f"revocation reason: {_REASONS_HELP}")
    q = ca_verb("crl", "print or write the current CRL")
    q.add_argument("--out", metavar="FILE", help="write the CRL there")
    q.add_argument("--pem", action="store_true", help="PEM instead of DER (DER is refused on a terminal)")
    ca_verb("list", "list every certificate issued, with its status")
    q = ca_verb("serve", "serve SCEP (/scep), CMPv2 (POST application/pkixcmp, e.g. /.well-known/cmp), the CRL "
                "(/crl) and OCSP (/ocsp) over HTTP until Ctrl-C")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    q.add_argument("--challenge", help="SCEP challenge password clients must put in their request "
                   "(visible in ps: prefer --challenge-file)")
    q.add_argument("--challenge-file", metavar="FILE", help="file whose first line is the SCEP challenge password")
    q.add_argument("--no-challenge", action="store_true",
                   help="INSECURE, lab only: issue to any client without a challenge password")
    q.add_argument("--manual-approval", action="store_true",
                   help="hold every request PENDING until 'ca approve' (clients keep polling)")
    _add_san_policy(q)
    q.add_argument("--log-file", metavar="FILE",
                   help="append the access log (one line per request: client, operation, outcome, reason) to FILE "
                   "instead of stderr")
    q.add_argument("--request-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="seconds a client has to send its whole request, headers and body (default 10)")
    q.add_argument("--max-connections", type=_positive_int, default=64, metavar="N",
                   help="connections served at once, all clients together (default 64; 503 beyond)")
    q.add_argument("--max-per-client", type=_positive_int, default=8, metavar="N",
                   help="connections served at once from one client address (default 8; 503 beyond)")
    q.add_argument("--est-port", type=int, metavar="PORT",
                   help="also serve EST (RFC 7030) over HTTPS on PORT, e.g. 8443, at /.well-known/est (default: off)")
    q.add_argument("--est-cert", metavar="FILE", help="EST TLS certificate (PEM, with its chain) instead of the one "
                   "the CA issued itself at init")
    q.add_argument("--est-key", metavar="FILE", help="the key of --est-cert (PEM)")
    q.add_argument("--retry-after", type=_positive_int, default=60, metavar="SECONDS",
                   help="EST: how long a client waits before asking again for a request awaiting approval "
                   "(default 60)")
    q = ca_verb("cmp-secret", "CMPv2 initial enrollment: add, delete or list reference numbers and their "
                "secrets (one enrollment each)")
    q.add_argument("action", choices=["add", "delete", "list"], help="add (prints a generated secret when none "
                   "is given), delete, or list (secrets are never shown)")
    q.add_argument("--reference-number", "--ref", metavar="REF", help="the reference number (senderKID) the "
                   "router sends, as JUNOS reference-number")
    q.add_argument("--secret", help="the shared secret (visible in ps: prefer --secret-file, or let one be "
                   "generated)")
    q.add_argument("--secret-file", metavar="FILE", help="file whose first line is the shared secret")
    q.add_argument("--days", type=_positive_int, help="the reference expires after this many days (default: "
                   "never)")
    q.add_argument("--replace", action="store_true", help="add: overwrite an existing reference")
    ca_verb("pending", "list SCEP, EST and CMPv2 requests waiting for approval")
    q = ca_verb("approve", "issue the certificate of a PENDING SCEP request (the client gets it at its next poll)")
    q.add_argument("transaction_id", help="transaction ID, as 'ca pending' shows it")
    q = ca_verb("reject", "refuse a PENDING SCEP request (the client gets a failure at its next poll)")
    q.add_argument("transaction_id", help="transaction ID, as 'ca pending' shows it")
    q.add_argument("--reason", default="rejected by operator", help="text kept with the rejection")
    p.set_defaults(func=cmd_ca)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.verb == "ca-profile" and args.action in ("add", "delete") and not args.name:
        ap.error(f"ca-profile {args.action} needs a NAME")
    if args.verb in ("ca-certificate", "local-certificate", "crl") and args.action == "load" and not args.filename:
        ap.error(f"{args.verb} load needs --filename")
    try:
        args.func(args)
    except (PkiError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
