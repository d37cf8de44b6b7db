"""Frozen configuration the protocol core takes. No file, environment or clock is read here.

``ike.config`` (the daemon's TOML loader) builds these objects; tests build them directly.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Literal, Sequence

from .errors import ConfigError

#: a peer's ``remote_addr`` that accepts any address (swanctl's %any)
ANY_ADDRESS = (None, "%any", "0.0.0.0", "::")

__all__ = [
    "Identity", "IdKind", "TrafficSelector", "Credential", "ChildConfig", "PeerConfig", "CoreConfig",
    "PeerValidator", "RandomSource",
]

IdKind = Literal["ipv4", "ipv6", "fqdn", "email", "dn", "keyid"]
#: Validates the peer's certificate chain; returns anything, raises on rejection. The exception should carry
#: ``.reason`` (pki.validate.CertificateRejected does). Arguments: leaf, intermediates, at (aware UTC), identity.
PeerValidator = Callable[[Any, Sequence[Any], datetime, "Identity"], object]
#: ``random(n) -> n bytes``: nonces, SPIs, IVs. Injected by tests for determinism.
RandomSource = Callable[[int], bytes]


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 3.5). ``value`` is text: an address, a name, an email, an RFC 4514 DN
    (``CN=gw1,O=Example``) or hex for ``keyid``. ``parse('fqdn:gw.example')`` or guesses from the text."""

    kind: IdKind
    value: str

    @classmethod
    def parse(cls, text: str) -> "Identity":
        """strongSwan-like identity text: ``@fqdn``, ``user@host``, ``1.2.3.4``, ``C=..,CN=..`` or ``kind:value``."""
        t = text.strip()
        for kind in ("ipv4", "ipv6", "fqdn", "email", "dn", "keyid"):
            if t.startswith(kind + ":"):
                return cls(kind, t[len(kind) + 1:])  # type: ignore[arg-type]
        if t.startswith("@#"):
            return cls("keyid", t[2:])
        if t.startswith("@"):
            return cls("fqdn", t[1:])
        try:
            ip = ipaddress.ip_address(t)
            return cls("ipv4" if ip.version == 4 else "ipv6", str(ip))
        except ValueError:
            pass
        if "=" in t:
            return cls("dn", t)
        if "@" in t:
            return cls("email", t)
        return cls("fqdn", t)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrafficSelector:
    """An address range, protocol and port range (RFC 7296 3.13.1). ``protocol`` 0 and ports 0-65535 = any."""

    start: str
    end: str
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_cidr(cls, cidr: str, protocol: int = 0, port: int | None = None) -> "TrafficSelector":
        net = ipaddress.ip_network(cidr, strict=False)
        sp, ep = (0, 65535) if port is None else (port, port)
        return cls(str(net.network_address), str(net.broadcast_address), protocol, sp, ep)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.start).version

    def __post_init__(self) -> None:
        try:
            a, b = ipaddress.ip_address(self.start), ipaddress.ip_address(self.end)
        except ValueError as exc:
            raise ConfigError(f"traffic selector: {exc}") from None
        if a.version != b.version or int(a) > int(b):
            raise ConfigError(f"traffic selector {self.start}-{self.end}: bad address range")
        if not (0 <= self.start_port <= self.end_port <= 65535) or not 0 <= self.protocol <= 255:
            raise ConfigError(f"traffic selector {self}: bad port range or protocol")

    def __str__(self) -> str:
        a, b = ipaddress.ip_address(self.start), ipaddress.ip_address(self.end)
        try:
            nets = list(ipaddress.summarize_address_range(a, b))
            addr = str(nets[0]) if len(nets) == 1 else f"{a}..{b}"
        except (TypeError, ValueError):
            addr = f"{a}..{b}"
        if self.protocol == 0 and (self.start_port, self.end_port) == (0, 65535):
            return addr
        port = "" if (self.start_port, self.end_port) == (0, 65535) else (
            str(self.start_port) if self.start_port == self.end_port else f"{self.start_port}-{self.end_port}")
        return f"{addr}[{self.protocol}/{port}]"


@dataclass(frozen=True)
class Credential:
    """Our own certificate credential: ``private_key`` is a cryptography private key object, ``certificate``
    the end-entity certificate (cryptography x509.Certificate), ``intermediates`` up to (not including) a root."""

    private_key: Any = field(repr=False)
    certificate: Any
    intermediates: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ChildConfig:
    """One CHILD_SA (swanctl ``children.<name>``). Lifetimes in seconds; 0 disables."""

    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    esp_proposals: tuple[str, ...] = ("aes128gcm16", "aes256gcm16", "aes256-sha256")
    mode: Literal["tunnel", "transport"] = "tunnel"
    rekey_time: float = 3600.0
    life_time: float = 3960.0
    #: soft/hard byte and packet limits handed to esp (0 = none); the daemon reports soft expiry back.
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    start: bool = True  # negotiated with IKE_AUTH when the peer is initiated
    #: the IKE version of the peer it belongs to: an IKEv1 child's proposals are checked by ike.v1.profile
    #: (which accepts 3DES where named), as PeerConfig leaves its IKEv1 ike_proposals to it
    version: int = 2

    def __post_init__(self) -> None:
        from .proposal import parse_proposals  # local: proposal -> payloads -> ident -> this module

        if not self.esp_proposals:
            raise ConfigError(f"child {self.name}: no ESP proposals")
        try:
            if self.version == 2:
                parse_proposals(self.esp_proposals, 3)
        except ConfigError as exc:
            raise ConfigError(f"child {self.name}: esp_proposals: {exc}") from None
        if self.mode not in ("tunnel", "transport"):
            raise ConfigError(f"child {self.name}: mode must be tunnel or transport")


@dataclass(frozen=True)
class PeerConfig:
    """One peer (swanctl ``connections.<name>``).

    ``remote_addr`` None (or "%any") accepts any address as responder. ``remote_id`` None accepts any identity
    that the certificate proves. ``auth`` is how *we* authenticate, ``remote_auth`` how the peer must.
    """

    name: str
    local_id: Identity
    remote_id: Identity | None = None
    remote_addr: str | None = None
    #: our address towards the peer, for NAT detection hashes (None: unknown, which looks like a NAT and makes
    #: the IKE_SA move to the NAT-T port, as strongSwan's libipsec peers need anyway)
    local_addr: str | None = None
    remote_port: int = 500
    local_port: int = 500
    local_nat_port: int = 4500
    #: where the peer takes NAT-T (IKE with the non-ESP marker, ESP in UDP) when the IKE_SA floats; None:
    #: swanctl's rule, 4500 after remote_port 500, else remote_port itself (no floating)
    remote_nat_port: int | None = None
    ike_proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048")
    auth: Literal["pubkey", "psk"] = "pubkey"
    remote_auth: Literal["pubkey", "psk"] = "pubkey"
    credential: Credential | None = None
    #: more of our certificates; the one whose chain matches the peer's CERTREQ is sent
    extra_credentials: tuple[Credential, ...] = ()
    #: CA certificates we trust for this peer: their key hashes go into our CERTREQ
    ca_certs: tuple[Any, ...] = ()
    psk: bytes | None = field(default=None, repr=False)
    validator: PeerValidator | None = None
    children: tuple[ChildConfig, ...] = ()
    rekey_time: float = 14400.0  # IKE_SA rekey; 0 disables
    dpd_delay: float = 0.0  # liveness check after this idle time; 0 disables
    keepalive_interval: float = 20.0  # NAT-T keepalives (RFC 3948 2.3) while we are behind a NAT; 0 disables
    send_certreq: bool = True
    send_cert: Literal["always", "ifasked", "never"] = "always"
    signature_auth: bool = True  # RFC 7427 (SIGNATURE_HASH_ALGORITHMS, AUTH method 14)
    rsa_pss: bool = False
    #: swanctl ``local.auth`` / ``remote.auth`` signature constraints (``ike.auth_constraints.AuthConstraints``):
    #: which scheme and hash we sign with, which the peer (and, without ``ike:``, its trust chain) must use
    auth_constraints: Any = None
    remote_auth_constraints: Any = None
    #: RFC 7383 with strongSwan's meanings: "yes" announces support and sends our oversized messages in fragments
    #: when the peer supports them too; "accept" announces support (the peer may fragment) but sends every message
    #: whole; "no" does not announce. Fragments a peer sends anyway are reassembled whatever this says, as charon
    #: does. true/false mean yes/no; "force" (an IKEv1 option in strongSwan) means yes for IKEv2, as in charon.
    fragmentation: Literal["yes", "accept", "no"] | bool = "yes"
    #: largest IP datagram one of our fragments may make (IP and UDP headers, non-ESP marker and IKE message),
    #: what charon's fragment_size means; also the size above which a message is fragmented at all
    fragment_size: int = 1280
    encap: bool = False  # force UDP encapsulation (pretend to be behind NAT)
    #: the IKE version this peer speaks (swanctl ``version``): 2, or 1 for IKEv1 (ike.v1, run by the daemon)
    version: int = 2
    #: IKEv1 only: open and accept aggressive mode (off: its second message exposes the PSK's hash to anyone)
    aggressive: bool = False

    @property
    def peer_nat_port(self) -> int:
        """The peer's NAT-T port the IKE_SA floats to."""
        if self.remote_nat_port is not None:
            return self.remote_nat_port
        return 4500 if self.remote_port == 500 else self.remote_port

    def __post_init__(self) -> None:
        if self.auth == "pubkey" and self.credential is None:
            raise ConfigError(f"peer {self.name}: auth=pubkey needs a credential")
        if "psk" in (self.auth, self.remote_auth) and not self.psk:
            raise ConfigError(f"peer {self.name}: psk authentication needs a psk")
        if self.remote_auth == "pubkey" and self.validator is None:
            raise ConfigError(f"peer {self.name}: remote_auth=pubkey needs a validator")
        if self.version not in (1, 2):
            raise ConfigError(f"peer {self.name}: version must be 1 or 2")
        if not self.ike_proposals:
            raise ConfigError(f"peer {self.name}: no IKE proposals")
        from .proposal import parse_proposals

        try:  # IKEv1 proposals are checked by ike.v1.profile (strongSwan syntax, IKEv1's algorithms)
            if self.version == 2:
                parse_proposals(self.ike_proposals, 1)
        except ConfigError as exc:
            raise ConfigError(f"peer {self.name}: ike_proposals: {exc}") from None
        frag = {True: "yes", False: "no", "force": "yes"}.get(self.fragmentation, self.fragmentation)  # type: ignore[call-overload]
        if frag not in ("yes", "accept", "no"):
            raise ConfigError(f"peer {self.name}: fragmentation must be yes, accept or no, not {self.fragmentation!r}")
        object.__setattr__(self, "fragmentation", frag)
        if not 576 <= self.fragment_size <= 65535:
            raise ConfigError(f"peer {self.name}: fragment_size must be 576..65535")


@dataclass(frozen=True)
class CoreConfig:
    """Everything the sans-I/O core takes. Bounds a peer can push against are named here."""

    peers: tuple[PeerConfig, ...]
    #: half-open IKE_SAs above which IKE_SA_INIT requests must return a COOKIE (RFC 7296 2.6)
    cookie_threshold: int = 10
    #: half-open IKE_SAs above which new IKE_SA_INIT requests are dropped
    half_open_limit: int = 1000
    #: the same per source address (strongSwan's cookie_threshold_ip / block_threshold): one busy or hostile
    #: address gets COOKIEs, then drops, before it can use up the global budget
    cookie_threshold_ip: int = 3
    half_open_limit_ip: int = 5
    half_open_timeout: float = 30.0
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    #: our ports on which IKE travels without the non-ESP marker (RFC 7296 2.23: 500; the daemon's ``port`` and
    #: the peers' ``local_port``); every other port of ours is a NAT-T port, where IKE carries the marker and
    #: ESP comes in UDP, as charon's port / port_nat_t sockets
    plain_ports: frozenset[int] = frozenset({500})
    #: emit IkeKeysDerived events (for a Wireshark key log); off by default
    key_log: bool = False
    #: maps the monotonic ``now`` to an aware UTC datetime for certificate checks. The core reads no clock
    #: (STYLE.md): the daemon passes one; None refuses certificate authentication with a clear reason.
    wall_clock: Callable[[float], datetime] | None = None
    random: RandomSource = os.urandom
    #: DH factory override for tests: (group, random) -> ike.dh.DhKeyExchange
    dh_factory: Callable[[int], Any] | None = None
    #: max IKE message size we accept (bytes) and max reassembled fragments
    max_message_size: int = 65535
    #: CHILD_SAs a peer may hold in one IKE_SA (rekey replacements in flight included)
    max_child_sas: int = 64
    max_fragments: int = 64

    def peer(self, name: str) -> PeerConfig:
        for p in self.peers:
            if p.name == name:
                return p
        raise ConfigError(f"no peer named {name!r}")

    def peers_at(self, host: str, version: int) -> list[PeerConfig]:
        """The ``version`` peers a message from ``host`` may come from: addresses and networks that hold it
        first, wildcards (None, %any) last, as a responder tries them."""
        out = []
        for p in self.peers:
            if p.version != version:
                continue
            if p.remote_addr in ANY_ADDRESS:
                out.append(p)
                continue
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(p.remote_addr, strict=False):
                    out.append(p)
            except ValueError:
                if p.remote_addr == host:
                    out.append(p)
        return sorted(out, key=lambda p: p.remote_addr in ANY_ADDRESS)
