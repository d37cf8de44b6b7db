"""The batch API: slots, verdicts, selection, bad geometry, and threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from esp import PacketBatch, Verdict
from esp.sa import UdpEncap

from .helpers import ipv4, ipv6, sa_pair, udp


def test_batch_round_trip_mixed_sizes_and_families() -> None:
    out, inb = sa_pair("aes128gcm16")
    pkts = [ipv4(udp(bytes(n))) if n % 2 else ipv6(udp(bytes(n))) for n in range(0, 1400, 37)]
    src = PacketBatch.from_packets(pkts)
    mid = PacketBatch.empty(len(src))
    assert out.encrypt_batch(src, mid) == len(pkts)
    assert (mid.status == Verdict.OK).all()
    back = PacketBatch.empty(len(src))
    assert inb.decrypt_batch(mid, back) == len(pkts)
    assert back.packets() == pkts


def test_batch_agrees_with_single_packet_api() -> None:
    out1, in1 = sa_pair("aes256-sha512")
    pkts = [ipv4(udp(bytes([i]) * i)) for i in range(50)]
    src = PacketBatch.from_packets(pkts)
    dst = PacketBatch.empty(len(pkts))
    out1.encrypt_batch(src, dst)
    singles = [in1.decrypt(w) for w in dst.packets()]
    assert singles == pkts


def test_bad_packets_get_verdicts_and_do_not_stop_the_batch() -> None:
    out, inb = sa_pair("aes128gcm16")
    good = [out.encrypt(ipv4(udp(bytes([i]) * 20))) for i in range(6)]
    tampered = bytearray(good[1])
    tampered[-3] ^= 1
    batch = [good[0], bytes(tampered), b"\x45", good[2], good[2], ipv4(b"\0" * 30, proto=6), good[3]]
    src = PacketBatch.from_packets(batch)
    dst = PacketBatch.empty(len(batch))
    assert inb.decrypt_batch(src, dst) == 3
    assert [Verdict(v).name for v in dst.status] == [
        "OK", "AUTH_FAILED", "MALFORMED", "OK", "REPLAYED", "MALFORMED", "OK"]
    c = inb.counters
    assert (c.auth_failed, c.replayed, c.malformed, c.packets) == (1, 1, 2, 3)


def test_lying_geometry_is_malformed_not_a_crash() -> None:
    out, inb = sa_pair("aes128gcm16")
    src = PacketBatch.from_packets([ipv4(b"a" * 40)] * 4)
    src.offsets[1] = len(src.buf) - 5          # runs past the arena
    src.lengths[2] = -7                         # negative length
    src.offsets[3] = -1
    dst = PacketBatch.empty(4)
    assert out.encrypt_batch(src, dst) == 1
    assert list(dst.status) == [Verdict.OK, Verdict.MALFORMED, Verdict.MALFORMED, Verdict.MALFORMED]
    dst.lengths[0] = 10_000_000                 # an input slot claims bytes it does not have
    back = PacketBatch.empty(4)
    assert inb.decrypt_batch(dst, back) == 0
    assert back.status[0] == Verdict.MALFORMED
    back.capacity[1] = 10_000_000               # an output slot claims room it does not have
    dst.lengths[0] = 60
    assert inb.decrypt_batch(dst, back, select=np.array([1], dtype=np.int32)) == 0


def test_output_too_small_is_no_space() -> None:
    out, _ = sa_pair("aes128gcm16")
    src = PacketBatch.from_packets([ipv4(bytes(100)), ipv4(bytes(10))])
    dst = PacketBatch.empty(2, slot_size=100)
    out.encrypt_batch(src, dst)
    assert list(dst.status) == [Verdict.NO_SPACE, Verdict.OK]
    assert out.counters.no_space == 1


def test_select_processes_only_chosen_slots() -> None:
    out, inb = sa_pair("chacha20poly1305", encap=UdpEncap())
    pkts = [ipv4(udp(bytes([i]) * 9)) for i in range(8)]
    src = PacketBatch.from_packets(pkts)
    dst = PacketBatch.empty(8)
    dst.status[:] = 255
    assert out.encrypt_batch(src, dst, select=np.array([1, 3, 5], dtype=np.int32)) == 3
    assert [int(s) for s in dst.status] == [255, 0, 255, 0, 255, 0, 255, 255]
    assert out.seq == 3
    with pytest.raises(ValueError):
        out.encrypt_batch(src, PacketBatch.empty(2))


def test_threads_sharing_one_sa_never_duplicate_sequence_numbers() -> None:
    out, inb = sa_pair("aes128gcm16", window=1024)
    src = PacketBatch.from_packets([ipv4(udp(b"t" * 64))] * 256)
    results: list[PacketBatch] = []

    def work() -> None:
        for _ in range(20):
            dst = PacketBatch.empty(256)
            out.encrypt_batch(src, dst)
            results.append(dst)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    seqs = [int.from_bytes(b.packet(i)[24:28], "big") for b in results for i in range(b.count)]
    assert len(seqs) == 4 * 20 * 256
    assert sorted(seqs) == list(range(1, len(seqs) + 1))


def test_threads_on_two_sas_both_progress() -> None:
    pairs = [sa_pair("aes128gcm16", spi=0x2000 + i) for i in range(2)]
    src = PacketBatch.from_packets([ipv4(udp(b"u" * 500))] * 128)
    ok = [0, 0]

    def work(k: int) -> None:
        out, inb = pairs[k]
        for _ in range(10):
            mid = PacketBatch.empty(128)
            out.encrypt_batch(src, mid)
            back = PacketBatch.empty(128)
            ok[k] += inb.decrypt_batch(mid, back)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert ok == [1280, 1280]


def test_slots_never_processed_are_not_ok() -> None:
    out, _ = sa_pair("aes128gcm16")
    src = PacketBatch.from_packets([ipv4(b"a")] * 4)
    dst = PacketBatch.empty(6)
    assert out.encrypt_batch(src, dst) == 4
    assert [Verdict(v).name for v in dst.status][4:] == ["UNPROCESSED", "UNPROCESSED"]
    assert len(list(dst.ok())) == 4


def test_select_out_of_range_is_refused() -> None:
    out, _ = sa_pair("aes128gcm16")
    src = PacketBatch.from_packets([ipv4(b"a")] * 4)
    dst = PacketBatch.empty(4)
    with pytest.raises(ValueError, match="not a slot"):
        out.encrypt_batch(src, dst, select=np.array([2, 9]))
    assert out.seq == 0


def test_api_misuse_gets_type_errors() -> None:
    from esp import SaParams

    out, _ = sa_pair("aes128gcm16")
    with pytest.raises(TypeError, match="PacketBatch"):
        out.encrypt_batch([ipv4(b"a")], PacketBatch.empty(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spi must be an int"):
        SaParams(spi="0x1001", direction="in", suite="aes128gcm16", enc_key=bytes(20))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enc_key must be bytes"):
        SaParams(spi=0x1001, direction="in", suite="aes128gcm16", enc_key="00" * 20)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="UdpEncap"):
        SaParams(spi=0x1001, direction="in", suite="aes128gcm16", enc_key=bytes(20), encap=(4500, 4500))  # type: ignore[arg-type]
