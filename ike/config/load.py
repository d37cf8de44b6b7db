"""Loading and validating the whole file: peers, children, the gateway and metrics sections."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from ..constants import ProtocolId
from ..core_config import (
    ChildConfig,
    CoreConfig,
    Credential,
    Identity,
    PeerConfig,
)
from ..errors import ConfigError
from ..keylog import key_log_problem
from .auth import auth_settings, check_local_auth, local_authorities, revocation_setting
from .pki import (
    _ca_profile,
    _certificate,
    _passphrase,
    _Pki,
    default_identity,
    identity_matches,
    make_validator,
)
from .schema import DEFAULT_CONTROL_SOCKET, MAX_CONFIG_BYTES, DaemonConfig, GatewaySettings
from .values import (
    _address,
    _bool,
    _choice,
    _exists,
    _identity,
    _int_range,
    _path,
    _port,
    _proposals,
    _Section,
    _selectors,
    _str,
    parse_duration,
    parse_size,
)


def _child(name: str, sec: _Section, version: int = 2) -> ChildConfig:
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
        esp_proposals=_proposals(sec, "esp_proposals", ProtocolId.ESP, defaults.esp_proposals, version),
        mode=sec.get("mode", _choice("tunnel", "transport"), "tunnel"),
        rekey_time=rekey_time, life_time=life_time, rekey_bytes=rekey_bytes, life_bytes=life_bytes,
        rekey_packets=rekey_packets, life_packets=life_packets,
        start=sec.get("start", _bool, True),
        version=version,
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


def _fragmentation(v: Any) -> str:
    """swanctl's ``fragmentation``: yes, accept, no (and force, which strongSwan only honours for IKEv1: yes);
    true/false as before."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v not in ("yes", "accept", "no", "force"):
        raise ValueError(f"expected yes, accept or no (or true/false), got {v!r}")
    return "yes" if v == "force" else str(v)


#: keys of a peer that only IKEv2 has (refused under ``version = 1`` with their path), and the IKEv1-only ones
IKEV2_ONLY = ("fragmentation", "fragment_size", "signature_auth", "rsa_pss", "send_certreq", "send_cert",
              "certificates")
IKEV1_ONLY = ("aggressive",)


def _version(sec: _Section) -> int:
    """swanctl's ``version`` (1 or 2, default 2); keys of the other version are refused with their path."""
    version = sec.get("version", _int_range(1, 2), 2)
    if version == 1:
        for k in IKEV2_ONLY:
            if sec.has(k):
                raise sec.error(k, "is not available for IKEv1 (version = 1) here")
    else:
        for k in IKEV1_ONLY:
            if sec.has(k):
                raise sec.error(k, "applies to IKEv1 only (version = 1)")
    return version


def _v1_check(peer: PeerConfig, sec: _Section) -> None:
    from ..v1.profile import problems

    for key, reason in problems(peer):
        raise ConfigError(f"{sec.path}.{key}: {reason}")


def _peer(name: str, sec: _Section, daemon: _Section, pki: _Pki) -> tuple[PeerConfig, str | None]:
    version = _version(sec)
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
    auth_c, remote_c = auth_settings(sec)
    auth, remote_auth = auth_c.method, remote_c.method
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
        check_local_auth(sec, auth_c, [c.credential.private_key for c in found])

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
    revocation = revocation_setting(sec)
    if revocation is not None and remote_auth != "pubkey":
        raise sec.error("revocation", "applies to certificates: it needs remote_auth = pubkey")
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
        validator = make_validator(chosen, crl_source=pki.crl_source(), intermediates=pki.intermediates,
                                   revocation=revocation)
        ca_certs = tuple(c for p in chosen for c in p.ca_certs)

    children = {}
    for cname, csec in sec.sub("children").items():
        children[cname] = _child(cname, csec, version)
    defaults = PeerConfig.__dataclass_fields__
    kwargs = dict(
        name=name,
        local_id=local_id,
        remote_id=remote_id,
        remote_addr=remote,
        remote_port=sec.get("remote_port", _port, 500),
        local_port=sec.get("local_port", _port, port),
        local_nat_port=sec.get("local_nat_port", _port, nat_port),
        remote_nat_port=sec.get("remote_nat_port", _port),
        ike_proposals=_proposals(sec, "ike_proposals", ProtocolId.IKE, defaults["ike_proposals"].default,
                                 version),
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
        auth_constraints=auth_c if auth_c.constrains else None,
        remote_auth_constraints=remote_c if remote_c.constrains else None,
        fragmentation=sec.get("fragmentation", _fragmentation, "yes"),
        fragment_size=sec.get("fragment_size", _int_range(576, 65535), 1280),
        encap=sec.get("encap", _bool, False),
        version=version,
        aggressive=sec.get("aggressive", _bool, False),
    )
    if "local_addr" in PeerConfig.__dataclass_fields__:  # the core learns our address when it has the field
        kwargs["local_addr"] = local_addr
    try:
        peer = PeerConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{sec.path}: {exc}") from None
    sec.finish()
    if version == 1:
        _v1_check(peer, sec)
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
    intermediates, crls = local_authorities(pki_sec, base_dir)
    pki_sec.finish()
    profiles = {n: _ca_profile(n, s, base_dir) for n, s in root.sub("ca-profiles").items()}
    certs = {n: _certificate(n, s, base_dir) for n, s in root.sub("certificates").items()}
    pki = _Pki(profiles, certs, store, "pki.store", fetch, pki_passphrase, intermediates, crls)
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
        # IKE on a NAT-T port carries the non-ESP marker even where a peer starts there (RFC 7296 2.23)
        plain_ports=frozenset({port, *(p.local_port for p in peers)} - {nat_port, *(p.local_nat_port for p in peers)}),
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
        intermediates=pki.intermediates, crls=pki.crls,
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
