"""Authentication keys with swanctl's names and meanings: ``auth``/``remote_auth`` constraints, the per-peer
``revocation`` policy, and the locally held ``intermediates`` and ``crls`` of ``[pki]``.

Why apart from load.py: these are the keys a swanctl.conf importer maps one to one (``local.auth``,
``remote.auth``, ``remote.revocation``, the ``x509ca/`` and ``x509crl/`` directories), so each has one
function here that reads, checks and explains it.

Example::

    [pki]
    intermediates = ["corp-sub.pem"]     # CA certificates held to build paths, never trust anchors
    crls = ["corp-root.crl"]              # CRL files (swanctl x509crl/), used when no fresher one is fetched

    [peers.branch]
    auth = "rsa/pss-sha384"               # we sign RSASSA-PSS with SHA-384 (swanctl local.auth)
    remote_auth = "ecdsa-384"             # the peer's key (and chain) ECDSA >= 384 bits (swanctl remote.auth)
    revocation = "strict"                 # strict, ifuri or relaxed (swanctl remote.revocation)
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509

from ..auth_constraints import AuthConstraints, local_problem, parse_auth
from ..errors import ConfigError
from .values import _choice, _path, _read, _Section


def auth_settings(sec: _Section) -> tuple[AuthConstraints, AuthConstraints]:
    """``auth`` (ours) and ``remote_auth`` (the peer's): ``pubkey``, ``psk`` or a swanctl signature constraint.
    ``remote_auth`` defaults to the method of ``auth``, without its constraints."""
    local = sec.get("auth", parse_auth, AuthConstraints("pubkey"))
    remote = sec.get("remote_auth", parse_auth, AuthConstraints(local.method, text=local.method))
    return local, remote


def check_local_auth(sec: _Section, c: AuthConstraints, keys: Iterable[Any]) -> None:
    """Refuse an ``auth`` constraint our own keys can never meet (``ecdsa-sha384`` with an RSA certificate)."""
    problem = local_problem(c, keys)
    if problem is not None:
        raise sec.error("auth", f"{problem} (the certificate's key cannot make such a signature)")


def revocation_setting(sec: _Section) -> str | None:
    """swanctl ``remote.revocation``: None leaves each ca-profile's own policy (``fail_open``) in charge."""
    return sec.get("revocation", _choice("strict", "ifuri", "relaxed"))


def local_authorities(sec: _Section, base: Path) -> tuple[tuple[x509.Certificate, ...], tuple[Any, ...]]:
    """``[pki] intermediates`` (CA certificates, never trust anchors) and ``[pki] crls`` (CRL files)."""
    from pki.certs import load_certificates, load_crl
    from pki.errors import PkiError

    inters: list[x509.Certificate] = []
    for i, name in enumerate(sec.strings("intermediates")):
        k = f"{sec.key('intermediates')}[{i}]"
        path = _path(base, name, k)
        try:
            certs = load_certificates(_read(path, "certificate", k), source=str(path))
        except PkiError as exc:
            raise ConfigError(f"{k}: {exc}") from None
        if not certs:
            raise ConfigError(f"{k}: no certificate in {str(path)!r}")
        for c in certs:
            try:
                ca = c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                ca = False
            if not ca:
                raise ConfigError(f"{k}: {c.subject.rfc4514_string()} is not a CA certificate")
            inters.append(c)
    crls: list[Any] = []
    for i, name in enumerate(sec.strings("crls")):
        k = f"{sec.key('crls')}[{i}]"
        path = _path(base, name, k)
        try:
            crls.append(load_crl(_read(path, "CRL", k), source=str(path)))
        except PkiError as exc:
            raise ConfigError(f"{k}: {exc}") from None
    return tuple(inters), tuple(crls)
