"""Two IKE endpoints in memory (aioquic's test_connection style): fake clock, fixed randomness, test PKI."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ike.core_config import ChildConfig, CoreConfig, Credential, Identity, PeerConfig, TrafficSelector
from ike.dispatcher import Dispatcher

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
ADDR_I = ("192.0.2.1", 500)
ADDR_R = ("192.0.2.2", 500)


class FixedRandom:
    """Deterministic byte source (a counter through SHA-256), one per endpoint."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.n = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:n]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "espresso test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_key(kind: str):  # type: ignore[no-untyped-def]
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key({"ecdsa": ec.SECP256R1(), "ecdsa384": ec.SECP384R1()}[kind])


def _sign_hash(key):  # type: ignore[no-untyped-def]
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class CaForTests:
    key: object
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str = "Test Root CA", kind: str = "ecdsa") -> "CaForTests":
        key = make_key(kind)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, _sign_hash(key)))
        return cls(key, cert)

    def issue(self, cn: str, kind: str = "ecdsa", sans: list[x509.GeneralName] | None = None,
              not_before: datetime | None = None, not_after: datetime | None = None, ca: bool = False):  # type: ignore[no-untyped-def]
        key = make_key(kind)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(not_before or NOW - timedelta(days=1))
             .not_valid_after(not_after or NOW + timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(self.key, _sign_hash(self.key))


class SimpleValidator:
    """A stand-in for pki.validate: chain to one of ``roots``, validity at ``at``, serial not revoked."""

    def __init__(self, roots: list[x509.Certificate], revoked: set[int] | None = None) -> None:
        self.roots = roots
        self.revoked = revoked or set()

    def __call__(self, leaf, intermediates, at, identity):  # type: ignore[no-untyped-def]
        chain = [leaf, *intermediates]
        for c in chain:
            if not (c.not_valid_before_utc <= at <= c.not_valid_after_utc):
                raise Rejected("expired" if at > c.not_valid_after_utc else "not_yet_valid")
            if c.serial_number in self.revoked:
                raise Rejected("revoked")
        top = chain[-1]
        for root in self.roots:
            if root.subject == top.issuer:
                try:
                    top.verify_directly_issued_by(root)
                except Exception:  # noqa: BLE001
                    raise Rejected("bad_signature") from None
                for child, parent in zip(chain, chain[1:]):
                    child.verify_directly_issued_by(parent)
                return True
        raise Rejected("unknown_ca")


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def child(name: str = "net", local: str = "10.1.0.0/24", remote: str = "10.2.0.0/24", **kw) -> ChildConfig:  # type: ignore[no-untyped-def]
    return ChildConfig(name, (TrafficSelector.from_cidr(local),), (TrafficSelector.from_cidr(remote),), **kw)


def psk_peers(**kw) -> tuple[PeerConfig, PeerConfig]:  # type: ignore[no-untyped-def]
    i = PeerConfig("to-r", Identity("fqdn", "i.example"), Identity("fqdn", "r.example"), remote_addr=ADDR_R[0],
                   auth="psk", remote_auth="psk", psk=b"secret-secret", children=(child(),), **kw)
    r = PeerConfig("from-i", Identity("fqdn", "r.example"), Identity("fqdn", "i.example"), auth="psk",
                   remote_auth="psk", psk=b"secret-secret",
                   children=(child(local="10.2.0.0/16", remote="10.1.0.0/16"),), **kw)
    return i, r


def cert_peers(kind_i: str = "ecdsa", kind_r: str = "ecdsa", ca: CaForTests | None = None, **kw):  # type: ignore[no-untyped-def]
    ca = ca or CaForTests.create()
    ki, ci = ca.issue("initiator", kind_i, [x509.DNSName("i.example")])
    kr, cr = ca.issue("responder", kind_r, [x509.DNSName("r.example")])
    v = SimpleValidator([ca.cert])
    common = dict(validator=v, ca_certs=(ca.cert,))
    common.update(kw)
    i = PeerConfig("to-r", Identity("fqdn", "i.example"), Identity("fqdn", "r.example"), remote_addr=ADDR_R[0],
                   credential=Credential(ki, ci), children=(child(),), **common)
    r = PeerConfig("from-i", Identity("fqdn", "r.example"), None, credential=Credential(kr, cr),
                   children=(child(local="10.2.0.0/16", remote="10.1.0.0/16"),), **common)
    return i, r, ca


def pair(peer_i: PeerConfig, peer_r: PeerConfig, **cfg) -> tuple[Dispatcher, Dispatcher]:  # type: ignore[no-untyped-def]
    ci = CoreConfig(peers=(replace(peer_i, local_addr=ADDR_I[0]) if peer_i.local_addr is None else peer_i,),
                    random=FixedRandom(b"i"), wall_clock=lambda now: NOW + timedelta(seconds=now), **cfg)
    cr = CoreConfig(peers=(peer_r,), random=FixedRandom(b"r"), wall_clock=lambda now: NOW + timedelta(seconds=now),
                    **cfg)
    return Dispatcher(ci), Dispatcher(cr)


def transfer(src: Dispatcher, dst: Dispatcher, now: float, src_host: str, dst_host: str,
             drop: bool = False, mangle=None) -> int:  # type: ignore[no-untyped-def]
    """Deliver what ``src`` wants to send to ``dst``. Returns the datagram count."""
    n = 0
    for dg in src.datagrams_to_send(now):
        n += 1
        if drop:
            continue
        data = mangle(dg.data) if mangle else dg.data
        dst.receive_datagram(data, (src_host, dg.local_port), (dst_host, dg.addr[1]), now)
    return n


def roundtrip(a: Dispatcher, b: Dispatcher, now: float = 0.0, max_rounds: int = 20) -> int:
    """Move datagrams both ways until quiet (bounded)."""
    total = 0
    for _ in range(max_rounds):
        n = transfer(a, b, now, ADDR_I[0], ADDR_R[0]) + transfer(b, a, now, ADDR_R[0], ADDR_I[0])
        total += n
        if n == 0:
            break
    return total


def run_timers(a: Dispatcher, b: Dispatcher, fire: Dispatcher, until: float, limit: int) -> list:  # type: ignore[type-arg]
    """Fire ``fire``'s timers in order up to ``until`` seconds (at most ``limit`` of them), moving the datagrams
    between ``a`` (initiator side) and ``b`` after each; returns the events ``fire`` reported meanwhile."""
    seen = []
    for _ in range(limit):
        t = fire.get_timer()
        if t is None or t > until:
            break
        fire.handle_timer(t)
        roundtrip(a, b, t)
        seen += drain(fire)
    return seen


def drain(d: Dispatcher) -> list:  # type: ignore[type-arg]
    out = []
    while (e := d.next_event()) is not None:
        out.append(e)
    return out
