"""The validator: a valid chain, and one test per RejectReason."""
from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pki.ca import IssueProfile
from pki.errors import CertificateRejected, PkiError, RejectReason, RevocationUnavailable
from pki.keys import generate_private_key, parse_key_spec
from pki.profile import RevocationMode, RevocationPolicy
from pki.revocation import CrlCache, RevocationStatus
from pki.validate import IdType, TrustAnchor, ValidationPolicy, Validator
from tests.pki.conftest import T0, make_leaf, raw_cert

NO_REV = RevocationPolicy(mode=RevocationMode.DISABLE)


def _ec():
    return generate_private_key(parse_key_spec("ecdsa", 256))


def _validator(root_ca, rev=NO_REV, policy=None, **kw):
    return Validator([TrustAnchor(root_ca.certificate, rev, "lab")], policy, **kw)


def _rejected(reason: RejectReason, fn, *args, **kw) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as info:
        fn(*args, **kw)
    assert info.value.reason is reason, info.value
    assert str(info.value).startswith(f"certificate rejected ({reason.value})")
    return info.value


def test_valid_chain_and_identities(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    v = _validator(root_ca)
    chain = v.verify(leaf, [sub_ca.certificate], T0)
    assert chain.chain == (leaf, sub_ca.certificate, root_ca.certificate) and chain.profile == "lab"
    assert [a.status for a in chain.revocation] == [RevocationStatus.NOT_CHECKED] * 2
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=(IdType.FQDN, "R1.example.net")).identity == "DNS:r1.example.net"
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=(IdType.ID_IPV4_ADDR, "192.0.2.1")).identity == "IP:192.0.2.1"
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=(1, bytes([192, 0, 2, 1]))).identity == "IP:192.0.2.1"
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=("email", "ops@EXAMPLE.net")).identity
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=(IdType.DN, "CN=r1, O=espresso")).identity
    assert v.verify(leaf, [sub_ca.certificate], T0, identity=(IdType.DN, leaf.subject.public_bytes())).identity


def test_extra_and_unordered_intermediates_ignored(root_ca, sub_ca, tmp_path):
    _, leaf = make_leaf(sub_ca)
    junk = raw_cert("CN=junk", _ec())
    assert _validator(root_ca).verify(leaf, [junk, sub_ca.certificate, root_ca.certificate], T0)


@pytest.mark.parametrize("kt,size,pss", [("rsa", 2048, False), ("rsa", 2048, True), ("ecdsa", 384, False),
                                         ("ed25519", None, False)])
def test_signature_algorithms(tmp_path, kt, size, pss):
    from pki.ca import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path / "ca", "CN=alg", key_type=kt, key_size=size, rsa_pss=pss, at=T0)
    _, leaf = make_leaf(ca, key_type=kt, key_size=size)
    assert Validator([TrustAnchor(ca.certificate, NO_REV)]).verify(leaf, [], T0)
    ca.close()


def test_malformed_unknown_critical_extension(root_ca):
    k = _ec()
    leaf = raw_cert("CN=odd", k, root_ca.certificate.subject.rfc4514_string(), root_ca.private_key, ca=False,
                    extra=[(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True)])
    _rejected(RejectReason.MALFORMED, _validator(root_ca).verify, leaf, [], T0)


def test_untrusted(root_ca, tmp_path):
    from pki.ca import CertificateAuthority

    other = CertificateAuthority.init(tmp_path / "other", "CN=Other", at=T0)
    _, leaf = make_leaf(other)
    _rejected(RejectReason.UNTRUSTED, _validator(root_ca).verify, leaf, [], T0)
    other.close()


def test_bad_signature(root_ca):
    _, leaf = make_leaf(root_ca)
    der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x40  # inside the ECDSA signature value
    forged = x509.load_der_x509_certificate(bytes(der))
    _rejected(RejectReason.BAD_SIGNATURE, _validator(root_ca).verify, forged, [], T0)


def test_not_yet_valid_and_expired(root_ca):
    _, leaf = make_leaf(root_ca)
    v = _validator(root_ca)
    _rejected(RejectReason.NOT_YET_VALID, v.verify, leaf, [], leaf.not_valid_before_utc - timedelta(seconds=1))
    _rejected(RejectReason.EXPIRED, v.verify, leaf, [], leaf.not_valid_after_utc + timedelta(seconds=1))


def test_expired_ca(root_ca):
    """A leaf whose own dates are fine but whose CA has expired."""
    k = _ec()
    leaf = raw_cert("CN=late", k, root_ca.certificate.subject.rfc4514_string(), root_ca.private_key, ca=False,
                    not_before=T0, not_after=root_ca.certificate.not_valid_after_utc + timedelta(days=30))
    e = _rejected(RejectReason.EXPIRED, _validator(root_ca).verify, leaf, [],
                  root_ca.certificate.not_valid_after_utc + timedelta(days=1))
    assert "CA certificate" in e.detail


@pytest.mark.parametrize("ca_flag", [False, None])
def test_not_a_ca(root_ca, ca_flag):
    """A leaf certificate (cA=FALSE, or no basicConstraints) used to issue another one."""
    mid_key = _ec()
    mid = raw_cert("CN=not a ca", mid_key, root_ca.certificate.subject.rfc4514_string(), root_ca.private_key, ca=ca_flag)
    leaf = raw_cert("CN=victim", _ec(), "CN=not a ca", mid_key, ca=False)
    _rejected(RejectReason.NOT_A_CA, _validator(root_ca).verify, leaf, [mid], T0)


def test_not_a_ca_without_key_cert_sign(root_ca):
    mid_key = _ec()
    mid = raw_cert("CN=nokcs", mid_key, root_ca.certificate.subject.rfc4514_string(), root_ca.private_key,
                   key_usage={"digital_signature": True})
    leaf = raw_cert("CN=victim", _ec(), "CN=nokcs", mid_key, ca=False)
    _rejected(RejectReason.NOT_A_CA, _validator(root_ca).verify, leaf, [mid], T0)


def test_path_length_exceeded(root_ca, sub_ca):
    # sub_ca has pathLen 0; a CA under it, and a leaf under that
    k2 = _ec()
    sub2 = raw_cert("CN=sub2", k2, sub_ca.certificate.subject.rfc4514_string(), sub_ca.private_key, ca=True)
    leaf = raw_cert("CN=deep", _ec(), "CN=sub2", k2, ca=False)
    _rejected(RejectReason.PATH_LENGTH_EXCEEDED, _validator(root_ca).verify, leaf, [sub2, sub_ca.certificate], T0)


def test_key_usage(root_ca):
    _, leaf = make_leaf(root_ca, profile=IssueProfile(key_usage=frozenset({"key_encipherment"})))
    _rejected(RejectReason.KEY_USAGE, _validator(root_ca).verify, leaf, [], T0)


def test_extended_key_usage(root_ca):
    _, leaf = make_leaf(root_ca, profile=IssueProfile(extended_key_usage=(ExtendedKeyUsageOID.CODE_SIGNING,)))
    _rejected(RejectReason.EXTENDED_KEY_USAGE, _validator(root_ca).verify, leaf, [], T0)
    # required EKU: a leaf without any EKU is refused when the policy demands ipsecIKE
    _, plain = make_leaf(root_ca)
    from pki.validate import IPSEC_IKE
    _rejected(RejectReason.EXTENDED_KEY_USAGE, _validator(root_ca, policy=ValidationPolicy(required_eku=IPSEC_IKE)).verify,
              plain, [], T0)
    _, ike = make_leaf(root_ca, profile="ipsec-ike")
    assert _validator(root_ca, policy=ValidationPolicy(required_eku=IPSEC_IKE)).verify(ike, [], T0)


def _crl_source(*cas, at):
    cache = CrlCache(fetch=None)
    for ca in cas:
        cache.add(ca.crl(at=at))
    return cache


def test_revoked_round_trip(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    rev = RevocationPolicy(mode=RevocationMode.CRL)
    v = _validator(root_ca, rev, crl_source=_crl_source(root_ca, sub_ca, at=T0))
    chain = v.verify(leaf, [sub_ca.certificate], T0 + timedelta(minutes=1))
    assert [a.status for a in chain.revocation] == [RevocationStatus.GOOD, RevocationStatus.GOOD]
    sub_ca.revoke(leaf.serial_number, "key-compromise", at=T0 + timedelta(minutes=2))
    v = _validator(root_ca, rev, crl_source=_crl_source(root_ca, sub_ca, at=T0 + timedelta(minutes=3)))
    e = _rejected(RejectReason.REVOKED, v.verify, leaf, [sub_ca.certificate], T0 + timedelta(minutes=4))
    assert "key_compromise" in e.detail


def test_revoked_intermediate(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    root_ca.revoke(sub_ca.certificate.serial_number, "ca-compromise", at=T0)
    v = _validator(root_ca, RevocationPolicy(), crl_source=_crl_source(root_ca, sub_ca, at=T0))
    _rejected(RejectReason.REVOKED, v.verify, leaf, [sub_ca.certificate], T0 + timedelta(minutes=1))


def test_revocation_unknown_fails_closed_unless_fail_open(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    calls = []

    def unreachable(url):
        calls.append(url)
        raise RevocationUnavailable(f"{url}: connection refused")

    v = _validator(root_ca, RevocationPolicy(), crl_source=CrlCache(fetch=unreachable))
    e = _rejected(RejectReason.REVOCATION_UNKNOWN, v.verify, leaf, [sub_ca.certificate], T0)
    assert "connection refused" in e.detail and calls == ["http://127.0.0.1:1/sub.crl"]
    v = _validator(root_ca, RevocationPolicy(fail_open=True), crl_source=CrlCache(fetch=unreachable))
    chain = v.verify(leaf, [sub_ca.certificate], T0)
    assert chain.revocation[0].status is RevocationStatus.UNKNOWN


def test_expired_crl_fails_closed(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    src = _crl_source(root_ca, sub_ca, at=T0)
    late = T0 + sub_ca.config.crl_validity + timedelta(hours=1)
    e = _rejected(RejectReason.REVOCATION_UNKNOWN, _validator(root_ca, RevocationPolicy(), crl_source=src).verify,
                  leaf, [sub_ca.certificate], late)
    assert "expired" in e.detail


def test_crl_from_wrong_issuer_is_not_used(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    root_crl = root_ca.crl(at=T0).public_bytes(serialization.Encoding.DER)
    v = _validator(root_ca, RevocationPolicy(), crl_source=CrlCache(fetch=lambda url: root_crl))
    _rejected(RejectReason.REVOCATION_UNKNOWN, v.verify, leaf, [sub_ca.certificate], T0)


def test_crl_fetch_cache_refresh_and_override(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    served = {"http://127.0.0.1:1/sub.crl": sub_ca.crl(at=T0), "http://127.0.0.1:1/root.crl": root_ca.crl(at=T0),
              "http://override/sub.crl": sub_ca.crl(at=T0)}
    asked: list[str] = []

    def fetch(url):
        asked.append(url)
        return served[url].public_bytes(serialization.Encoding.DER)

    cache = CrlCache(fetch=fetch)
    v = _validator(root_ca, RevocationPolicy(), crl_source=cache)
    v.verify(leaf, [sub_ca.certificate], T0)
    v.verify(leaf, [sub_ca.certificate], T0 + timedelta(hours=1))
    assert asked == ["http://127.0.0.1:1/sub.crl", "http://127.0.0.1:1/root.crl"]  # cached until nextUpdate
    # refresh interval forces a re-fetch
    v = _validator(root_ca, RevocationPolicy(refresh_interval=timedelta(minutes=30)), crl_source=cache)
    v.verify(leaf, [sub_ca.certificate], T0 + timedelta(hours=2))
    assert asked.count("http://127.0.0.1:1/sub.crl") == 2
    # the profile's URL override replaces the distribution point
    asked.clear()
    v = _validator(root_ca, RevocationPolicy(crl_url="http://override/sub.crl"), crl_source=CrlCache(fetch=fetch))
    with pytest.raises(CertificateRejected):  # root CRL isn't at the override URL: for the intermediate it fails
        v.verify(leaf, [sub_ca.certificate], T0)
    assert asked[0] == "http://override/sub.crl"


class _FakeOcsp:
    def __init__(self, status, exc=None):
        self.status, self.exc, self.calls = status, exc, 0

    def check(self, cert, issuer, at):
        self.calls += 1
        if self.exc:
            raise self.exc
        return type("R", (), {"status": type("S", (), {"name": self.status})(), "revocation_time": at,
                              "revocation_reason": x509.ReasonFlags.superseded})()


def test_ocsp_answers(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    pol = RevocationPolicy(mode=RevocationMode.OCSP)
    assert _validator(root_ca, pol, ocsp=_FakeOcsp("GOOD")).verify(leaf, [sub_ca.certificate], T0)
    _rejected(RejectReason.REVOKED, _validator(root_ca, pol, ocsp=_FakeOcsp("REVOKED")).verify, leaf,
              [sub_ca.certificate], T0)
    _rejected(RejectReason.REVOCATION_UNKNOWN, _validator(root_ca, pol, ocsp=_FakeOcsp("UNKNOWN")).verify, leaf,
              [sub_ca.certificate], T0)
    down = _FakeOcsp("GOOD", PkiError("responder unreachable"))
    _rejected(RejectReason.REVOCATION_UNKNOWN, _validator(root_ca, pol, ocsp=down).verify, leaf, [sub_ca.certificate], T0)
    # fallback to CRL
    fb = RevocationPolicy(mode=RevocationMode.OCSP, ocsp_fallback_crl=True)
    v = _validator(root_ca, fb, ocsp=down, crl_source=_crl_source(root_ca, sub_ca, at=T0))
    assert v.verify(leaf, [sub_ca.certificate], T0).revocation[0].status is RevocationStatus.GOOD


def test_identity_mismatch(root_ca):
    _, leaf = make_leaf(root_ca)
    v = _validator(root_ca)
    for ident in [(IdType.FQDN, "r2.example.net"), (IdType.IPV4, "192.0.2.2"), (IdType.EMAIL, "x@example.net"),
                  (IdType.DN, "CN=r2,O=espresso"), (IdType.IPV6, "2001:db8::1"), (10, b"\x30\x00"),
                  ("der_asn1_gn", "x"), (IdType.IPV4, "not-an-ip"), (IdType.DN, "no equals sign")]:
        _rejected(RejectReason.IDENTITY_MISMATCH, v.verify, leaf, [], T0, identity=ident)


def test_chain_too_long(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    _rejected(RejectReason.CHAIN_TOO_LONG, _validator(root_ca, policy=ValidationPolicy(max_chain_length=2)).verify,
              leaf, [sub_ca.certificate], T0)
    _rejected(RejectReason.CHAIN_TOO_LONG, _validator(root_ca).verify, leaf, [sub_ca.certificate] * 17, T0)


def test_every_reason_has_a_test():
    import inspect
    import sys

    src = inspect.getsource(sys.modules[__name__])
    for reason in RejectReason:
        assert f"RejectReason.{reason.name}" in src, reason


def test_at_is_required(root_ca):
    _, leaf = make_leaf(root_ca)
    with pytest.raises(ValueError):
        _validator(root_ca).verify(leaf, [], None)


def test_identity_objects_and_keyid(root_ca):
    from dataclasses import dataclass

    @dataclass
    class Identity:  # the shape ike.core_config.Identity has
        kind: str
        value: str

    _, leaf = make_leaf(root_ca)
    v = _validator(root_ca)
    assert v.verify(leaf, [], T0, identity=Identity("fqdn", "r1.example.net")).identity == "DNS:r1.example.net"
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert v.verify(leaf, [], T0, identity=Identity("keyid", ski.hex())).identity.startswith("keyid:")
    _rejected(RejectReason.IDENTITY_MISMATCH, v.verify, leaf, [], T0, identity=Identity("keyid", "00ff"))
    assert v.verify(leaf, [], T0, identity=Identity("dn", "O=espresso, CN=r1")).identity  # strongSwan order


def test_fetched_crls_persist_across_restart(root_ca, sub_ca, tmp_path):
    _, leaf = make_leaf(sub_ca)
    served = {"http://127.0.0.1:1/sub.crl": sub_ca.crl(at=T0), "http://127.0.0.1:1/root.crl": root_ca.crl(at=T0)}
    cache = CrlCache(fetch=lambda url: served[url].public_bytes(serialization.Encoding.DER), directory=tmp_path / "c")
    _validator(root_ca, RevocationPolicy(), crl_source=cache).verify(leaf, [sub_ca.certificate], T0)
    assert cache.fetches == 2

    def down(url):
        raise RevocationUnavailable(f"{url}: unreachable")

    restarted = CrlCache(fetch=down, directory=tmp_path / "c")
    chain = _validator(root_ca, RevocationPolicy(), crl_source=restarted).verify(leaf, [sub_ca.certificate],
                                                                               T0 + timedelta(hours=1))
    assert restarted.fetches == 0 and "cached" in chain.revocation[0].source
    (tmp_path / "c" / "index.json").write_bytes(b"{broken")
    assert CrlCache(fetch=None, directory=tmp_path / "c").export() == []  # damaged cache: start empty


def test_ocsp_factory_per_policy_and_call_alias(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    made = []

    def factory(rp):
        made.append(rp.ocsp_url)
        return _FakeOcsp("GOOD")

    pol = RevocationPolicy(mode=RevocationMode.OCSP, ocsp_url="http://ocsp.example/")
    v = Validator([TrustAnchor(root_ca.certificate, pol)], ocsp_factory=factory)
    assert v(leaf, [sub_ca.certificate], T0).revocation[0].source == "ocsp"
    v.verify(leaf, [sub_ca.certificate], T0)
    assert made == ["http://ocsp.example/"]  # one checker per policy, reused


def test_path_building_is_bounded_against_lookalike_cas(root_ca):
    """16 CA certificates with one name and one key (each verifies as the issuer of every other) and no path to
    the anchor: without a step budget that is 16!/8! orderings; with it, a prompt CHAIN_TOO_LONG/UNTRUSTED."""
    k = _ec()
    loop = [raw_cert("CN=Loop CA", k, "CN=Loop CA", k, ca=True) for _ in range(16)]
    leaf = raw_cert("CN=victim", _ec(), "CN=Loop CA", k, ca=False)
    with pytest.raises(CertificateRejected) as e:
        _validator(root_ca).verify(leaf, loop, T0)
    assert e.value.reason in (RejectReason.CHAIN_TOO_LONG, RejectReason.UNTRUSTED)


def test_name_constraints(root_ca):
    """More cases in test_name_constraints.py; here the reason in the per-reason table."""
    import ipaddress

    sub_key = _ec()
    nc = x509.NameConstraints([x509.DNSName("example.net"), x509.IPAddress(ipaddress.ip_network("192.0.2.0/24"))], None)
    sub = raw_cert("CN=Constrained,O=espresso", sub_key, root_ca.certificate.subject.rfc4514_string(), root_ca.private_key,
                   extra=[(nc, True), (x509.AuthorityKeyIdentifier.from_issuer_public_key(root_ca.certificate.public_key()),
                                       False)])
    ok = raw_cert("CN=r1", _ec(), "CN=Constrained,O=espresso", sub_key, ca=False,
                  extra=[(x509.SubjectAlternativeName([x509.DNSName("r1.example.net")]), False)])
    assert _validator(root_ca).verify(ok, [sub], T0).chain[1] == sub
    bad = raw_cert("CN=r1", _ec(), "CN=Constrained,O=espresso", sub_key, ca=False,
                   extra=[(x509.SubjectAlternativeName([x509.DNSName("r1.example.org")]), False)])
    e = _rejected(RejectReason.NAME_CONSTRAINTS, _validator(root_ca).verify, bad, [sub], T0)
    assert "DNS:r1.example.org is outside the permitted DNS:example.net" in e.detail
