"""Random and mutated input into the inbound path: verdicts only, never a crash or an exception.

This module is also what .ci/valgrind-core runs under valgrind memcheck to show there are no invalid reads.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp import PacketBatch, Verdict
from esp.sa import UdpEncap

from .helpers import ipv4, ipv6, sa_pair, udp

SUITES = ["aes128gcm16", "chacha20poly1305", "aes128-sha256", "aes128ctr-sha1", "aes128ccm8", "aes128gmac",
          "null-sha256"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite=st.sampled_from(SUITES), blobs=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
       encap=st.booleans(), slot=st.sampled_from([16, 64, 2048]))
def test_random_bytes_get_verdicts(suite: str, blobs: list[bytes], encap: bool, slot: int) -> None:
    _, inb = sa_pair(suite, encap=UdpEncap() if encap else None)
    src = PacketBatch.from_packets(blobs)
    dst = PacketBatch.empty(len(blobs), slot_size=slot)
    assert inb.decrypt_batch(src, dst) == 0
    assert all(v != Verdict.OK for v in dst.status)


def _esp_in_ip(esp: bytes, v6: bool) -> bytes:
    return ipv6(esp, nh=50) if v6 else ipv4(esp, proto=50)


@settings(max_examples=200, deadline=None)
@given(suite=st.sampled_from(SUITES), v6=st.booleans(), cut=st.integers(0, 80), data=st.data())
def test_truncated_and_lying_packets(suite: str, v6: bool, cut: int, data) -> None:
    out, inb = sa_pair(suite, v6=v6)
    wire = out.encrypt(ipv6(udp(b"x" * 40)) if v6 else ipv4(udp(b"x" * 40)))
    hl = 40 if v6 else 20
    esp = wire[hl:]
    variants = [wire[: max(0, len(wire) - cut)], _esp_in_ip(esp[: max(0, len(esp) - cut)], v6)]
    # a header that claims more (or less) than there is
    lie = bytearray(wire)
    field = 4 if v6 else 2
    struct.pack_into("!H", lie, field, data.draw(st.integers(0, 0xFFFF)))
    variants.append(bytes(lie))
    src = PacketBatch.from_packets(variants)
    dst = PacketBatch.empty(len(variants), slot_size=data.draw(st.sampled_from([8, 100, 2048])))
    inb.decrypt_batch(src, dst)
    for i, v in enumerate(dst.status):
        if v == Verdict.OK:
            assert dst.lengths[i] <= dst.capacity[i]


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(min_size=8, max_size=400), suite=st.sampled_from(SUITES))
def test_raw_open_random(blob: bytes, suite: str) -> None:
    from esp import Sa
    _, inb = sa_pair(suite, mode="transport")
    raw = Sa(inb.params, framing="raw")
    verdict, payload, _ = raw._ctx.open(blob)
    assert verdict != Verdict.OK or payload is not None
