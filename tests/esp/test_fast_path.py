"""The streamlined tunnel-mode AEAD path must be indistinguishable from the full path.

esp._core sends the common packet (tunnel mode, GCM or ChaCha20-Poly1305, no TFC padding, no limit about to be
reached) through a shorter path and hands everything else to the full one. A TFC padding target of 1 byte
changes no packet (every inner packet is longer) but keeps an outbound SA on the full path, so the two paths can
be run side by side on the same keys and compared byte for byte, verdict for verdict, counter for counter.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from esp import PacketBatch, Sa, SaParams, Verdict, available_backends
from esp.sa import Lifetime, UdpEncap

from .helpers import ipv4, ipv6, keys_for, udp

SUITES = ["aes128gcm16", "aes256gcm16", "chacha20poly1305"]
# Around the size where the payload stops being copied next to its trailer, and every padding length.
SIZES = [0, 1, 2, 3, 4, 5, 100, 226, 227, 228, 229, 230, 231, 232, 233, 1400, 1472]


def _cases():
    for suite in SUITES:
        for backend in available_backends(suite):
            yield suite, backend


def _outbound(suite: str, backend: str, *, full: bool, v6: bool = False, esn: bool = False,
              encap: UdpEncap | None = None, lifetime: Lifetime = Lifetime(), initial_seq: int = 0) -> Sa:
    enc, integ = keys_for(suite, seed=7)
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    p = SaParams(spi=0x2001, direction="out", suite=suite, enc_key=enc, integ_key=integ, mode="tunnel", src=src,
                 dst=dst, esn=esn, encap=encap, lifetime=lifetime, backend=backend, tfc_pad=1 if full else 0)
    return Sa(p, initial_seq=initial_seq)


def _inbound(suite: str, backend: str, *, esn: bool = False, lifetime: Lifetime = Lifetime(),
             window: int = 64, initial_seq: int = 0) -> Sa:
    enc, integ = keys_for(suite, seed=7)
    p = SaParams(spi=0x2001, direction="in", suite=suite, enc_key=enc, integ_key=integ, mode="tunnel", esn=esn,
                 lifetime=lifetime, backend=backend, replay_window=window)
    return Sa(p, initial_seq=initial_seq)


def _packets(v6_mix: bool = True) -> list[bytes]:
    pkts = []
    for i, n in enumerate(SIZES):
        body = bytes((i + k) & 0xFF for k in range(n))
        pkts.append(ipv6(udp(body), tc=0x2E) if v6_mix and i % 3 == 2 else ipv4(udp(body), tos=i, ident=i))
    return pkts


def _run(sa: Sa, pkts: list[bytes], encrypt: bool) -> tuple[list[int], list[bytes]]:
    src = PacketBatch.from_packets(pkts)
    dst = PacketBatch.empty(len(pkts))
    (sa.encrypt_batch if encrypt else sa.decrypt_batch)(src, dst)
    return [int(v) for v in dst.status], dst.packets()


def _state(sa: Sa) -> tuple:
    return dataclasses.astuple(sa.counters), sa.soft_expired, sa.hard_expired, sa.seq


@pytest.mark.parametrize("suite,backend", list(_cases()))
@pytest.mark.parametrize("v6,esn,encap", [(False, False, None), (True, False, None), (False, True, None),
                                          (False, False, UdpEncap()), (True, True, UdpEncap(4500, 4501))])
def test_outbound_bytes_equal_the_full_path(suite: str, backend: str, v6: bool, esn: bool,
                                            encap: UdpEncap | None) -> None:
    fast = _outbound(suite, backend, full=False, v6=v6, esn=esn, encap=encap, initial_seq=2**32 - 3 if esn else 0)
    full = _outbound(suite, backend, full=True, v6=v6, esn=esn, encap=encap, initial_seq=2**32 - 3 if esn else 0)
    pkts = _packets()
    for _ in range(2):  # the second round continues sequence numbers and IP IDs
        assert _run(fast, pkts, True) == _run(full, pkts, True)
        assert _state(fast) == _state(full)
    inb = _inbound(suite, backend, esn=esn, initial_seq=2**32 if esn else 0)
    status, inner = _run(inb, _run(fast, pkts, True)[1], False)
    assert status == [Verdict.OK] * len(pkts) and inner == pkts


@pytest.mark.parametrize("suite,backend", list(_cases()))
def test_outbound_limits_inside_one_batch(suite: str, backend: str) -> None:
    pkts = [ipv4(udp(bytes(52)))] * 9  # 80-byte inner packets
    for lifetime, seq in [(Lifetime(soft_packets=3, hard_packets=5), 0),
                          (Lifetime(soft_bytes=100, hard_bytes=400), 0),
                          (Lifetime(), 2**32 - 4)]:
        fast = _outbound(suite, backend, full=False, lifetime=lifetime, initial_seq=seq)
        full = _outbound(suite, backend, full=True, lifetime=lifetime, initial_seq=seq)
        for chunk in (pkts[:2], pkts[2:3], pkts[3:]):
            assert _run(fast, chunk, True) == _run(full, chunk, True)
            assert _state(fast) == _state(full)
    assert fast.counters.seq_exhausted == 6  # 2**32-3 .. 2**32-1 sent, then refused


def test_soft_lifetime_is_signalled_at_the_packet_that_reaches_it() -> None:
    sa = _outbound("aes128gcm16", available_backends("aes128gcm16")[0], full=False,
                   lifetime=Lifetime(soft_packets=3, hard_packets=5))
    pkt = ipv4(udp(b"x"))
    assert _run(sa, [pkt, pkt], True)[0] == [Verdict.OK] * 2 and not sa.soft_expired
    assert _run(sa, [pkt], True)[0] == [Verdict.OK] and sa.soft_expired and not sa.hard_expired
    assert _run(sa, [pkt] * 3, True)[0] == [Verdict.OK, Verdict.OK, Verdict.EXPIRED]
    assert sa.hard_expired and sa.counters.packets == 5 and sa.counters.expired == 1


@pytest.mark.parametrize("suite,backend", list(_cases()))
def test_inbound_refusals_and_limits_inside_one_batch(suite: str, backend: str) -> None:
    out = _outbound(suite, backend, full=False)
    wires = _run(out, _packets(), True)[1]
    tampered = bytearray(wires[3])
    tampered[-1] ^= 1
    other_spi = bytearray(wires[4])
    other_spi[20:24] = b"\0\0\x99\x99"
    with_options = bytearray(wires[5])
    # An IPv4 outer header with 4 bytes of options (IHL 6): the full path's parser takes it.
    with_options = (bytes([0x46]) + with_options[1:2] + (len(with_options) + 4).to_bytes(2, "big") +
                    with_options[4:20] + b"\x01\x01\x01\x00" + with_options[20:])
    fragment = bytearray(wires[6])
    fragment[6] = 0x20  # more fragments
    batch = [wires[0], wires[1], wires[0], bytes(tampered), bytes(other_spi), bytes(with_options),
             bytes(fragment), wires[7], b"\x45", wires[7], wires[2]]
    inb = _inbound(suite, backend)
    status, inner = _run(inb, batch, False)
    V = Verdict
    assert status == [V.OK, V.OK, V.REPLAYED, V.AUTH_FAILED, V.NO_SA, V.OK, V.UNSUPPORTED, V.OK, V.MALFORMED,
                      V.REPLAYED, V.OK]
    pkts = _packets()
    assert inner[5] == pkts[5] and inner[7] == pkts[7] and inner[10] == pkts[2]
    c = inb.counters
    assert (c.packets, c.replayed, c.auth_failed, c.malformed, c.unsupported) == (5, 2, 1, 1, 1)

    limited = _inbound(suite, backend, lifetime=Lifetime(soft_packets=2, hard_packets=3))
    status, _ = _run(limited, wires[:2], False)
    assert status == [V.OK, V.OK] and limited.soft_expired and not limited.hard_expired
    status, _ = _run(limited, wires[2:5], False)
    assert status == [V.OK, V.EXPIRED, V.EXPIRED] and limited.counters.packets == 3


@pytest.mark.parametrize("suite,backend", list(_cases()))
def test_inbound_udp_encapsulation_and_the_non_esp_marker(suite: str, backend: str) -> None:
    out = _outbound(suite, backend, full=False, encap=UdpEncap())
    wires = _run(out, _packets(v6_mix=False), True)[1]
    ike = bytearray(wires[1])
    ike[28:32] = bytes(4)  # the non-ESP marker: an IKE message on port 4500, not ESP
    inb = _inbound(suite, backend)
    status, inner = _run(inb, [wires[0], bytes(ike), wires[2]], False)
    assert status == [Verdict.OK, Verdict.MALFORMED, Verdict.OK]
    assert inner[0] == _packets(v6_mix=False)[0]
    sel = np.array([0], dtype=np.int32)
    src, dst = PacketBatch.from_packets([wires[3]]), PacketBatch.empty(1)
    assert inb.decrypt_batch(src, dst, sel) == 1


def test_inbound_padding_and_dummy_packets() -> None:
    """Trailers the fast path hands on or refuses, made with an independent AES-GCM (cryptography)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    enc, _ = keys_for("aes128gcm16", seed=7)
    gcm, salt = AESGCM(enc[:16]), enc[16:20]
    inner = ipv4(udp(b"0123456789"))

    def wire(seq: int, trailer: bytes) -> bytes:
        esp_hdr = (0x2001).to_bytes(4, "big") + seq.to_bytes(4, "big")
        iv = seq.to_bytes(8, "big")
        esp = esp_hdr + iv + gcm.encrypt(salt + iv, inner + trailer, esp_hdr)
        return ipv4(esp, proto=50, src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]))

    good = bytes([1, 2, 2, 4])                       # 2 padding bytes, padlen 2, next header 4
    cases = [wire(1, good), wire(2, bytes([1, 3, 2, 4])), wire(3, bytes(range(1, 9)) + bytes([8, 4])),
             wire(4, bytes(range(1, 9)) + bytes([8, 59])), wire(5, bytes([1, 2, 2, 59])),
             wire(6, bytes([1, 2, 3, 3, 4])[:3] + bytes([200, 4]))]
    for backend in available_backends("aes128gcm16"):
        inb = _inbound("aes128gcm16", backend)
        status, inner_out = _run(inb, cases, False)
        V = Verdict
        assert status == [V.OK, V.PAD_ERROR, V.OK, V.DUMMY, V.DUMMY, V.PAD_ERROR], backend
        assert inner_out[0] == inner_out[2] == inner
        c = inb.counters
        assert (c.packets, c.pad_errors, c.dummy) == (2, 2, 2)
