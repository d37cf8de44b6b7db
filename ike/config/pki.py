"""Certificates, keys and trust anchors named by the configuration, loaded and matched with the identities."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from ..core_config import (
    Credential,
    Identity,
)
from ..errors import ConfigError
from .schema import CaProfileConfig, CertificateConfig
from .values import _bool, _choice, _exists, _path, _read, _Section, _str, parse_duration


def _load_certs(paths: Iterable[str], base: Path, key: str, *, indexed: bool = True) -> list[Any]:
    from pki.certs import load_certificates
    from pki.errors import PkiError
    certs: list[Any] = []
    for i, p in enumerate(paths):
        k = f"{key}[{i}]" if indexed else key
        path = _path(base, p, k)
        try:
            certs.extend(load_certificates(_read(path, "certificate", k), source=str(path)))
        except PkiError as exc:
            raise ConfigError(f"{k}: {exc}") from None
    return certs


def _ca_profile(name: str, sec: _Section, base: Path) -> CaProfileConfig:
    from pki.errors import PkiError
    from pki.profile import RevocationPolicy
    files = sec.strings("ca_certs", required=not sec.has("ca_cert"))
    if sec.has("ca_cert"):
        files = (sec.get("ca_cert", _str),) + files
    certs = _load_certs(files, base, sec.key("ca_certs"))
    if not certs:
        raise sec.error("ca_certs", "no certificate found in the files")
    for c in certs:
        try:
            bc = c.extensions.get_extension_for_class(x509.BasicConstraints)
            if not bc.value.ca:
                raise sec.error("ca_certs", f"{c.subject.rfc4514_string()} is not a CA certificate")
        except ConfigError:
            raise
        except Exception:
            pass  # v1 roots without basicConstraints: leave the decision to the validator
    mode = sec.get("revocation", _choice("crl", "ocsp", "disable"), "crl")
    try:
        policy = RevocationPolicy(
            mode=mode,
            crl_url=sec.get("crl_url", _str),
            ocsp_url=sec.get("ocsp_url", _str),
            fail_open=sec.get("fail_open", _bool, False),
            ocsp_fallback_crl=sec.get("ocsp_fallback_crl", _bool, False),
            refresh_interval=sec.get("refresh_interval", lambda v: timedelta(seconds=parse_duration(v))),
        )
    except PkiError as exc:
        raise ConfigError(f"{sec.path}: {exc}") from None
    sec.finish()
    return CaProfileConfig(name, tuple(certs), policy)


def _passphrase(sec: _Section, base: Path) -> bytes | None:
    """``passphrase_file``: read with pki's one rule (first line, only its line ending removed; empty refused),
    so the file that unlocks a key for ``python -m pki`` unlocks it here too."""
    from pki.errors import PkiError
    from pki.keys import read_passphrase_file
    name = sec.get("passphrase_file", _str)
    if not name:
        return None
    path = _path(base, name, sec.key("passphrase_file"))
    try:
        return read_passphrase_file(path, protected=True)  # a secret: OpenSSH's rule, as for the key
    except PkiError as exc:
        raise sec.error("passphrase_file", str(exc)) from None
    except OSError as exc:
        raise sec.error("passphrase_file", f"{path}: {exc.strerror or exc}") from None


def _certificate(name: str, sec: _Section, base: Path) -> CertificateConfig:
    from pki.errors import PkiError
    from pki.keys import load_private_key, read_private_file
    cert_file = sec.get("cert", _str, required=True)
    certs = _load_certs([cert_file], base, sec.key("cert"), indexed=False)
    if len(certs) < 1:
        raise sec.error("cert", "no certificate in the file")
    leaf, extra = certs[0], certs[1:]
    chain = tuple(extra) + tuple(_load_certs(sec.strings("chain"), base, sec.key("chain")))
    key_file = _path(base, sec.get("key", _str, required=True), sec.key("key"))
    passphrase = _passphrase(sec, base)
    _exists(key_file, "key file", sec.key("key"))
    try:  # refused unless only its owner, the user running this, can read it (OpenSSH's rule)
        key = load_private_key(read_private_file(key_file), passphrase, source=str(key_file))
    except PkiError as exc:
        msg = str(exc)
        raise sec.error("key", msg if msg.startswith(f"{key_file}: ") else f"{key_file}: {msg}") from None
    from cryptography.hazmat.primitives import serialization
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise sec.error("key", f"{str(key_file)!r} does not belong to the certificate in {cert_file!r}")
    sec.finish()
    return CertificateConfig(name, Credential(private_key=key, certificate=leaf, intermediates=chain),
                             base / cert_file)


def _pki_id(ident: Identity) -> tuple[str, str] | None:
    """ike Identity -> the (type, value) pair pki.validate matches; None for types it cannot match (keyid)."""
    return None if ident.kind == "keyid" else (ident.kind, ident.value)


def identity_matches(cert: Any, ident: Identity) -> str | None:
    """Which certificate name proves ``ident`` (``DNS:gw1``), or None."""
    from pki.errors import CertificateRejected
    from pki.validate import Validator
    pair = _pki_id(ident)
    if pair is None:
        return None
    try:
        return Validator._check_identity(cert, pair)
    except CertificateRejected:
        return None


def default_identity(cert: Any) -> Identity:
    """The identity a certificate proves best: its first DNS, e-mail or IP subjectAltName, else its subject DN."""
    from pki.certs import sans_of
    sans = sans_of(cert)
    if sans.dns:
        return Identity("fqdn", sans.dns[0])
    if sans.email:
        return Identity("email", sans.email[0])
    if sans.ip:
        a = sans.ip[0]
        return Identity("ipv4" if a.version == 4 else "ipv6", str(a))
    return Identity("dn", cert.subject.rfc4514_string())


def make_validator(profiles: Sequence[CaProfileConfig], *, crl_source: Any = None, ocsp: Any = None,
                   intermediates: Sequence[Any] = (), revocation: str | None = None,
                   ) -> Callable[[Any, Sequence[Any], datetime, Identity], object]:
    """The core's PeerValidator over pki.validate: chain, time, revocation, then the IKE identity.

    Revocation data come from ``crl_source``/``ocsp`` (None: the validator's offline cache, so a ``crl``
    profile fails closed unless its CRL was loaded; the loader passes a fetching cache unless
    ``pki.fetch_revocation = false``). ``intermediates`` are CA certificates held but not trusted, and
    ``revocation`` the peer's strict/ifuri/relaxed policy (None: each profile's own).
    """
    from pki.validate import TrustAnchor, ValidationPolicy, Validator
    anchors = [TrustAnchor(c, p.revocation, p.name) for p in profiles for c in p.ca_certs]
    kwargs: dict[str, Any] = {"intermediates": tuple(intermediates)}
    if revocation is not None:
        kwargs["policy"] = ValidationPolicy(revocation=revocation)
    if crl_source is not None:
        kwargs["crl_source"] = crl_source
    if ocsp is None:
        ocsp = _ocsp_for(profiles)
    if ocsp is not None:
        kwargs["ocsp"] = ocsp
    validator = Validator(anchors, **kwargs)

    def validate(leaf: Any, intermediates: Sequence[Any], at: datetime, identity: Identity) -> object:
        return validator.verify(leaf, list(intermediates), at, identity=_pki_id(identity))

    validate.validator = validator  # type: ignore[attr-defined]
    return validate


def _ocsp_for(profiles: Sequence[CaProfileConfig]) -> Any:
    """An OCSP checker when a profile asks for OCSP (its URL if all such profiles agree on one)."""
    from pki.profile import RevocationMode
    modes = [p.revocation for p in profiles if p.revocation.mode is RevocationMode.OCSP]
    if not modes:
        return None
    from pki.ocsp import OcspChecker
    urls = {r.ocsp_url for r in modes}
    return OcspChecker(urls.pop() if len(urls) == 1 else None, use_nonce=all(r.ocsp_nonce for r in modes))


class _Pki:
    """Names of ca-profiles and certificates: ``[ca-profiles.X]``/``[certificates.X]`` tables first, then the
    pki store (``[pki] store``), as a JUNOS router resolves ``ca-profile`` and ``local-certificate`` names."""

    def __init__(self, profiles: dict[str, CaProfileConfig], certs: dict[str, CertificateConfig],
                 store: Any, store_key: str, fetch: bool, passphrase: bytes | None = None,
                 intermediates: Sequence[Any] = (), crls: Sequence[Any] = ()) -> None:
        self.passphrase = passphrase
        self.intermediates = tuple(intermediates)  # [pki] intermediates: held, never trusted
        self.crls = tuple(crls)  # [pki] crls: loaded into the CRL source
        self.profiles = profiles
        self.certs = certs
        self.store = store
        self.store_key = store_key
        self.fetch = fetch
        self._crl_source: Any = None

    def profile(self, name: str) -> CaProfileConfig | None:
        if name in self.profiles:
            return self.profiles[name]
        if self.store is None:
            return None
        from pki.errors import PkiError
        try:
            prof = self.store.profile(name)
            certs = tuple(self.store.ca_certificates(name))
        except PkiError:
            return None
        if not certs:
            raise ConfigError(f"{self.store_key}: ca-profile {name!r} has no CA certificate in the store "
                              f"(enroll or load it first)")
        self.profiles[name] = CaProfileConfig(name, certs, prof.revocation)
        return self.profiles[name]

    def group(self, name: str) -> list[str]:
        """The profiles of a store's ca-profile-group / trusted-ca-group that hold a CA certificate."""
        if self.store is None:
            return []
        from pki.errors import PkiError
        from pki.trust import group_anchors
        try:
            return group_anchors(self.store, name)
        except PkiError:
            return []

    def all_profiles(self) -> list[str]:
        names = list(self.profiles)
        if self.store is not None:
            from pki.errors import PkiError
            for p in self.store.profiles():
                try:
                    if p.name not in names and self.store.ca_certificates(p.name):
                        names.append(p.name)
                except PkiError:
                    continue
        return names

    def certificate(self, name: str) -> CertificateConfig | None:
        if name in self.certs:
            return self.certs[name]
        if self.store is None:
            return None
        from pki.errors import PkiError
        try:
            if self.store.local_certificate(name) is None:
                return None  # not a certificate-id of the store (or no certificate yet): "unknown certificate"
        except PkiError:
            return None
        try:
            key, cert, chain = self.store.credential(name, self.passphrase)
        except PkiError as exc:  # a wrong / missing passphrase, a damaged or unprotected key: which key and why
            from pki.errors import PassphraseError
            key_path = Path(self.store.path) / "local" / name / "key.pem"  # as the operator sees it
            hint = "" if self.passphrase is not None or not isinstance(exc, PassphraseError) \
                else " (encrypted? set pki.passphrase_file)"
            msg = str(exc)
            try:  # the store names the file it read, a generation directory behind the symlink: name it once
                msg = msg.removeprefix(f"{self.store.key_path(name)}: ")
            except PkiError:
                pass
            raise ConfigError(f"{self.store_key}: certificate-id {name!r}: key {key_path}: {msg}{hint}") from None
        self.certs[name] = CertificateConfig(name, Credential(private_key=key, certificate=cert,
                                                              intermediates=tuple(chain)))
        return self.certs[name]

    def crl_source(self) -> Any:
        if self._crl_source is None:
            from pki.revocation import CrlCache, default_fetch
            fetch = default_fetch if self.fetch else None
            self._crl_source = self.store.crl_cache(fetch) if self.store is not None else CrlCache(fetch=fetch)
            for crl in self.crls:
                self._crl_source.add(crl)
        return self._crl_source


# --------------------------------------------------------------------------------------------------------
# Peers


