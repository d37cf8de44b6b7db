"""Validator: intermediates held locally but not trusted, and the per-connection revocation policy
(strongSwan's strict / ifuri / relaxed) on top of each profile's CRL/OCSP source."""
from __future__ import annotations

from datetime import timedelta

import pytest

from pki.errors import CertificateRejected, RejectReason, RevocationUnavailable
from pki.profile import RevocationMode, RevocationPolicy
from pki.revocation import CrlCache, RevocationStatus
from pki.validate import TrustAnchor, ValidationPolicy, Validator
from tests.pki.conftest import T0, make_leaf, raw_cert


def _reason(fn, *args) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as info:
        fn(*args)
    return info.value


def test_local_intermediate_completes_the_path_but_is_no_anchor(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    off = RevocationPolicy(mode=RevocationMode.DISABLE)
    v = Validator([TrustAnchor(root_ca.certificate, off, "lab")], intermediates=[sub_ca.certificate])
    chain = v.verify(leaf, [], T0)  # the peer sent only its leaf
    assert chain.chain == (leaf, sub_ca.certificate, root_ca.certificate)
    assert _reason(Validator([TrustAnchor(root_ca.certificate, off)]).verify, leaf, [], T0).reason \
        is RejectReason.UNTRUSTED
    # held is not trusted: with the root not configured, the intermediate does not end a path
    other = raw_cert("CN=Other Root", make_leaf(sub_ca)[0])
    v = Validator([TrustAnchor(other, off)], intermediates=[sub_ca.certificate])
    assert _reason(v.verify, leaf, [], T0).reason is RejectReason.UNTRUSTED


def test_local_intermediate_revoked_by_the_roots_crl(root_ca, sub_ca):
    _, leaf = make_leaf(sub_ca)
    crls = CrlCache(fetch=None)
    crls.add(sub_ca.crl(at=T0))
    crls.add(root_ca.crl(at=T0))
    anchor = TrustAnchor(root_ca.certificate, RevocationPolicy(), "lab")
    v = Validator([anchor], crl_source=crls, intermediates=[sub_ca.certificate])
    assert [a.status for a in v.verify(leaf, [], T0 + timedelta(minutes=1)).revocation] == [RevocationStatus.GOOD] * 2
    root_ca.revoke(sub_ca.certificate.serial_number, "ca-compromise", at=T0 + timedelta(minutes=2))
    crls.add(root_ca.crl(at=T0 + timedelta(minutes=3)))
    e = _reason(v.verify, leaf, [], T0 + timedelta(minutes=4))
    assert e.reason is RejectReason.REVOKED and "Test Sub" in e.detail


def _unreachable(url: str) -> bytes:
    raise RevocationUnavailable(f"{url}: connection refused")


@pytest.mark.parametrize("policy,situation,outcome", [
    # swanctl.conf(5) remote.revocation: strict fails unless known good; ifuri fails only if a URI is given
    # but no answer came; relaxed fails only when revoked
    ("strict", "crl", "good"), ("ifuri", "crl", "good"), ("relaxed", "crl", "good"),
    ("strict", "dead-uri", RejectReason.REVOCATION_UNKNOWN), ("ifuri", "dead-uri", RejectReason.REVOCATION_UNKNOWN),
    ("relaxed", "dead-uri", "unknown"),
    ("strict", "no-uri", RejectReason.REVOCATION_UNKNOWN), ("ifuri", "no-uri", "unknown"),
    ("relaxed", "no-uri", "unknown"),
    ("strict", "revoked", RejectReason.REVOKED), ("ifuri", "revoked", RejectReason.REVOKED),
    ("relaxed", "revoked", RejectReason.REVOKED),
])
def test_per_connection_revocation_policy(root_ca, sub_ca, policy, situation, outcome):
    root_key = root_ca.private_key
    if situation == "no-uri":  # a leaf without any CRL distribution point, issued by the root
        leaf = raw_cert("CN=r2,O=espresso", make_leaf(sub_ca)[0], "CN=Test Root,O=espresso", root_key, ca=False)
    else:
        _, leaf = make_leaf(sub_ca)
    crls = CrlCache(fetch=_unreachable)
    at = T0 + timedelta(minutes=5)
    if situation in ("crl", "revoked"):
        if situation == "revoked":
            sub_ca.revoke(leaf.serial_number, "key-compromise", at=T0)
        crls.add(sub_ca.crl(at=T0 + timedelta(minutes=1)))
    if situation != "no-uri":  # no URI and no CRL at hand for the root's leaf
        crls.add(root_ca.crl(at=T0 + timedelta(minutes=1)))
    # the profile says "disable": the connection's policy asks for a check all the same
    anchor = TrustAnchor(root_ca.certificate, RevocationPolicy(mode=RevocationMode.DISABLE), "lab")
    v = Validator([anchor], ValidationPolicy(revocation=policy), crl_source=crls, intermediates=[sub_ca.certificate])
    if isinstance(outcome, RejectReason):
        e = _reason(v.verify, leaf, [], at)
        assert e.reason is outcome, e
        if outcome is RejectReason.REVOCATION_UNKNOWN:
            assert policy in e.detail
    else:
        chain = v.verify(leaf, [], at)
        assert chain.revocation[0].status is RevocationStatus(outcome)


def test_policy_value_checked():
    with pytest.raises(ValueError, match="strict, ifuri or relaxed"):
        ValidationPolicy(revocation="yes")
