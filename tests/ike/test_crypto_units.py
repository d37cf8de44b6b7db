"""protect (SK seal/open), authenticators (every AUTH method), dh (every group), natd hashes."""
from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ike.authenticators import key_hash, psk_auth, sign_auth, signed_octets, verify_auth
from ike.constants import AuthMethod, HashAlgorithm
from ike.dh import create_dh, public_len
from ike.errors import AuthenticationFailedError, IntegrityError, InvalidSyntaxError
from ike.keymat import prf
from ike.message import Header, push_header
from ike.proposal import parse_proposal
from ike.protect import Protector, sk_generic_header
from ike.tasks.natd import natd_hash

from .helpers import CaForTests


def _pair(text):  # type: ignore[no-untyped-def]
    p = parse_proposal(text)
    e = {"aes128gcm16": 20, "aes256gcm16": 36, "chacha20poly1305": 36, "aes128": 16, "aes256": 32}[text.split("-")[0]]
    a = 0 if "gcm" in text or "chacha" in text else {"sha256": 32, "sha384": 48, "sha512": 64}[text.split("-")[1]]
    keys = [os.urandom(e), os.urandom(e), os.urandom(a), os.urandom(a)]
    i = Protector.from_proposal(p, True, keys[0], keys[1], keys[2], keys[3], os.urandom)
    r = Protector.from_proposal(p, False, keys[0], keys[1], keys[2], keys[3], os.urandom)
    return i, r


def _seal(prot, plain):  # type: ignore[no-untyped-def]
    hdr = lambda n: push_header(Header(1, 2, 46, 37, 8, 5, 28 + n))  # noqa: E731
    return prot.seal(hdr, lambda n: sk_generic_header(41, n), plain)


@pytest.mark.parametrize("suite", ["aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-ecp384",
                                   "chacha20poly1305-prfsha256-ecp256", "aes128-sha256-ecp256",
                                   "aes256-sha512-modp2048", "aes256-sha384-ecp256"])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 300])
def test_sk_round_trip_and_tamper(suite, size):
    i, r = _pair(suite)
    plain = os.urandom(size)
    msg = _seal(i, plain)
    assert r.open(msg, 32) == plain
    assert len(msg) - 32 <= size + i.overhead
    with pytest.raises(IntegrityError):
        i.open(msg, 32)  # wrong direction keys
    for pos in (0, 20, 30, 33, len(msg) - 1):  # header (AAD/ICV-covered), SK header, IV, ICV
        bad = bytearray(msg)
        bad[pos] ^= 0x80
        with pytest.raises(IntegrityError):
            r.open(bytes(bad), 32)


def test_psk_auth_structure():
    octets = signed_octets(b"msg", b"nonce", "sha256", b"skp", b"\x02\x00\x00\x00id")
    assert octets == b"msg" + b"nonce" + prf("sha256", b"skp", b"\x02\x00\x00\x00id")
    assert psk_auth("sha256", b"k", octets) == prf("sha256", prf("sha256", b"k", b"Key Pad for IKEv2"), octets)


KEYS = {
    "rsa": lambda: rsa.generate_private_key(65537, 2048),
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}
ALL = (2, 3, 4, 5)


@pytest.mark.parametrize("kind,hashes_,pss,method,name", [
    ("rsa", None, False, AuthMethod.RSA_SIG, "rsa"),
    ("p256", None, False, AuthMethod.ECDSA_SHA256_P256, "ecdsa"),
    ("p384", None, False, AuthMethod.ECDSA_SHA384_P384, "ecdsa"),
    ("p521", None, False, AuthMethod.ECDSA_SHA512_P521, "ecdsa"),
    ("rsa", ALL, False, 14, "signature(rsa-pkcs1-sha2_256)"),
    ("rsa", (4,), False, 14, "signature(rsa-pkcs1-sha2_512)"),
    ("rsa", ALL, True, 14, "signature(rsa-pss-sha2_256)"),
    ("p384", ALL, False, 14, "signature(ecdsa-sha2_384)"),
    ("ed25519", ALL, False, 14, "signature(ed25519-identity)"),
])
def test_signature_methods(kind, hashes_, pss, method, name):
    key = KEYS[kind]()
    octets = os.urandom(100)
    m, data = sign_auth(key, octets, hashes_, pss)
    assert m == method
    assert verify_auth(m, data, key.public_key(), octets) == name
    with pytest.raises(AuthenticationFailedError):
        verify_auth(m, data, key.public_key(), octets + b"x")
    with pytest.raises(AuthenticationFailedError):
        verify_auth(m, data[:-3], key.public_key(), octets)
    other = KEYS["p256"]() if kind != "p256" else KEYS["rsa"]()
    with pytest.raises(AuthenticationFailedError):
        verify_auth(m, data, other.public_key(), octets)


def test_rfc7427_algorithm_identifier_bytes():
    key = KEYS["p256"]()
    m, data = sign_auth(key, b"x", (HashAlgorithm.SHA2_256,))
    assert data[:13] == bytes.fromhex("0c" "300a06082a8648ce3d040302")  # RFC 7427 A.3.1 ecdsa-with-sha256
    key = KEYS["rsa"]()
    m, data = sign_auth(key, b"x", (HashAlgorithm.SHA2_256,))
    assert data[:16] == bytes.fromhex("0f" "300d06092a864886f70d01010b0500")  # A.1.2 sha256WithRSAEncryption


def test_ed25519_needs_identity_hash():
    with pytest.raises(AuthenticationFailedError):
        sign_auth(KEYS["ed25519"](), b"x", (2,))


def test_certreq_key_hash_is_sha1_of_spki():
    ca = CaForTests.create()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = ca.cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert key_hash(ca.cert) == hashlib.sha1(spki).digest()


@pytest.mark.parametrize("group", [14, 15, 19, 20, 21, 31])
def test_dh_groups_agree(group):
    a, b = create_dh(group, os.urandom), create_dh(group, os.urandom)
    assert len(a.public) == public_len(group)
    assert a.shared(b.public) == b.shared(a.public)
    with pytest.raises(InvalidSyntaxError):
        a.shared(b.public[:-1])


def test_dh_rejects_bad_points():
    m = create_dh(14, os.urandom)
    for bad in (bytes(256), b"\xff" * 256, (1).to_bytes(256, "big")):
        with pytest.raises(InvalidSyntaxError):
            m.shared(bad)
    e = create_dh(19, os.urandom)
    with pytest.raises(InvalidSyntaxError):
        e.shared(b"\x01" * 64)  # not on the curve


def test_modp_primes_are_rfc3526():
    from ike.dh import _MODP

    for group, bits in ((14, 2048), (15, 3072)):
        p = _MODP[group]
        assert p.bit_length() == bits and p >> (bits - 64) == 2 ** 64 - 1 and p & (2 ** 64 - 1) == 2 ** 64 - 1
        assert pow(2, p - 1, p) == 1  # Fermat check (p is prime)


def test_natd_hash():
    h = natd_hash(1, 2, ("192.0.2.1", 500))
    assert h == hashlib.sha1((1).to_bytes(8, "big") + (2).to_bytes(8, "big") + bytes([192, 0, 2, 1])
                             + (500).to_bytes(2, "big")).digest()


@pytest.mark.parametrize("group", [14, 15])
def test_modp_public_value_from_injected_exponent(group):
    from ike.dh import _MODP

    fixed = hashlib.sha512(b"exponent").digest()
    d = create_dh(group, lambda n: fixed[:n])
    x = int.from_bytes(fixed[:64], "big") | (1 << 511)
    p = _MODP[group]
    assert d.public == pow(2, x, p).to_bytes((p.bit_length() + 7) // 8, "big")  # Python's pow as the oracle
    peer = create_dh(group, os.urandom)
    assert d.shared(peer.public) == pow(int.from_bytes(peer.public, "big"), x, p).to_bytes(len(d.public), "big")
