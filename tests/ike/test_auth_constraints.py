"""swanctl-style authentication constraints: parsing, the signature we make, the ones we refuse, and the
configuration keys (auth, remote_auth, revocation, [pki] intermediates and crls) with their key paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ike.auth_constraints import KeyConstraint, check_chain, check_signature, parse_auth
from ike.authenticators import sign_auth, verify_auth_scheme
from ike.config import ConfigError, parse_config
from ike.constants import AuthMethod, HashAlgorithm
from ike.errors import AuthenticationFailedError
from tests.interop.strongswan import LabPki

H256, H384, H512, IDENT = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512,
                           HashAlgorithm.IDENTITY)
ALL = (H256, H384, H512, IDENT)
_KEYS: dict[str, object] = {}


def key(kind: str):  # a private key, made once per kind
    if kind not in _KEYS:
        _KEYS[kind] = {"rsa": lambda: rsa.generate_private_key(65537, 2048),
                       "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
                       "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
                       "ed25519": ed25519.Ed25519PrivateKey.generate}[kind]()
    return _KEYS[kind]


@pytest.mark.parametrize("text,entries,ike_only", [
    ("pubkey-sha384", (KeyConstraint("pubkey", 0, (H384,)),), False),
    ("ike:rsa/pss-sha384", (KeyConstraint("rsa/pss", 0, (H384,)),), True),
    ("ecdsa-384", (KeyConstraint("ecdsa", 384),), False),
    ("rsa-2048-sha256-ecdsa-256-sha256-sha384",
     (KeyConstraint("rsa", 2048, (H256,)), KeyConstraint("ecdsa", 256, (H256, H384))), False),
    ("ed25519-identity", (KeyConstraint("ed25519", 0, (IDENT,)),), False),
])
def test_parse(text: str, entries: tuple, ike_only: bool) -> None:
    c = parse_auth(text)
    assert c.method == "pubkey" and c.entries == entries and c.ike_only == ike_only and c.text == text


@pytest.mark.parametrize("text", ["pubkey", "psk"])
def test_plain_methods_constrain_nothing(text: str) -> None:
    c = parse_auth(text)
    assert c.method == text and not c.constrains


@pytest.mark.parametrize("text,why", [
    ("eap-tls", "unknown key type or hash 'eap'"), ("rsa-sha3", "unknown"), ("sha256", "must follow a key type"),
    ("3072", "must follow a key type"), ("pubkey-2048", "must follow a key type"), ("rsa-0", "out of range"),
    ("ed25519-sha256", "identity hash only"), ("", "expected pubkey"), ("-".join(["rsa"] * 40), "expected"),
])
def test_parse_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_auth(text)


@pytest.mark.parametrize("kind,auth,peer,name", [
    ("rsa", "rsa/pss-sha384", ALL, "signature(rsa-pss-sha2_384)"),
    ("rsa", "pubkey-sha512-sha256", (H256, H512), "signature(rsa-pkcs1-sha2_512)"),
    ("rsa", "pubkey-sha512-sha256", (H256,), "signature(rsa-pkcs1-sha2_256)"),
    ("rsa", "rsa-sha1", None, "rsa"),  # no RFC 7427 from the peer: method 1 fits "rsa with SHA-1"
    ("p384", "ecdsa", ALL, "signature(ecdsa-sha2_384)"),  # no hash stated: one as strong as the key first
    ("p384", "ecdsa-384-sha384", None, "ecdsa"),  # classic method 10 is ECDSA P-384 with SHA-384
    ("ed25519", "pubkey", ALL, "signature(ed25519-identity)"),
])
def test_local_constraint_chooses_the_signature(kind: str, auth: str, peer: tuple | None, name: str) -> None:
    k = key(kind)
    octets = os.urandom(64)
    method, data = sign_auth(k, octets, peer, False, parse_auth(auth))
    got, scheme, _ = verify_auth_scheme(method, data, k.public_key(), octets)
    assert got == name
    if scheme == "rsa-pss":  # RFC 8247: salt length = hash length
        from ike.authenticators import _parse_alg_id
        assert _parse_alg_id(data)[3] == 48


@pytest.mark.parametrize("kind,auth,peer", [
    ("rsa", "rsa/pss-sha384", (H256, H512)),  # the peer does not announce SHA-384
    ("rsa", "rsa/pss-sha256", None),  # PSS needs RFC 7427
    ("p256", "ecdsa-sha384", None),  # classic P-256 is SHA-256
])
def test_local_constraint_unmet_is_an_error_not_a_weaker_signature(kind: str, auth: str, peer: tuple | None) -> None:
    with pytest.raises(AuthenticationFailedError, match=f"constraint auth = {auth}"):
        sign_auth(key(kind), b"x" * 32, peer, False, parse_auth(auth))


@pytest.mark.parametrize("remote,kind,auth,ok", [
    ("rsa/pss-sha384", "rsa", "rsa/pss-sha384", True),
    ("rsa/pss-sha384", "rsa", "pubkey-sha384", False),  # PKCS#1 v1.5 with SHA-384
    ("rsa/pss-sha384", "rsa", "rsa/pss-sha256", False),
    ("pubkey-sha384", "p384", "ecdsa-sha384", True),
    ("pubkey-sha384", "p256", "ecdsa-sha256", False),
    ("ecdsa-384", "p384", "ecdsa", True),
    ("ecdsa-384", "p256", "ecdsa", False),  # key too small
    ("ecdsa-384", "rsa", "pubkey", False),  # wrong key type
    ("rsa-3072", "rsa", "pubkey", False),  # 2048 bits
    ("rsa-2048", "rsa", "rsa/pss-sha256", True),  # espresso: rsa accepts PSS too
    ("ed25519", "ed25519", "pubkey", True),
])
def test_remote_constraint(remote: str, kind: str, auth: str, ok: bool) -> None:
    k = key(kind)
    octets = os.urandom(64)
    method, data = sign_auth(k, octets, ALL, False, parse_auth(auth))
    _, scheme, h = verify_auth_scheme(method, data, k.public_key(), octets)
    if ok:
        check_signature(parse_auth(remote), scheme, h, k.public_key())
    else:
        with pytest.raises(AuthenticationFailedError, match=f"constraint remote_auth = {remote} failed"):
            check_signature(parse_auth(remote), scheme, h, k.public_key())


def test_chain_constraints_apply_without_the_ike_prefix() -> None:
    pki = LabPki("ecdsa")  # P-256 CA, certificates signed with SHA-256
    leaf = pki.issue("x", "x.test", "ecdsa384")
    chain = [leaf.cert, pki.ca.cert]
    check_chain(parse_auth("ike:ecdsa-384"), chain)  # only the IKE signature is constrained
    with pytest.raises(AuthenticationFailedError, match="ecdsa-256 key of .*CN=espresso test CA"):
        check_chain(parse_auth("ecdsa-384"), chain)
    with pytest.raises(AuthenticationFailedError, match="signed with ecdsa-sha256"):
        check_chain(parse_auth("pubkey-sha384"), chain)
    check_chain(parse_auth("ecdsa-256-sha256"), chain)


# -- configuration keys ------------------------------------------------------------------------------------

BASE = """
[ca-profiles.corp]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.gw]
cert = "gw.pem"
key = "gw.key"

[pki]
{pki}

[peers.branch]
local_addr = "192.0.2.1"
remote_addr = "192.0.2.2"
{peer}

[peers.branch.children.lan]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.2.0.0/16"]
"""


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("authcfg")
    pki = LabPki("rsa")
    sub = pki.intermediate("sub CA")
    gw = pki.issue("gw", "gw.test")
    (d / "ca.pem").write_bytes(pki.ca.cert_pem())
    (d / "sub.pem").write_bytes(sub.ca.cert_pem())
    (d / "gw.pem").write_bytes(gw.cert_pem())
    gw.write_key(d / "gw.key")
    (d / "root.crl").write_bytes(pki.crl([sub.ca.cert]).public_bytes(serialization.Encoding.PEM))
    (d / "junk.crl").write_bytes(b"not a CRL")
    return d


def test_config_keys(conf_dir: Path) -> None:
    cfg = parse_config(BASE.format(
        pki='intermediates = ["sub.pem"]\ncrls = ["root.crl"]',
        peer='auth = "rsa/pss-sha384"\nremote_auth = "ecdsa-384"\nrevocation = "strict"'), base=conf_dir)
    (peer,) = cfg.core.peers
    assert peer.auth == peer.remote_auth == "pubkey"
    assert peer.auth_constraints.text == "rsa/pss-sha384"
    assert peer.remote_auth_constraints.entries == (KeyConstraint("ecdsa", 384),)
    v = peer.validator.validator  # type: ignore[union-attr]
    assert v.policy.revocation == "strict"
    assert [c.subject.rfc4514_string() for c in v.intermediates] == ["CN=sub CA rsa,O=espresso interop"]
    assert len(peer.ca_certs) == 1  # CERTREQ names the anchor, not the intermediate
    plain = parse_config(BASE.format(pki="", peer=""), base=conf_dir).core.peers[0]
    assert plain.auth_constraints is None and plain.remote_auth_constraints is None
    assert plain.validator.validator.policy.revocation is None  # type: ignore[union-attr]


@pytest.mark.parametrize("pki,peer,message", [
    ("", 'auth = "rsa/pss-sha3"', "peers.branch.auth: unknown key type or hash 'sha3'"),
    ("", 'remote_auth = "ecdsa-384x"', "peers.branch.remote_auth: unknown key type or hash '384x'"),
    ("", 'remote_auth = 384', "peers.branch.remote_auth: expected a string"),
    ("", 'auth = "ecdsa-sha384"', "peers.branch.auth: no entry of 'ecdsa-sha384' signs with a rsa key"),
    ("", 'revocation = "paranoid"', "peers.branch.revocation: expected one of 'strict', 'ifuri', 'relaxed'"),
    ('intermediates = ["gw.pem"]', "", r"pki.intermediates\[0\]: CN=gw.test.* is not a CA certificate"),
    ('intermediates = ["nope.pem"]', "", r"pki.intermediates\[0\]: .*does not exist"),
    ('crls = ["root.crl", "junk.crl"]', "", r"pki.crls\[1\]: "),
    ('crls = 7', "", "pki.crls: expected a string or a list of strings"),
])
def test_config_bad_values_refused_with_key_path(conf_dir: Path, pki: str, peer: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE.format(pki=pki, peer=peer), base=conf_dir)


def test_psk_auth_still_reads(conf_dir: Path) -> None:
    text = BASE.format(pki="", peer='auth = "psk"\npsk = "0123456789abcdef"').replace(
        '[certificates.gw]\ncert = "gw.pem"\nkey = "gw.key"\n', "")
    (peer,) = parse_config(text, base=conf_dir).core.peers
    assert peer.auth == peer.remote_auth == "psk" and peer.auth_constraints is None
    with pytest.raises(ConfigError, match="peers.branch.revocation: applies to certificates"):
        parse_config(text.replace('auth = "psk"', 'auth = "psk"\nrevocation = "strict"'), base=conf_dir)
    assert AuthMethod.PSK == 2


# -- the protocol core, two endpoints in memory ------------------------------------------------------------


def _establish(i, r):  # type: ignore[no-untyped-def]
    from tests.ike.helpers import drain, pair, roundtrip

    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    return drain(a), drain(b)


def _of(events, cls):  # type: ignore[no-untyped-def]
    return [e for e in events if isinstance(e, cls)]


def test_core_signs_and_requires_pss_sha384() -> None:
    from dataclasses import replace

    from ike.events import ChildSaEstablished, IkeSaEstablished
    from tests.ike.helpers import cert_peers

    i, r, _ = cert_peers("rsa", "rsa")
    pss = parse_auth("rsa/pss-sha384")
    want = parse_auth("ike:rsa/pss-sha384")
    i = replace(i, auth_constraints=pss, remote_auth_constraints=want)
    r = replace(r, auth_constraints=pss, remote_auth_constraints=want)
    ea, eb = _establish(i, r)
    assert _of(ea, IkeSaEstablished)[0].auth_method == "signature(rsa-pss-sha2_384)"
    assert _of(eb, IkeSaEstablished)[0].auth_method == "signature(rsa-pss-sha2_384)"
    assert _of(ea, ChildSaEstablished) and _of(eb, ChildSaEstablished)


@pytest.mark.parametrize("side", ["responder", "initiator"])
def test_core_refuses_a_peer_below_the_constraint(side: str, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from ike.events import AuthenticationFailed, IkeSaEstablished, IkeSaTerminated
    from tests.ike.helpers import cert_peers

    i, r, _ = cert_peers("ecdsa", "ecdsa")  # P-256 both
    want = parse_auth("ecdsa-384")
    if side == "responder":
        r = replace(r, remote_auth_constraints=want)
    else:
        i = replace(i, remote_auth_constraints=want)
    with caplog.at_level("WARNING", logger="ike.auth"):
        ea, eb = _establish(i, r)
    judge = eb if side == "responder" else ea
    (failed,) = _of(judge, AuthenticationFailed)
    assert failed.local_side and "constraint remote_auth = ecdsa-384 failed: peer key is ecdsa-256" in failed.reason
    assert not _of(judge, IkeSaEstablished)
    if side == "responder":
        assert _of(ea, IkeSaTerminated)[0].notify == 24  # AUTHENTICATION_FAILED
    assert any("constraint remote_auth = ecdsa-384 failed" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_core_local_constraint_the_peer_cannot_take_ends_the_attempt(side: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The peer announces no RFC 7427 hashes: our ``rsa/pss-sha384`` cannot be signed, so no IKE_AUTH goes out
    with a weaker signature, and the attempt ends with an event on our side (an initiator's IKE_SA used to
    stay CONNECTING with nothing to send, its operator waiting for a timeout)."""
    from dataclasses import replace

    from ike.events import IkeSaEstablished, IkeSaTerminated
    from tests.ike.helpers import cert_peers

    i, r, _ = cert_peers("rsa", "rsa")
    if side == "initiator":
        i = replace(i, auth_constraints=parse_auth("rsa/pss-sha384"))
        r = replace(r, signature_auth=False)
    else:
        r = replace(r, auth_constraints=parse_auth("rsa/pss-sha384"))
        i = replace(i, signature_auth=False)
    with caplog.at_level("WARNING", logger="ike.auth"):
        ea, eb = _establish(i, r)
    assert not _of(ea, IkeSaEstablished) and not _of(eb, IkeSaEstablished)
    assert any("constraint auth = rsa/pss-sha384 cannot be met" in rec.getMessage() for rec in caplog.records)
    mine, theirs = (ea, eb) if side == "initiator" else (eb, ea)
    (ended,) = _of(mine, IkeSaTerminated)
    assert "constraint auth = rsa/pss-sha384 cannot be met" in ended.reason
    if side == "responder":  # the initiator hears AUTHENTICATION_FAILED
        assert _of(theirs, IkeSaTerminated)[0].notify == 24
