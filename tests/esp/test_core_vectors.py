"""Known-answer vectors (tests/data/esp_vectors.json): decrypt and byte-exact encrypt on every backend."""
from __future__ import annotations

import json

import pytest

from esp import Sa, SaParams, available_backends
from esp.errors import AuthenticationFailed
from tests.support import DATA

VECTORS = json.loads((DATA / "esp_vectors.json").read_text())["esp"]


def suite_of(e: dict) -> str:
    bits, enc = e["enc_key_bits"], e["enc"]
    if enc == "aes-gcm-16":
        return f"aes{bits}gcm16"
    if enc == "aes-gmac":
        return f"aes{bits}gmac"
    if enc == "aes-ccm-8":
        return f"aes{bits}ccm8"
    if enc == "chacha20-poly1305":
        return "chacha20poly1305"
    assert enc == "aes-cbc"
    integ = {None: "none", "hmac-sha-256-128": "sha256"}[e["integ"]]
    return f"aes{bits}-{integ}"


CASES = [(e, backend) for e in VECTORS for backend in available_backends(suite_of(e))]


def make(e: dict, direction: str, backend: str) -> Sa:
    h = bytes.fromhex
    full = ((e["esn_high"] or 0) << 32) | e["seq"]
    params = SaParams(spi=int(e["spi"], 16), direction=direction, suite=suite_of(e), enc_key=h(e["key"]) + h(e["salt"]),
                      integ_key=h(e["auth_key"]), esn=e["esn_high"] is not None, mode="transport", backend=backend)
    return Sa(params, initial_seq=full - 1, framing="raw")


@pytest.mark.parametrize("e,backend", CASES, ids=[f"{e['name']}-{b}" for e, b in CASES])
def test_decrypt_vector(e: dict, backend: str) -> None:
    payload, nh = make(e, "in", backend).open(bytes.fromhex(e["esp_packet"]))
    assert payload == bytes.fromhex(e["plaintext_payload"])
    assert nh == e["next_header"]


@pytest.mark.parametrize("e,backend", CASES, ids=[f"{e['name']}-{b}" for e, b in CASES])
def test_encrypt_vector(e: dict, backend: str) -> None:
    assert e["minimal_padding"]
    sa = make(e, "out", backend)
    sa.set_next_iv(bytes.fromhex(e["iv"]))
    assert sa.seal(bytes.fromhex(e["plaintext_payload"]), e["next_header"]) == bytes.fromhex(e["esp_packet"])


@pytest.mark.parametrize("e,backend", [(e, b) for e, b in CASES if e["icv_len"]],
                         ids=[f"{e['name']}-{b}" for e, b in CASES if e["icv_len"]])
def test_vector_with_flipped_icv_bit_is_refused(e: dict, backend: str) -> None:
    pkt = bytearray.fromhex(e["esp_packet"])
    pkt[-1] ^= 0x01
    sa = make(e, "in", backend)
    with pytest.raises(AuthenticationFailed):
        sa.open(bytes(pkt))
    assert sa.counters.auth_failed == 1


def test_every_vector_suite_is_covered() -> None:
    assert {suite_of(e) for e in VECTORS} == {"aes128gcm16", "aes256gcm16", "aes128-none", "aes128-sha256",
                                               "chacha20poly1305", "aes128gmac", "aes128ccm8"}
