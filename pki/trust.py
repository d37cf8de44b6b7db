"""Trust beyond one ca-profile: CA profile groups, trusted-ca-groups, and where a profile's CRL comes from.

JUNOS has two ways to trust many CAs at once. ``request security pki ca-profile-group load ca-group-name G
filename BUNDLE`` creates one ca-profile per CA certificate of a bundle (a corporate or public root set), and
``trusted-ca-group G ca-profiles [a b c]`` names a set of profiles an IKE policy trusts instead of one. Here both
are a named group of ca-profiles kept in ``ca-groups.json`` of the store::

    [{"name": "corp", "profiles": ["corp-1a2b3c4d", ...], "loaded": true}, ...]

``loaded`` groups own their profiles (created from a bundle, deleted with the group); a trusted-ca-group only
refers to profiles that exist on their own. IKE resolves ``trusted_ca_group = "corp"`` to those profiles
(``ike.config``).

These functions use :class:`pki.store.Store`'s public methods and the group file only.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki._files import PUBLIC_MODE, read_bounded, write_atomic
from pki.certs import certificates_to_pem, fingerprint, load_certificates
from pki.errors import PkiError, ProfileError, StoreError
from pki.profile import CaProfile, RevocationPolicy
from pki.revocation import crl_urls

__all__ = ["GROUPS_FILE", "CaGroup", "crl_locations", "delete_group", "download_crl", "group", "group_anchors", "groups",
           "load_ca_group", "set_trusted_group"]

GROUPS_FILE = "ca-groups.json"
#: a bundle larger than this is more likely a mistake (a whole OS trust store) than a router's CA set
MAX_GROUP_CAS = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}$")


@dataclass(frozen=True)
class CaGroup:
    name: str
    profiles: tuple[str, ...]
    loaded: bool  # True: made by ca-profile-group load, owns its profiles

    def to_dict(self) -> dict:
        return {"name": self.name, "profiles": list(self.profiles), "loaded": self.loaded}


def _check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise StoreError(f"invalid group name {name!r} (letters, digits, '.', '_', '-'; max 51)")
    return name


def groups(store) -> list[CaGroup]:  # type: ignore[no-untyped-def]
    p = store.path / GROUPS_FILE
    if not p.exists():
        return []
    try:
        data = json.loads(read_bounded(p))
        return [CaGroup(str(d["name"]), tuple(str(x) for x in d["profiles"]), bool(d.get("loaded", False)))
                for d in data]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise StoreError(f"{p}: corrupt") from None


def _write(store, items: Sequence[CaGroup]) -> None:  # type: ignore[no-untyped-def]
    data = json.dumps([g.to_dict() for g in sorted(items, key=lambda g: g.name)], indent=2) + "\n"
    write_atomic(store.path / GROUPS_FILE, data.encode(), PUBLIC_MODE)


def group(store, name: str) -> CaGroup:  # type: ignore[no-untyped-def]
    for g in groups(store):
        if g.name == name:
            return g
    raise ProfileError(f"no ca-profile-group or trusted-ca-group {name!r}")


def _identity(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def load_ca_group(store, name: str, bundle: bytes, revocation: RevocationPolicy | None = None,  # type: ignore[no-untyped-def]
                  *, source: str = "bundle") -> list[tuple[str, x509.Certificate]]:
    """JUNOS ``ca-profile-group load ca-group-name NAME filename BUNDLE``: one ca-profile per CA certificate,
    named ``NAME-`` plus the first 8 hex digits of its SHA-256 fingerprint (stable when the bundle is reloaded in
    another order). Loading again replaces the group: profiles of certificates no longer in the bundle go.
    Everything is checked before anything is written."""
    _check_name(name)
    certs = load_certificates(bundle, source=source)
    if len(certs) > MAX_GROUP_CAS:
        raise StoreError(f"{source}: {len(certs)} certificates, more than {MAX_GROUP_CAS}")
    from pki.store import _is_ca

    members: dict[str, x509.Certificate] = {}
    for c in certs:
        if not _is_ca(c):
            raise StoreError(f"{source}: {c.subject.rfc4514_string()} is not a CA certificate "
                             "(basicConstraints cA is not set)")
        members.setdefault(f"{name}-{fingerprint(c, 'sha256').replace(':', '')[:8]}", c)
    existing = {g.name: g for g in groups(store)}
    old = existing.get(name)
    if old is not None and not old.loaded:
        raise StoreError(f"{name!r} is a trusted-ca-group; delete it before loading a bundle under that name")
    owned = set(old.profiles) if old is not None else set()
    taken = {p.name for p in store.profiles()} - owned
    clash = sorted(set(members) & taken)
    if clash:
        raise StoreError(f"ca-profile {clash[0]!r} exists already outside group {name!r}")
    for pname, cert in members.items():
        profile = CaProfile(pname, _identity(cert), None, revocation=revocation or RevocationPolicy())
        store.add_profile(profile, replace=pname in owned)
        store.load_ca_certificate(pname, certificates_to_pem([cert]))
    for pname in owned - set(members):
        try:
            store.remove_profile(pname)
        except PkiError:
            pass
    existing[name] = CaGroup(name, tuple(members), True)
    _write(store, list(existing.values()))
    return list(members.items())


def set_trusted_group(store, name: str, profiles: Sequence[str]) -> CaGroup:  # type: ignore[no-untyped-def]
    """JUNOS ``trusted-ca-group NAME ca-profiles [a b ...]``: refers to existing profiles (or replaces the list)."""
    _check_name(name)
    names = list(dict.fromkeys(p for p in profiles if p))
    if not names:
        raise ValueError("a trusted-ca-group needs at least one ca-profile")
    for p in names:
        store.profile(p)  # ProfileError if missing
    existing = {g.name: g for g in groups(store)}
    if name in existing and existing[name].loaded:
        raise StoreError(f"{name!r} is a loaded ca-profile-group; pick another name")
    existing[name] = CaGroup(name, tuple(names), False)
    _write(store, list(existing.values()))
    return existing[name]


def delete_group(store, name: str) -> CaGroup:  # type: ignore[no-untyped-def]
    """Remove a group; a loaded group takes its profiles (and their CA certificates and CRLs) with it."""
    g = group(store, name)
    if g.loaded:
        for p in g.profiles:
            try:
                store.remove_profile(p)
            except PkiError:
                pass
    _write(store, [x for x in groups(store) if x.name != name])
    return g


def group_anchors(store, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The profile names of a group that exist and hold a CA certificate (what IKE may trust)."""
    out = []
    for p in group(store, name).profiles:
        try:
            if store.ca_certificates(p):
                out.append(p)
        except PkiError:
            continue
    return out


# == where a profile's CRL is =================================================================================
def crl_locations(store, profile_name: str) -> list[str]:  # type: ignore[no-untyped-def]
    """CRL URLs for ``crl download`` without ``--url``: the profile's crl-url, else the CRL distribution points
    of certificates the profile's CA issued (the local certificates it signed name the CRL that CA publishes),
    then those of the CA certificates themselves (JUNOS reads the CA certificate's CDP; a root that carries one
    names its own CRL)."""
    profile = store.profile(profile_name)
    if profile.revocation.crl_url:
        return [profile.revocation.crl_url]
    cas = store.ca_certificates(profile_name)
    urls: list[str] = []
    subjects = {c.subject for c in cas}
    for cid in store.local_ids():
        try:
            cert = store.local_certificate(cid)
        except PkiError:
            continue
        if cert is not None and cert.issuer in subjects:
            urls += crl_urls(cert)
    for c in cas:
        urls += crl_urls(c)
    return list(dict.fromkeys(urls))


def download_crl(store, profile_name: str, fetch: Callable[[str], bytes], url: str | None = None  # type: ignore[no-untyped-def]
                 ) -> tuple[x509.CertificateRevocationList, str]:
    """Fetch and load the profile's CRL from ``url`` or :func:`crl_locations`, trying each in turn; the first
    that loads (signed by the profile's CA) wins. Returns (CRL, URL)."""
    urls = [url] if url else crl_locations(store, profile_name)
    if not urls:
        raise ProfileError(f"ca-profile {profile_name} has no crl url and no certificate of its CA names a CRL "
                           "distribution point; pass --url")
    problems = []
    for u in urls:
        try:
            return store.load_crl(profile_name, fetch(u)), u
        except PkiError as exc:
            problems.append(f"{u}: {exc}")
    raise PkiError("no CRL could be loaded: " + "; ".join(problems))
