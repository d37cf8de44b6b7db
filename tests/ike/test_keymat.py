"""Key derivation against known answers and RFC 7296's structure."""
from __future__ import annotations

import hmac
import json

import pytest

from ike.keymat import derive_child_keys, derive_ike_keys, prf, prf_plus, rekey_skeyseed, skeyseed
from ike.proposal import parse_proposal
from tests.support import DATA

VECTORS = [v for v in json.loads((DATA / "esp_vectors.json").read_text())["hmac"] if v["suite"].startswith("prf-")]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_prf_hmac_sha2_vectors(v):
    h = {"prf-hmac-sha2-256": "sha256", "prf-hmac-sha2-384": "sha384", "prf-hmac-sha2-512": "sha512"}[v["suite"]]
    out = prf(h, bytes.fromhex(v["key"]), bytes.fromhex(v["data"]))
    assert out.hex()[:len(v["output"])] == v["output"]


def test_prf_plus_structure():
    k, s = b"k" * 32, b"seed"
    t1 = hmac.new(k, s + b"\x01", "sha256").digest()
    t2 = hmac.new(k, t1 + s + b"\x02", "sha256").digest()
    t3 = hmac.new(k, t2 + s + b"\x03", "sha256").digest()
    assert prf_plus("sha256", k, s, 80) == (t1 + t2 + t3)[:80]


def test_ike_and_child_key_layout():
    p = parse_proposal("aes256-sha384-prfsha512-ecp256")
    ni, nr, shared = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    seed = skeyseed("sha512", ni, nr, shared)
    assert seed == hmac.new(ni + nr, shared, "sha512").digest()
    keys = derive_ike_keys(p, seed, ni, nr, 1, 2)
    stream = prf_plus("sha512", seed, ni + nr + (1).to_bytes(8, "big") + (2).to_bytes(8, "big"),
                      64 * 3 + 48 * 2 + 32 * 2)
    assert keys.sk_d == stream[:64] and keys.sk_ai == stream[64:112] and keys.sk_ar == stream[112:160]
    assert keys.sk_ei == stream[160:192] and keys.sk_er == stream[192:224]
    assert keys.sk_pi == stream[224:288] and keys.sk_pr == stream[288:352]
    esp = parse_proposal("aes128gcm16", 3, 1, b"\0" * 4)
    ck = derive_child_keys("sha512", keys.sk_d, esp, ni, nr)
    km = prf_plus("sha512", keys.sk_d, ni + nr, 40)
    assert ck.encr_i == km[:20] and ck.encr_r == km[20:40] and ck.integ_i == b""
    pfs = derive_child_keys("sha512", keys.sk_d, esp, ni, nr, shared)
    assert pfs.encr_i == prf_plus("sha512", keys.sk_d, shared + ni + nr, 20)
    assert rekey_skeyseed("sha512", keys.sk_d, shared, ni, nr) == hmac.new(keys.sk_d, shared + ni + nr,
                                                                           "sha512").digest()
