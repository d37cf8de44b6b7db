"""Control plane: how many tunnels per second the IKE core and the PKI can bring up.

* IKE_SA + CHILD_SA establishments per second: two sans-I/O dispatchers (``ike.dispatcher``) in memory, the
  initiator's datagrams handed straight to the responder and back, certificate authentication with RSA-2048 or
  ECDSA P-256 on both sides, each peer's certificate checked by ``pki.validate`` against the CA and its CRL.
  Each establishment is a fresh pair (new DH, new nonces, new signatures): IKE_SA_INIT + IKE_AUTH, as a
  gateway receiving a stream of new peers does.
* CRL-checked validations per second: ``pki.validate.Validator.verify`` of a leaf against its CA with a loaded
  CRL that lists 1,000 revoked serials (the CRL's signature is checked on each call, as the validator does).

The certificates are made here with ``cryptography``; nothing is fetched.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Pki", "establishments_per_second", "make_pki", "run", "validations_per_second"]

REVOKED = 1000


@dataclass
class Pki:
    kind: str
    ca_cert: Any
    leaves: dict[str, tuple[Any, Any]]  # name -> (private key, certificate)
    crl: Any


def _key(kind: str):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def make_pki(kind: str, now: dt.datetime | None = None) -> Pki:
    """A CA of ``kind`` ("rsa": RSA-2048, "ecdsa": P-256), two leaf certificates (i.example, r.example) and a
    CRL with REVOKED other serials."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = now or dt.datetime.now(dt.timezone.utc)
    ca_key = _key(kind)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"espresso bench CA ({kind})")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaves = {}
    for name in ("i.example", "r.example"):
        k = _key(kind)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_name)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        leaves[name] = (k, cert)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_name).last_update(now - dt.timedelta(hours=1))
         .next_update(now + dt.timedelta(days=7)))
    for serial in range(1000, 1000 + REVOKED):
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(days=2)).build())
    crl = b.add_extension(x509.CRLNumber(1), critical=False).sign(ca_key, hashes.SHA256())
    return Pki(kind, ca, leaves, crl)


def _validator(pki: Pki):
    from pki.profile import RevocationPolicy
    from pki.revocation import CrlCache
    from pki.validate import TrustAnchor, Validator

    cache = CrlCache(fetch=None)
    cache.add(pki.crl)
    return Validator([TrustAnchor(pki.ca_cert, RevocationPolicy(mode="crl"), "bench")], crl_source=cache)


def validations_per_second(pki: Pki, seconds: float) -> tuple[int, float]:
    """CRL-checked validations of one leaf for about ``seconds``; (count, elapsed)."""
    v = _validator(pki)
    leaf = pki.leaves["r.example"][1]
    at = dt.datetime.now(dt.timezone.utc)
    chain = v.verify(leaf, [], at)
    if not chain.revocation or "crl" not in str(chain.revocation[0]).lower():
        raise RuntimeError(f"the validator did not check the CRL: {chain.revocation}")
    n = 0
    t0 = time.perf_counter()
    while True:
        v.verify(leaf, [], at)
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            return n, el


def _pair(pki: Pki, validator: Any):
    from ike.authenticators import pki_validator
    from ike.core_config import ChildConfig, CoreConfig, Credential, Identity, PeerConfig, TrafficSelector
    from ike.dispatcher import Dispatcher

    ts = TrafficSelector.from_cidr
    check = pki_validator(validator)
    clock = lambda now: dt.datetime.now(dt.timezone.utc)
    ki, ci = pki.leaves["i.example"]
    kr, cr = pki.leaves["r.example"]
    i = PeerConfig("to-r", Identity("fqdn", "i.example"), Identity("fqdn", "r.example"), remote_addr="192.0.2.2",
                   local_addr="192.0.2.1", credential=Credential(ki, ci), validator=check, ca_certs=(pki.ca_cert,),
                   children=(ChildConfig("net", (ts("10.1.0.0/24"),), (ts("10.2.0.0/24"),)),))
    r = PeerConfig("from-i", Identity("fqdn", "r.example"), None, credential=Credential(kr, cr), validator=check,
                   ca_certs=(pki.ca_cert,), local_addr="192.0.2.2",
                   children=(ChildConfig("net", (ts("10.2.0.0/16"),), (ts("10.1.0.0/16"),)),))
    return Dispatcher(CoreConfig(peers=(i,), wall_clock=clock)), Dispatcher(CoreConfig(peers=(r,), wall_clock=clock))


def _establish(pki: Pki, validator: Any, now: float) -> None:
    """One IKE_SA + CHILD_SA between a fresh pair; raises unless both sides installed the CHILD_SA."""
    from ike.events import ChildSaEstablished

    a, b = _pair(pki, validator)
    a.initiate("to-r", now)
    hosts = {id(a): "192.0.2.1", id(b): "192.0.2.2"}
    for _ in range(20):
        moved = 0
        for src, dst in ((a, b), (b, a)):
            for dg in src.datagrams_to_send(now):
                moved += 1
                dst.receive_datagram(dg.data, (hosts[id(src)], dg.local_port), (hosts[id(dst)], dg.addr[1]), now)
        if not moved:
            break
    done = 0
    for d in (a, b):
        events = []
        while (e := d.next_event()) is not None:
            events.append(e)
        done += any(isinstance(e, ChildSaEstablished) for e in events)
        if not any(isinstance(e, ChildSaEstablished) for e in events):
            raise RuntimeError(f"no CHILD_SA: events {[type(e).__name__ for e in events]}")


def establishments_per_second(pki: Pki, seconds: float, min_count: int = 2) -> tuple[int, float]:
    validator = _validator(pki)
    _establish(pki, validator, 0.0)  # warm-up, and proof that it works
    n = 0
    t0 = time.perf_counter()
    while True:
        _establish(pki, validator, 0.0)
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= min_count:
            return n, el


def run(quick: bool = False, repeats: int = 3) -> dict:
    """Establishments and validations per second for RSA-2048 and ECDSA P-256; spread over ``repeats``."""
    try:
        import ike.dispatcher  # noqa: F401
        import pki.validate
        from ike.authenticators import pki_validator  # noqa: F401
    except ImportError as exc:
        return {"unavailable": f"the IKE core or pki.validate is not importable ({exc})"}
    from bench.harness import spread

    seconds = 0.3 if quick else 1.0
    reps = min(repeats, 2) if quick else min(repeats, 5)
    out: dict = {}
    parts = []
    for kind, label in (("ecdsa", "ECDSA P-256"), ("rsa", "RSA-2048")):
        pki = make_pki(kind)
        est, val = [], []
        try:
            for _ in range(reps):  # interleaved: establishments, validations, ...
                n, el = establishments_per_second(pki, seconds)
                est.append(n / el)
                n, el = validations_per_second(pki, seconds / 3)
                val.append(n / el)
        except Exception as exc:  # noqa: BLE001
            out[kind] = {"unavailable": f"{type(exc).__name__}: {exc}"}
            parts.append(f"{label}: not available: {exc}")
            continue
        e, v = spread(est), spread(val)
        out[kind] = {"certificates": label, "establishments_per_s": e.as_dict(),
                     "crl_checked_validations_per_s": v.as_dict(), "crl_revoked_entries": REVOKED}
        parts.append(f"{label}: {e.median:.0f} IKE_SA+CHILD_SA/s [{e.min:.0f}-{e.max:.0f}], "
                     f"{v.median:.0f} CRL-checked validations/s [{v.min:.0f}-{v.max:.0f}]")
    out["summary"] = "; ".join(parts) + " (one core, sans-I/O core in memory)"
    return out
