"""MODP Diffie-Hellman through libcrypto (ike._modp): known answers against Python's pow(), the padding of the
shared secret, refusal of bad peer values, and no use of cryptography's deprecated finite-field DH."""
from __future__ import annotations

import hashlib
import os
import warnings

import pytest

from ike.dh import _MODP, _MODP_EXPONENT, _MODP_NAMES, create_dh, public_len
from ike.errors import InvalidSyntaxError

GROUPS = sorted(_MODP)


def _fixed(label: bytes):
    """A random source that always answers with the same bytes (the private value a test controls)."""
    return lambda n: hashlib.shake_256(label).digest(n)


def _exponent(label: bytes, group: int) -> int:
    n = _MODP_EXPONENT[group]
    return int.from_bytes(hashlib.shake_256(label).digest(n), "big") | (1 << (8 * n - 1))


def _pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula in integers (64 guard bits)."""
    one = 1 << (bits + 64)

    def atan_inv(x: int) -> int:
        total, term, k, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // k)
            term //= x * x
            k += 2
            sign = -sign
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


#: RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k), with k given for each group.
RFC3526_K = {14: (2048, 124476), 15: (3072, 1690314), 16: (4096, 240904), 18: (8192, 4743158)}


def test_openssl_primes_are_the_rfc3526_ones():
    """The primes libcrypto holds (which ike.dh uses) are RFC 3526's, rebuilt here from the RFC's own formula."""
    from ike._modp import group_prime

    assert set(_MODP_NAMES) == set(RFC3526_K) == {14, 15, 16, 18}
    for group, (n, k) in RFC3526_K.items():
        p = 2 ** n - 2 ** (n - 64) - 1 + 2 ** 64 * (_pi_fixed(n - 130) + k)
        assert group_prime(_MODP_NAMES[group]) == p.to_bytes(n // 8, "big"), group
        assert _MODP[group] == p and public_len(group) == n // 8


def test_proposal_tokens_name_all_four_groups():
    from ike.proposal import parse_proposal

    for token, group in [("modp2048", 14), ("modp3072", 15), ("modp4096", 16), ("modp8192", 18)]:
        assert group in {t.id for t in parse_proposal(f"aes256-sha256-{token}").transforms}


@pytest.mark.parametrize("group", GROUPS)
def test_known_answer_both_directions(group):
    p, n = _MODP[group], public_len(group)
    a, b = create_dh(group, _fixed(b"initiator")), create_dh(group, _fixed(b"responder"))
    xa, xb = _exponent(b"initiator", group), _exponent(b"responder", group)
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
    # about 1 in 256 secrets starts with a zero octet: a bounded search over fixed labels, started at the first
    # hit a search from 0 found (8192-bit pow() is slow; the search still runs if the exponents ever change)
    first = {14: 866, 15: 185, 16: 121, 18: 619}[group]
    for i in range(first, first + 4000):
        label = b"zero-%d" % i
        if pow(y, _exponent(label, group), p) < 1 << (8 * n - 8):
            break
    else:  # pragma: no cover - 4000 misses at 1/256 does not happen
        pytest.fail("no secret with a leading zero octet found")
    secret = create_dh(group, _fixed(label)).shared(peer.public)
    assert len(secret) == n and secret[0] == 0
    assert secret == pow(y, _exponent(label, group), p).to_bytes(n, "big")


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
