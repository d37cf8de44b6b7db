"""The daemon's TOML configuration, validated whole at start.

Why a loader of its own: the protocol core takes frozen dataclasses (``ike.core_config``) and never reads
files; the daemon must turn one operator-written file into those objects and refuse a bad one *before*
binding a socket, with the key path and the reason (``peers.branch.children.lan.esp_proposals[1]: unknown
algorithm 'aes128gcm17'``), as ``swanctl --load-all`` does. Proposals are parsed with the core's own parser,
identities typed, certificates and keys loaded and matched with each other and with ``local_id``, and trust
anchors turned into a :class:`pki.validate.Validator` per ca-profile.

Example (the keys are swanctl's where they exist)::

    [daemon]
    addresses = ["192.0.2.1"]          # where to bind; default all IPv4 addresses
    port = 500                          # IKE; ESP-in-UDP and floated IKE use nat_port
    nat_port = 4500
    control_socket = "/run/espresso/ike.sock"
    key_log = "/var/lib/espresso/wireshark"   # off unless set: Wireshark ikev2_decryption_table + esp_sa

    [pki]
    store = "/var/lib/espresso/pki"     # optional: ca-profiles and local certificates of `python -m pki`
    fetch_revocation = true             # download CRLs (CRL distribution points / crl_url); false: loaded ones only
    passphrase_file = "/etc/espresso/pki.pass"  # for encrypted store keys: first line, line ending removed

    [ca-profiles.corp]                  # or a ca-profile of the store, by name
    ca_certs = ["corp-root.pem"]        # trust anchors; paths relative to this file
    revocation = "disable"              # "crl" (default), "ocsp" or "disable"; crl_url / ocsp_url / fail_open

    [certificates.gw1]                  # or a local certificate (certificate-id) of the store, by name
    cert = "gw1.pem"
    key = "gw1.key"
    chain = ["corp-sub.pem"]            # intermediates we send
    passphrase_file = "gw1.pass"        # if gw1.key is encrypted (same rule as python -m pki)

    [gateway]                           # optional (root): TUN device + ESP threads of esp.gateway
    tun_name = "esp0"
    tun_addresses = ["10.1.0.1/16"]     # routes default to every child's remote_ts
    offload = true                      # UDP GSO/GRO + TUN TSO/USO where probed OK; false: one packet a call
    # mtu = 1400                        # TUN MTU; unset: follow outer_mtu less the SAs' ESP overhead
    # outer_mtu = 1500                  # unset: the MTU of the interface holding daemon.addresses[0]
    # batch_size = 64                   # packets per data-thread cycle (1-1024)

    [metrics]                           # optional: Prometheus text at http://127.0.0.1:9745/metrics
    listen = "127.0.0.1:9745"           # HOST:PORT or [IPv6]:PORT (pip install 'espresso-ipsec[metrics]')

    [peers.branch]
    local_addr = "192.0.2.1"
    remote_addr = "198.51.100.7"        # or "%any" (responder only)
    local_id = "gw1.example.net"        # default: the certificate's first subjectAltName
    remote_id = "branch.example.net"    # default: any identity the peer's certificate proves
    certificate = "gw1"
    ca_profiles = ["corp"]              # who may sign the peer's certificate (default: all profiles)
    # trusted_ca_group = "partners"     # and/or a pki store group (python -m pki trusted-ca-group/ca-profile-group)
    ike_proposals = ["aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"]
    rekey_time = "4h"
    start_action = "start"              # initiate at start, and again whenever the IKE_SA is lost

    [peers.branch.children.lan]
    local_ts = ["10.1.0.0/16"]
    remote_ts = ["10.2.0.0/16"]
    esp_proposals = ["aes128gcm16", "aes256-sha256"]
    rekey_time = "1h"
    life_time = "66m"
    rekey_bytes = "4G"
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomllib
from cryptography import x509

from .constants import ProtocolId
from .core_config import (
    ChildConfig,
    CoreConfig,
    Credential,
    Identity,
    PeerConfig,
    TrafficSelector,
)
from .errors import ConfigError
from .keylog import key_log_problem
from .proposal import parse_proposal

__all__ = [
    "DEFAULT_CONTROL_SOCKET",
    "MAX_NESTING",
    "CaProfileConfig",
    "CertificateConfig",
    "ConfigError",
    "DaemonConfig",
    "GatewaySettings",
    "load_config",
    "make_validator",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_toml",
]

DEFAULT_CONTROL_SOCKET = "/run/espresso/ike.sock"
#: A configuration file larger than this is refused (it is operator input, but still bounded).
MAX_CONFIG_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CaProfileConfig:
    """One ``[ca-profiles.NAME]``: trust anchors for validating peers and their revocation policy."""

    name: str
    ca_certs: tuple[Any, ...]
    revocation: Any  # pki.profile.RevocationPolicy


@dataclass(frozen=True)
class CertificateConfig:
    """One ``[certificates.NAME]``: our key, certificate and the intermediates we send."""

    name: str
    credential: Credential
    path: Path | None = None


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: run esp's TUN gateway in the daemon (root), so CHILD_SAs carry real traffic.

    ``routes`` are the remote inner prefixes routed into the TUN device (default: every child's remote_ts);
    ``tun_addresses`` the addresses the device gets (e.g. this site's inner gateway address). The other
    knobs are esp.gateway.GatewayConfig's, so the daemon runs the same probed, offloaded path as
    ``python -m esp gateway``: ``mtu`` None follows the path (``outer_mtu`` less the installed SAs' ESP
    overhead, with ICMP "too big" for what does not fit); ``offload`` false is the static gateway's
    ``--no-offload``."""

    tun_name: str = "esp%d"
    tun_addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    mtu: int | None = None
    outer_mtu: int | None = None
    offload: bool = True
    batch_size: int = 64
    raw_esp: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs: the core's configuration plus what only the I/O side uses."""

    core: CoreConfig
    addresses: tuple[str, ...]
    port: int
    nat_port: int
    control_socket: Path
    key_log: Path | None
    #: peer name -> our address for it (None: whichever address the socket uses)
    local_addrs: Mapping[str, str | None] = field(default_factory=dict)
    ca_profiles: Mapping[str, CaProfileConfig] = field(default_factory=dict)
    certificates: Mapping[str, CertificateConfig] = field(default_factory=dict)
    source: Path | None = None
    gateway: GatewaySettings | None = None
    #: peers with ``start_action = "start"``: initiated when the daemon starts and again (with backoff)
    #: whenever their IKE_SA goes away other than by an operator's terminate
    auto_start: tuple[str, ...] = ()
    #: ``[metrics] listen``: where the Prometheus endpoint listens (address, port); None: no endpoint
    metrics_listen: tuple[str, int] | None = None

    def bind_ports(self) -> tuple[int, ...]:
        """Every local UDP port some peer uses (sorted): the daemon opens one socket per address and port."""
        ports = {self.port, self.nat_port}
        for p in self.core.peers:
            ports.update((p.local_port, p.local_nat_port))
        return tuple(sorted(ports))


# --------------------------------------------------------------------------------------------------------
# Scalars

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: object) -> float:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"4h"``, ``"1d"`` (strongSwan's suffixes)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 3600, \"90s\", \"30m\", \"4h\" or \"1d\", got {value!r}")


def parse_size(value: object) -> int:
    """Bytes or packets from ``1000``, ``"500k"``, ``"4G"`` (binary multiples, as strongSwan)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count cannot be negative: {value!r}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZES[m.group(2).lower()]
    raise ValueError(f"expected a count such as 1000, \"500k\" or \"4G\", got {value!r}")


# --------------------------------------------------------------------------------------------------------
# A section reader that knows its key path and refuses unknown keys


class _Section:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'configuration'}: expected a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {reason}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def get(self, name: str, conv: Callable[[Any], Any], default: Any = None, *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self._missing(name)
            return default
        try:
            return conv(self.data[name])
        except ConfigError as exc:
            raise self.error(name, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc)) from None

    def strings(self, name: str, default: Sequence[str] = (), *, required: bool = False) -> tuple[str, ...]:
        """A list of strings; a single string may hold comma-separated items (as swanctl allows)."""
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self._missing(name)
            return tuple(default)
        v = self.data[name]
        if isinstance(v, str):
            items = [s.strip() for s in v.split(",") if s.strip()]
        elif isinstance(v, list) and all(isinstance(s, str) for s in v):
            items = [s.strip() for s in v]
        else:
            raise self.error(name, f"expected a string or a list of strings, got {v!r}")
        if not items and required:
            raise self.error(name, "must not be empty")
        return tuple(items)

    def sub(self, name: str) -> dict[str, _Section]:
        """Named sub-tables ``name.X`` as sections (empty if absent)."""
        self.used.add(name)
        tables = self.data.get(name, {})
        if not isinstance(tables, Mapping):
            raise self.error(name, "expected a table of named tables")
        out: dict[str, _Section] = {}
        for k, v in tables.items():
            if not isinstance(v, Mapping):
                raise ConfigError(f"{self.key(name)}.{k}: expected a table")
            out[k] = _Section(v, f"{self.key(name)}.{k}")
        return out

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._unknown(unknown)

    def _missing(self, name: str) -> ConfigError:
        # a typo of this very key ("local_tss") is the likelier story than a missing key: say that
        typo = difflib.get_close_matches(name, [k for k in self.data if k not in self.used], 1, 0.75)
        return self._unknown(typo) if typo else self.error(name, "is required")

    def _unknown(self, keys: Sequence[str]) -> ConfigError:
        """``peers.b.children.net: unknown key 'local_tss' (did you mean 'local_ts'?)``"""
        first = keys[0]
        hint = difflib.get_close_matches(first, sorted(self.used), 1, 0.75)
        also = f" (also: {', '.join(repr(k) for k in keys[1:])})" if keys[1:] else ""
        return ConfigError(f"{self.path or 'top level'}: unknown key {first!r}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else "") + also)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"expected a UDP port 1-65535, got {v!r}")
    return v


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected an integer {lo}-{hi}, got {v!r}")
        return v
    return conv


def _address(v: Any) -> str:
    return str(ipaddress.ip_address(_str(v).strip()))


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
        return str(v)
    return conv


# --------------------------------------------------------------------------------------------------------
# Identities, selectors, proposals


def _identity(text: Any) -> Identity:
    ident = Identity.parse(_str(text))
    if not ident.value:
        raise ValueError("empty identity")
    if ident.kind in ("ipv4", "ipv6"):
        addr = ipaddress.ip_address(ident.value)
        if (addr.version == 4) != (ident.kind == "ipv4"):
            raise ValueError(f"{ident.value!r} is not an {ident.kind} address")
    elif ident.kind == "dn":
        from pki.certs import parse_subject
        parse_subject(ident.value)
    elif ident.kind == "email":
        if ident.value.count("@") != 1:
            raise ValueError(f"{ident.value!r} is not an e-mail address")
    elif ident.kind == "keyid":
        bytes.fromhex(ident.value)
    elif ident.kind == "fqdn":
        if any(c.isspace() for c in ident.value) or len(ident.value) > 253:
            raise ValueError(f"{ident.value!r} is not a DNS name")
    return ident


def _selector(text: str) -> TrafficSelector:
    """``10.1.0.0/16``, ``10.1.0.1``, ``10.1.0.0/16[udp/53]``, ``fd00::/64[6/443]`` (swanctl syntax)."""
    m = re.match(r"^([^\[\]]+?)(?:\[(\w*)(?:/(\d+(?:-\d+)?))?\])?$", text.strip())
    if not m:
        raise ValueError(f"bad traffic selector {text!r}")
    addr, proto_s, port_s = m.group(1).strip(), m.group(2) or "", m.group(3)
    protos = {"": 0, "any": 0, "icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}
    if proto_s.isdigit():
        proto = int(proto_s)
    elif proto_s.lower() in protos:
        proto = protos[proto_s.lower()]
    else:
        raise ValueError(f"unknown protocol {proto_s!r} in traffic selector {text!r}")
    start_port, end_port = 0, 65535
    if port_s:
        a, _, b = port_s.partition("-")
        start_port, end_port = int(a), int(b or a)
    if ".." in addr:
        lo, _, hi = addr.partition("..")
        return TrafficSelector(str(ipaddress.ip_address(lo.strip())), str(ipaddress.ip_address(hi.strip())),
                               proto, start_port, end_port)
    try:
        net = ipaddress.ip_network(addr, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad traffic selector {text!r}: {exc}") from None
    return TrafficSelector(str(net.network_address), str(net.broadcast_address), proto, start_port, end_port)


def _selectors(sec: _Section, name: str) -> tuple[TrafficSelector, ...]:
    texts = sec.strings(name, required=True)
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(_selector(t))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{sec.key(name)}[{i}]: {exc}") from None
    return tuple(out)


def _proposals(sec: _Section, name: str, protocol: int, default: Sequence[str]) -> tuple[str, ...]:
    texts = sec.strings(name, default, required=False)
    if not texts:
        raise sec.error(name, "must not be empty")
    for i, t in enumerate(texts):
        try:
            parse_proposal(t, protocol)
        except ConfigError as exc:
            raise ConfigError(f"{sec.key(name)}[{i}]: {exc}") from None
    return texts


# --------------------------------------------------------------------------------------------------------
# PKI


def _path(base: Path, name: str, key: str) -> Path:
    """A file the configuration names, relative to the configuration's directory, ``~`` and ``~user`` expanded."""
    try:
        return (base / name).expanduser()
    except RuntimeError as exc:  # ~user of a user this host does not know
        raise ConfigError(f"{key}: {name!r}: {exc}") from None


def _exists(path: Path, what: str, key: str, *, directory: bool = False) -> None:
    """ConfigError unless ``path`` is a file (a directory): also for names the OS refuses (too long, a loop)."""
    try:
        ok = path.is_dir() if directory else path.is_file()
    except OSError as exc:
        raise ConfigError(f"{key}: {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not ok:
        raise ConfigError(f"{key}: {what} {str(path)!r} " + ("is not a directory" if directory else "does not exist"))


def _read(path: Path, what: str, key: str) -> bytes:
    from pki._files import read_bounded
    _exists(path, f"{what} file", key)
    try:
        return read_bounded(path)
    except Exception as exc:  # PkiError (too large) or OSError
        raise ConfigError(f"{key}: cannot read {what} file {str(path)!r}: {exc}") from None


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


def make_validator(profiles: Sequence[CaProfileConfig], *, crl_source: Any = None, ocsp: Any = None
                   ) -> Callable[[Any, Sequence[Any], datetime, Identity], object]:
    """The core's PeerValidator over pki.validate: chain, time, revocation, then the IKE identity.

    Revocation data come from ``crl_source``/``ocsp`` (None: the validator's offline cache, so a ``crl``
    profile fails closed unless its CRL was loaded; the loader passes a fetching cache unless
    ``pki.fetch_revocation = false``).
    """
    from pki.validate import TrustAnchor, Validator
    anchors = [TrustAnchor(c, p.revocation, p.name) for p in profiles for c in p.ca_certs]
    kwargs: dict[str, Any] = {}
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
                 store: Any, store_key: str, fetch: bool, passphrase: bytes | None = None) -> None:
        self.passphrase = passphrase
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
        return self._crl_source


# --------------------------------------------------------------------------------------------------------
# Peers


def _child(name: str, sec: _Section) -> ChildConfig:
    defaults = ChildConfig(name, (), ())
    rekey_time = sec.get("rekey_time", parse_duration, defaults.rekey_time)
    life_time = sec.get("life_time", parse_duration, rekey_time * 1.1 if rekey_time else defaults.life_time)
    rekey_bytes = sec.get("rekey_bytes", parse_size, 0)
    life_bytes = sec.get("life_bytes", parse_size, int(rekey_bytes * 1.1))
    rekey_packets = sec.get("rekey_packets", parse_size, 0)
    life_packets = sec.get("life_packets", parse_size, int(rekey_packets * 1.1))
    for soft, hard, what in ((rekey_time, life_time, "time"), (rekey_bytes, life_bytes, "bytes"),
                             (rekey_packets, life_packets, "packets")):
        if soft and hard and soft >= hard:
            raise sec.error(f"life_{what}", f"must be larger than rekey_{what} ({hard} <= {soft})")
    c = ChildConfig(
        name=name,
        local_ts=_selectors(sec, "local_ts"),
        remote_ts=_selectors(sec, "remote_ts"),
        esp_proposals=_proposals(sec, "esp_proposals", ProtocolId.ESP, defaults.esp_proposals),
        mode=sec.get("mode", _choice("tunnel", "transport"), "tunnel"),
        rekey_time=rekey_time, life_time=life_time, rekey_bytes=rekey_bytes, life_bytes=life_bytes,
        rekey_packets=rekey_packets, life_packets=life_packets,
        start=sec.get("start", _bool, True),
    )
    for a in c.local_ts + c.remote_ts:
        if a.version != c.local_ts[0].version and c.mode == "transport":
            raise sec.error("local_ts", "transport mode selectors must use one address family")
    sec.finish()
    return c


def _psk(v: Any) -> bytes:
    s = _str(v)
    if s.startswith("0x"):
        return bytes.fromhex(s[2:])
    if len(s) < 8:
        raise ValueError("a pre-shared key must have at least 8 characters")
    return s.encode()


def _peer(name: str, sec: _Section, daemon: _Section, pki: _Pki) -> tuple[PeerConfig, str | None]:
    start = sec.get("start_action", _choice("none", "start"), "none")
    if start == "start" and sec.raw("remote_addr") in (None, "%any", "%any4", "%any6"):
        raise sec.error("start_action", "\"start\" needs a remote_addr to initiate to")
    port = daemon.get("port", _port, 500)
    nat_port = daemon.get("nat_port", _port, 4500)
    local_addr = sec.get("local_addr", _address)
    remote = sec.get("remote_addr", _str)
    if remote is not None and remote not in ("%any", "%any4", "%any6"):
        try:
            remote = _address(remote)
        except ValueError:
            raise sec.error("remote_addr", f"expected an IP address or %any, got {remote!r}") from None
        if local_addr and ipaddress.ip_address(remote).version != ipaddress.ip_address(local_addr).version:
            raise sec.error("remote_addr", "local_addr and remote_addr must be of one address family")
    else:
        remote = None
    auth = sec.get("auth", _choice("pubkey", "psk"), "pubkey")
    remote_auth = sec.get("remote_auth", _choice("pubkey", "psk"), auth)
    psk = sec.get("psk", _psk)
    if "psk" in (auth, remote_auth) and psk is None:
        raise sec.error("psk", "is required with psk authentication")

    credential = None
    extra: tuple[Credential, ...] = ()
    cert_names = sec.strings("certificates") or sec.strings("certificate")
    if auth == "pubkey":
        if not cert_names:
            if len(pki.certs) == 1:
                cert_names = tuple(pki.certs)
            else:
                raise sec.error("certificate", "is required with pubkey authentication"
                                + (" (several [certificates] exist)" if pki.certs else " (no [certificates] defined)"))
        found = []
        for n in cert_names:
            c = pki.certificate(n)
            if c is None:
                where = " nor a local certificate in the pki store" if pki.store is not None else ""
                raise sec.error("certificate", f"no [certificates.{n}] defined{where}")
            found.append(c)
        credential = found[0].credential
        extra = tuple(c.credential for c in found[1:])

    if sec.has("local_id"):
        local_id = sec.get("local_id", _identity)
        if credential is not None and local_id.kind != "keyid" and identity_matches(credential.certificate, local_id) is None:
            raise sec.error("local_id", f"{local_id.kind}:{local_id.value} is neither the subject nor a "
                            f"subjectAltName of certificate {cert_names[0]!r}; the peer would reject it")
    elif credential is not None:
        local_id = default_identity(credential.certificate)
    else:
        local_id = Identity("ipv4", local_addr) if local_addr and ":" not in local_addr else (
            Identity("ipv6", local_addr) if local_addr else None)
        if local_id is None:
            raise sec.error("local_id", "is required with psk authentication and no local_addr")
    remote_id = sec.get("remote_id", _identity)

    validator = None
    ca_certs: tuple[Any, ...] = ()
    if remote_auth == "pubkey":
        names = sec.strings("ca_profiles") or sec.strings("ca_profile") or ()
        for g in sec.strings("trusted_ca_group"):  # JUNOS trusted-ca-group: the profiles a store group names
            members = pki.group(g)
            if not members:
                raise sec.error("trusted_ca_group", f"no group {g!r} with a CA certificate in the pki store")
            names += tuple(n for n in members if n not in names)
        names = names or tuple(pki.all_profiles())
        if not names:
            raise sec.error("ca_profiles", "no [ca-profiles] defined to validate the peer's certificate")
        chosen = []
        for n in names:
            prof = pki.profile(n)
            if prof is None:
                where = " nor in the pki store" if pki.store is not None else ""
                raise sec.error("ca_profiles", f"no [ca-profiles.{n}] defined{where}")
            chosen.append(prof)
        validator = make_validator(chosen, crl_source=pki.crl_source())
        ca_certs = tuple(c for p in chosen for c in p.ca_certs)

    children = {}
    for cname, csec in sec.sub("children").items():
        children[cname] = _child(cname, csec)
    defaults = PeerConfig.__dataclass_fields__
    kwargs = dict(
        name=name,
        local_id=local_id,
        remote_id=remote_id,
        remote_addr=remote,
        remote_port=sec.get("remote_port", _port, 500),
        local_port=sec.get("local_port", _port, port),
        local_nat_port=sec.get("local_nat_port", _port, nat_port),
        ike_proposals=_proposals(sec, "ike_proposals", ProtocolId.IKE, defaults["ike_proposals"].default),
        auth=auth,
        remote_auth=remote_auth,
        credential=credential,
        extra_credentials=extra,
        ca_certs=ca_certs,
        psk=psk,
        validator=validator,
        children=tuple(children.values()),
        rekey_time=sec.get("rekey_time", parse_duration, 14400.0),
        dpd_delay=sec.get("dpd_delay", parse_duration, 0.0),
        keepalive_interval=sec.get("keepalive", parse_duration, 20.0),
        send_certreq=sec.get("send_certreq", _bool, True),
        send_cert=sec.get("send_cert", _choice("always", "ifasked", "never"), "always"),
        signature_auth=sec.get("signature_auth", _bool, True),
        rsa_pss=sec.get("rsa_pss", _bool, False),
        fragmentation=sec.get("fragmentation", _bool, True),
        fragment_size=sec.get("fragment_size", _int_range(576, 65535), 1280),
        encap=sec.get("encap", _bool, False),
    )
    if "local_addr" in PeerConfig.__dataclass_fields__:  # the core learns our address when it has the field
        kwargs["local_addr"] = local_addr
    try:
        peer = PeerConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{sec.path}: {exc}") from None
    sec.finish()
    return peer, local_addr


# --------------------------------------------------------------------------------------------------------
# Entry points


#: Arrays and tables inside each other: a configuration needs six levels (peers.NAME.children.NAME.local_ts[]);
#: Python's tomllib recurses once per level and ends in RecursionError some hundreds of levels down.
MAX_NESTING = 32


def parse_toml(text: str, source: str | Path | None = None) -> dict[str, Any]:
    """The one TOML reader of ike: syntax errors, and nesting deeper than :data:`MAX_NESTING` (which the parser
    cannot always follow), become the ConfigError every other bad configuration gets."""
    what = source or "configuration"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{what}: not a configuration: arrays or tables nested more than {MAX_NESTING} deep") \
            from None
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:  # iterative, so that checking the depth cannot overflow the stack either
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > MAX_NESTING:
            raise ConfigError(f"{what}: not a configuration: arrays or tables nested more than {MAX_NESTING} deep")
        stack.extend((c, depth + 1) for c in children)
    return doc


def parse_config(data: Mapping[str, Any] | str, *, base: str | Path = ".", source: Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Validate a parsed (or TOML text) configuration; relative file names resolve against ``base``.

    ``overrides`` replaces ``[daemon]`` keys (the command line's ``--control-socket`` etc.).
    Raises ConfigError("<key path>: <reason>") on the first problem.
    """
    if isinstance(data, str):
        data = parse_toml(data, source)
    base_dir = Path(base)
    root = _Section(data, "")
    daemon_data = dict(root.raw("daemon", {}) or {})
    daemon_data.update(overrides or {})
    daemon = _Section(daemon_data, "daemon")

    pki_sec = _Section(root.raw("pki", {}) or {}, "pki")
    store = None
    store_dir = pki_sec.get("store", _str)
    if store_dir is not None:
        from pki.errors import PkiError
        from pki.store import Store
        path = _path(base_dir, store_dir, pki_sec.key("store"))
        _exists(path, "store", pki_sec.key("store"), directory=True)
        try:
            store = Store(path, create=False)
        except PkiError as exc:
            raise pki_sec.error("store", str(exc)) from None
    fetch = pki_sec.get("fetch_revocation", _bool, True)
    pki_passphrase = _passphrase(pki_sec, base_dir)
    pki_sec.finish()
    profiles = {n: _ca_profile(n, s, base_dir) for n, s in root.sub("ca-profiles").items()}
    certs = {n: _certificate(n, s, base_dir) for n, s in root.sub("certificates").items()}
    pki = _Pki(profiles, certs, store, "pki.store", fetch, pki_passphrase)
    peers_secs = root.sub("peers")
    if not peers_secs:
        raise ConfigError("peers: at least one [peers.NAME] table is required")
    peers: list[PeerConfig] = []
    local_addrs: dict[str, str | None] = {}
    auto_start: list[str] = []
    from pki.errors import PkiError
    for n, s in peers_secs.items():
        try:
            peer, laddr = _peer(n, s, daemon, pki)
        except PkiError as exc:  # the router store's own files, read while the peer's names resolve
            raise ConfigError(f"peers.{n}: {pki.store_key}: {exc}") from None
        peers.append(peer)
        local_addrs[n] = laddr
        if s.data.get("start_action") == "start":
            auto_start.append(n)

    addresses = daemon.strings("addresses")
    for i, a in enumerate(addresses):
        try:
            _address(a)
        except ValueError as exc:
            raise ConfigError(f"daemon.addresses[{i}]: {exc}") from None
    if not addresses:
        wanted = sorted({a for a in local_addrs.values() if a})
        if wanted and all(local_addrs.values()):
            addresses = tuple(wanted)
        else:  # wildcards, for each address family some peer uses
            v6 = any(p.remote_addr and ":" in p.remote_addr for p in peers) or any(":" in a for a in wanted)
            v4 = any(p.remote_addr is None or ":" not in p.remote_addr for p in peers)
            addresses = (("0.0.0.0",) if v4 else ()) + (("::",) if v6 else ())
    else:
        addresses = tuple(_address(a) for a in addresses)
        wildcard = {"0.0.0.0", "::"}
        for n, a in local_addrs.items():
            if a and a not in addresses and not (wildcard & set(addresses)):
                raise ConfigError(f"peers.{n}.local_addr: {a} is not among daemon.addresses")
    for p in peers:
        if p.remote_addr and not any((":" in a) == (":" in p.remote_addr) for a in addresses):
            raise ConfigError(f"peers.{p.name}.remote_addr: no IPv{6 if ':' in p.remote_addr else 4} address among "
                              f"daemon.addresses {list(addresses)} to reach it from")
    port = daemon.get("port", _port, 500)
    nat_port = daemon.get("nat_port", _port, 4500)
    if port == nat_port:
        raise daemon.error("nat_port", "must differ from daemon.port")
    control = daemon.get("control_socket", _str, DEFAULT_CONTROL_SOCKET)
    key_log = daemon.get("key_log", _str)
    key_log_dir = None if not key_log else (
        (base_dir / key_log) if not Path(key_log).is_absolute() else Path(key_log))
    if key_log_dir is not None and (problem := key_log_problem(key_log_dir)) is not None:
        raise daemon.error("key_log", problem)
    gateway = _gateway(root, addresses, peers) if root.has("gateway") else None
    metrics_listen = _metrics(root) if root.has("metrics") else None
    core_defaults = CoreConfig.__dataclass_fields__
    core = CoreConfig(
        peers=tuple(peers),
        cookie_threshold=daemon.get("cookie_threshold", _int_range(0, 1_000_000), core_defaults["cookie_threshold"].default),
        half_open_limit=daemon.get("half_open_limit", _int_range(1, 10_000_000), core_defaults["half_open_limit"].default),
        retransmit_timeout=daemon.get("retransmit_timeout", parse_duration, core_defaults["retransmit_timeout"].default),
        retransmit_tries=daemon.get("retransmit_tries", _int_range(0, 100), core_defaults["retransmit_tries"].default),
        key_log=bool(key_log),
    )
    daemon.finish()
    root.used.update(("daemon", "pki", "gateway", "metrics"))
    root.finish()
    return DaemonConfig(
        core=core, addresses=addresses, port=port, nat_port=nat_port,
        control_socket=(base_dir / control) if not Path(control).is_absolute() else Path(control),
        key_log=key_log_dir,
        local_addrs=local_addrs, ca_profiles=pki.profiles, certificates=pki.certs, source=source, gateway=gateway,
        auto_start=tuple(auto_start), metrics_listen=metrics_listen,
    )


def _gateway(root: _Section, addresses: tuple[str, ...], peers: Sequence[PeerConfig]) -> GatewaySettings:
    sec = _Section(root.raw("gateway", {}) or {}, "gateway")
    if len(addresses) != 1 or addresses[0] in ("0.0.0.0", "::"):
        raise sec.error("tun_name", "the gateway needs exactly one local address: set daemon.addresses = [\"...\"]")

    def cidrs(name: str, interface: bool) -> tuple[str, ...]:
        out = []
        for i, t in enumerate(sec.strings(name)):
            try:
                out.append(str(ipaddress.ip_interface(t) if interface else ipaddress.ip_network(t)))
            except ValueError as exc:
                raise ConfigError(f"{sec.key(name)}[{i}]: {exc}") from None
        return tuple(out)

    routes = cidrs("routes", False)
    if not sec.has("routes"):
        nets: list[str] = []
        for p in peers:
            for c in p.children:
                for ts in c.remote_ts:
                    for n in ipaddress.summarize_address_range(ipaddress.ip_address(ts.start),
                                                               ipaddress.ip_address(ts.end)):
                        if str(n) not in nets:
                            nets.append(str(n))
        routes = tuple(nets)
    name = sec.get("tun_name", _str, "esp%d")
    if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise sec.error("tun_name", f"{name!r} is not a valid interface name (1-15 characters)")
    mtu = sec.get("mtu", _int_range(576, 9000))
    outer_mtu = sec.get("outer_mtu", _int_range(576, 9000))
    if mtu is not None and outer_mtu is not None and mtu >= outer_mtu:
        raise sec.error("mtu", f"{mtu} does not fit gateway.outer_mtu {outer_mtu} with ESP's overhead "
                               f"(leave mtu unset to follow the path)")
    g = GatewaySettings(tun_name=name, tun_addresses=cidrs("tun_addresses", True), routes=routes,
                        mtu=mtu, outer_mtu=outer_mtu, offload=sec.get("offload", _bool, True),
                        batch_size=sec.get("batch_size", _int_range(1, 1024), 64),
                        raw_esp=sec.get("raw_esp", _bool, False))
    sec.finish()
    return g


def _metrics(root: _Section) -> tuple[str, int]:
    """``[metrics] listen``, parsed by the gateway's own parser (one syntax for ``--metrics`` and this key)."""
    from esp.gateway.metrics import parse_listen

    sec = _Section(root.raw("metrics", {}) or {}, "metrics")
    listen = sec.get("listen", parse_listen, required=True)
    sec.finish()
    return listen


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Read and validate a TOML file; ConfigError names the file, the key path and the reason."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from None
    try:
        return parse_config(text, base=p.parent, source=p, overrides=overrides)
    except ConfigError as exc:
        msg = str(exc)  # parse_config names the source itself for TOML syntax errors: name it once
        raise ConfigError(msg if msg.startswith(f"{p}: ") else f"{p}: {msg}") from None
