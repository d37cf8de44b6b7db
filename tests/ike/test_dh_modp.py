"""MODP Diffie-Hellman through libcrypto (ike._modp): known answers against Python's pow(), the padding of the
shared secret, refusal of bad peer values, and no use of cryptography's deprecated finite-field DH."""
from __future__ import annotations

import hashlib
import os
import warnings

import pytest

from ike.dh import _MODP, create_dh, public_len
from ike.errors import InvalidSyntaxError

GROUPS = sorted(_MODP)


def _fixed(label: bytes):
    """A random source that always answers with the same bytes (the private value a test controls)."""
    data = hashlib.sha512(label).digest()
    return lambda n: data[:n]


def _exponent(label: bytes) -> int:
    return int.from_bytes(hashlib.sha512(label).digest()[:64], "big") | (1 << 511)


def test_openssl_primes_are_the_rfc3526_ones():
    from ike._modp import group_prime
    from ike.dh import _MODP_NAMES

    assert set(_MODP_NAMES) == set(_MODP)
    for group, name in _MODP_NAMES.items():
        p = _MODP[group]
        assert group_prime(name) == p.to_bytes(public_len(group), "big")


@pytest.mark.parametrize("group", GROUPS)
def test_known_answer_both_directions(group):
    p, n = _MODP[group], public_len(group)
    a, b = create_dh(group, _fixed(b"initiator")), create_dh(group, _fixed(b"responder"))
    xa, xb = _exponent(b"initiator"), _exponent(b"responder")
    assert a.public == pow(2, xa, p).to_bytes(n, "big")
    assert b.public == pow(2, xb, p).to_bytes(n, "big")
    expected = pow(2, xa * xb, p).to_bytes(n, "big")  # Python's pow as the independent oracle
    assert a.shared(b.public) == expected
    assert b.shared(a.public) == expected


@pytest.mark.parametrize("group", GROUPS)
def test_shared_secret_keeps_its_leading_zeros(group):
    """RFC 7296 2.14: g^ir is as long as the prime, zero-padded on the left."""
    p, n = _MODP[group], public_len(group)
    peer = create_dh(group, _fixed(b"peer"))
    y = int.from_bytes(peer.public, "big")
    for i in range(4000):  # about 1 in 256 secrets starts with a zero octet: bounded search, fixed labels
        label = b"zero-%d" % i
        if pow(y, _exponent(label), p) < 1 << (8 * n - 8):
            break
    else:  # pragma: no cover - 4000 misses at 1/256 does not happen
        pytest.fail("no secret with a leading zero octet found")
    secret = create_dh(group, _fixed(label)).shared(peer.public)
    assert len(secret) == n and secret[0] == 0
    assert secret == pow(y, _exponent(label), p).to_bytes(n, "big")


def _bad_values(group: int) -> list[tuple[str, bytes]]:
    p, n = _MODP[group], public_len(group)
    return [
        ("zero", bytes(n)),
        ("one", (1).to_bytes(n, "big")),
        ("p-1", (p - 1).to_bytes(n, "big")),
        ("p", p.to_bytes(n, "big")),
        ("p+1", (p + 1).to_bytes(n, "big")),
        ("all ones", b"\xff" * n),
        ("outside the prime-order subgroup", (p - 4).to_bytes(n, "big")),  # -4 is a non-residue: y^q = p-1
        ("one octet short", (2).to_bytes(n - 1, "big")),
        ("one octet long", (2).to_bytes(n + 1, "big")),
        ("empty", b""),
    ]


@pytest.mark.parametrize("group", GROUPS)
def test_bad_peer_values_are_invalid_syntax(group):
    """RFC 6989 2.2 / RFC 7296 3.4: a public value outside 1 < y < p-1, or of the wrong length, is refused."""
    d = create_dh(group, os.urandom)
    for why, value in _bad_values(group):
        with pytest.raises(InvalidSyntaxError):
            d.shared(value)
        assert why  # the table names each case
    assert d.shared(create_dh(group, os.urandom).public)  # the key still works after refusals


@pytest.mark.parametrize("group", GROUPS)
def test_no_cryptography_deprecation_warning(group):
    from cryptography.utils import CryptographyDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = create_dh(group, os.urandom), create_dh(group, os.urandom)
        assert a.shared(b.public) == b.shared(a.public)
    assert not [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]


def test_dh_module_does_not_import_cryptography_dh():
    import ike.dh

    assert not hasattr(ike.dh, "dh"), "ike.dh still imports cryptography's finite-field DH"


def test_modp_key_misuse_is_value_error():
    from ike._modp import ModpKey

    with pytest.raises(ValueError):
        ModpKey("modp_2048", b"")
    with pytest.raises(ValueError):
        ModpKey("no_such_group", b"\x01")
    with pytest.raises(ValueError):
        ModpKey("modp_2048", b"\xff" * 257)  # not below p
