"""Batches processed in place (``decrypt_batch(b, b)``, ``encrypt_batch(b, b)``), as software routers do.

In place must give the bytes out of place gives, for every suite, every backend built here and every size from
0 to the largest packet an IP header can carry, and both must agree with an independent implementation
(pyca/cryptography). Memory that overlaps other than slot for slot is refused with ValueError before any packet
is touched. Before this was made so, ipsec-mb's ChaCha20-Poly1305 returned OK with a wrong plaintext from about
1000 bytes, and in-place encryption returned OK with a corrupt packet for almost every suite.
"""
from __future__ import annotations

import hmac
import struct

import numpy as np
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, ChaCha20Poly1305

from esp import PacketBatch, Sa, SaParams, Verdict, parse_suite
from esp.sa import Mode, UdpEncap, available_backends
from esp.suites import SUITES

from .helpers import ipv4, ipv6, keys_for, udp

SIZES = [0, 1, 15, 16, 17, 63, 64, 255, 256, 511, 512, 999, 1000, 1023, 1024, 1400, 1500, 4096, 9000]
CASES = [(name, be) for name in SUITES for be in available_backends(name)]
SPI = 0x2222


def _sa(suite: str, direction: str, backend: str, *, mode: str = "tunnel", v6: bool = False,
        encap: bool = False, esn: bool = False) -> Sa:
    enc, integ = keys_for(suite, seed=7)
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    sa = Sa(SaParams(spi=SPI, direction=direction, suite=suite, enc_key=enc, integ_key=integ, mode=Mode(mode),
                     src=src, dst=dst, backend=backend, esn=esn, encap=UdpEncap() if encap else None,
                     replay_window=0))
    if direction == "out":
        sa._ctx.predictable_ivs_for_tests()   # CBC: the two outbound SAs compared must draw the same IVs
    return sa


def _inner(n: int, v6: bool = False) -> bytes:
    body = bytes((i * 7 + 3) & 0xFF for i in range(n))
    return ipv6(body, nh=6) if v6 else ipv4(body, proto=6)


def _largest(out: Sa, v6_outer: bool = False) -> int:
    """The longest inner IPv4 packet whose ESP packet still fits an IP header's 16-bit length field."""
    limit = 65535 + (40 if v6_outer else 0)
    n = 65535
    while n + out.overhead(n) > limit:
        n -= 1
    return n


def _batch(packets: list[bytes], slot: int) -> PacketBatch:
    return PacketBatch.from_packets(packets, slot_size=slot)


def _independent_open(suite_name: str, esp: bytes) -> tuple[bytes, int]:
    """(payload, next header) of an ESP packet (SPI..ICV), by pyca/cryptography: the oracle."""
    s = parse_suite(suite_name)
    enc, integ = keys_for(suite_name, seed=7)
    key, salt = enc[:s.key_len], enc[s.key_len:]
    iv = esp[8:8 + s.iv_len]
    body, icv = esp[8 + s.iv_len:len(esp) - s.icv_len], esp[len(esp) - s.icv_len:]
    cipher = s.cipher.value
    if cipher == "aes-gcm":
        d = Cipher(algorithms.AES(key), modes.GCM(salt + iv, icv, min_tag_length=len(icv))).decryptor()
        d.authenticate_additional_data(esp[:8])
        pt = d.update(body) + d.finalize()
    elif cipher == "aes-ccm":
        pt = AESCCM(key, tag_length=s.icv_len).decrypt(salt + iv, body + icv, esp[:8])
    elif cipher == "chacha20-poly1305":
        pt = ChaCha20Poly1305(key).decrypt(salt + iv, body + icv, esp[:8])
    elif cipher == "aes-gmac":
        d = Cipher(algorithms.AES(key), modes.GCM(salt + iv, icv)).decryptor()
        d.authenticate_additional_data(esp[:len(esp) - s.icv_len])
        d.finalize()
        pt = body
    else:
        if s.icv_len:
            digest = s.integ.value.split("_")[0]
            mac = hmac.new(integ, esp[:len(esp) - s.icv_len], digest).digest()[:s.icv_len]
            assert hmac.compare_digest(mac, icv), "ICV"
        if cipher == "aes-cbc":
            pt = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(body)
        elif cipher == "3des-cbc":
            pt = Cipher(TripleDES(key), modes.CBC(iv)).decryptor().update(body)
        elif cipher == "aes-ctr":
            pt = Cipher(algorithms.AES(key), modes.CTR(salt + iv + b"\0\0\0\1")).decryptor().update(body)
        else:
            pt = body
    padlen, nh = pt[-2], pt[-1]
    assert pt[len(pt) - 2 - padlen:-2] == bytes(range(1, padlen + 1)), "padding"
    return pt[:len(pt) - 2 - padlen], nh


@pytest.mark.parametrize("suite,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_in_place_equals_out_of_place_and_the_oracle(suite: str, backend: str) -> None:
    out_a, out_b = _sa(suite, "out", backend), _sa(suite, "out", backend)
    big = _largest(out_a)
    pkts = [_inner(n) for n in SIZES] + [_inner(big - 20)]
    slot = big + 256
    # encrypt: out of place, then in place with an identical SA; the same bytes
    plain = _batch(pkts, slot)
    wire = PacketBatch.empty(len(pkts), slot)
    assert out_a.encrypt_batch(plain, wire) == len(pkts)
    inplace = _batch(pkts, slot)
    assert out_b.encrypt_batch(inplace, inplace) == len(pkts), [Verdict(v).name for v in inplace.status]
    assert inplace.packets() == wire.packets()
    # the oracle opens what both wrote
    for p, w in zip(pkts, wire.packets()):
        assert struct.unpack("!H", w[2:4])[0] == len(w)
        assert _independent_open(suite, w[20:]) == (p, 4)
    # decrypt: out of place and in place give the original packets
    in_a, in_b = _sa(suite, "in", backend), _sa(suite, "in", backend)
    back = PacketBatch.empty(len(pkts), slot)
    assert in_a.decrypt_batch(wire, back) == len(pkts)
    assert back.packets() == pkts
    again = _batch(wire.packets(), slot)
    assert in_b.decrypt_batch(again, again) == len(pkts), [Verdict(v).name for v in again.status]
    assert again.packets() == pkts


FAMILIES = ["aes128gcm16", "aes256gcm8", "chacha20poly1305", "aes128ccm12", "aes128gmac", "aes128-sha256",
            "aes256ctr-sha1", "null-sha256", "aes128-none"]
MODES = [dict(mode="transport"), dict(mode="transport", v6=True), dict(v6=True, encap=True), dict(esn=True),
         dict(encap=True)]
MODE_CASES = [(s, b, i) for s in FAMILIES for b in available_backends(s) for i in range(len(MODES))]


@pytest.mark.parametrize("suite,backend,m", MODE_CASES, ids=[f"{s}-{b}-m{i}" for s, b, i in MODE_CASES])
def test_in_place_in_every_framing(suite: str, backend: str, m: int) -> None:
    kw = MODES[m]
    v6 = kw.get("v6", False)
    pkts = [_inner(n, v6=v6) if kw.get("mode") != "transport" else
            (ipv6(udp(bytes(n)), nh=17) if v6 else ipv4(udp(bytes(n)))) for n in [0, 1, 17, 255, 1000, 1500, 9000]]
    slot = 9000 + 512
    out_a, out_b = _sa(suite, "out", backend, **kw), _sa(suite, "out", backend, **kw)
    wire = PacketBatch.empty(len(pkts), slot)
    assert out_a.encrypt_batch(_batch(pkts, slot), wire) == len(pkts)
    b = _batch(pkts, slot)
    assert out_b.encrypt_batch(b, b) == len(pkts)
    assert b.packets() == wire.packets()
    in_a, in_b = _sa(suite, "in", backend, **kw), _sa(suite, "in", backend, **kw)
    back = PacketBatch.empty(len(pkts), slot)
    assert in_a.decrypt_batch(wire, back) == len(pkts)
    assert back.packets() == pkts
    assert in_b.decrypt_batch(wire, wire) == len(pkts)
    assert wire.packets() == pkts


@pytest.mark.parametrize("backend", available_backends("aes128gcm16"))
def test_too_big_to_encapsulate_is_refused_not_truncated(backend: str) -> None:
    """An inner packet whose ESP packet would not fit the outer header's length field: NO_SPACE, in place or
    not (it used to be OK with the 16-bit length wrapped)."""
    out = _sa("aes128gcm16", "out", backend)
    big = _largest(out)
    pkts = [_inner(big - 20), _inner(big - 19), _inner(65535 - 20)]
    for inplace in (False, True):
        src = _batch(pkts, 65535 + 512)
        dst = src if inplace else PacketBatch.empty(3, 65535 + 512)
        assert out.encrypt_batch(src, dst) == 1
        assert [Verdict(v).name for v in dst.status] == ["OK", "NO_SPACE", "NO_SPACE"]


@pytest.mark.parametrize("backend", available_backends("chacha20poly1305"))
def test_single_packet_api_agrees_with_in_place(backend: str) -> None:
    out_a, out_b = _sa("chacha20poly1305", "out", backend), _sa("chacha20poly1305", "out", backend)
    inb = _sa("chacha20poly1305", "in", backend)
    for n in (0, 999, 1400, 9000):
        p = _inner(n)
        w = out_a.encrypt(p)
        b = _batch([p], 9600)
        out_b.encrypt_batch(b, b)
        assert b.packet(0) == w
        assert inb.decrypt(w) == p


# ---- overlap that is not slot for slot ------------------------------------------------------------------
def _wire(n: int = 4) -> tuple[Sa, list[bytes]]:
    out = _sa("aes128gcm16", "out", "openssl")
    pkts = [_inner(100 + i) for i in range(n)]
    w = PacketBatch.empty(n, 512)
    out.encrypt_batch(_batch(pkts, 512), w)
    return _sa("aes128gcm16", "in", "openssl"), w.packets()


def test_batches_over_shifted_memory_are_refused() -> None:
    inb, wire = _wire()
    src = _batch(wire, 512)
    dst = PacketBatch(src.buf[3:], src.offsets[:], np.zeros(4, np.int32), np.full(4, 500, np.int32))
    with pytest.raises(ValueError, match="overlap"):
        inb.decrypt_batch(src, dst)
    assert inb.counters.packets == 0


def test_slot_writing_over_another_slots_input_is_refused() -> None:
    inb, wire = _wire()
    src = _batch(wire, 512)
    # one arena, each output slot starting where the next input lies
    dst = PacketBatch(src.buf, src.offsets + 512, np.zeros(4, np.int32), np.full(4, 512, np.int32))
    with pytest.raises(ValueError, match="overlap"):
        inb.decrypt_batch(src, dst, select=np.array([0, 1]))
    # and a slot whose output starts a few bytes into its own input
    dst2 = PacketBatch(src.buf, src.offsets + 8, np.zeros(4, np.int32), np.full(4, 400, np.int32))
    with pytest.raises(ValueError, match="overlap"):
        inb.decrypt_batch(src, dst2)
    assert inb.counters.packets == 0


def test_one_arena_with_disjoint_input_and_output_slots_works() -> None:
    inb, wire = _wire()
    arena = np.zeros(8 * 512, np.uint8)
    src = PacketBatch(arena, np.arange(4) * 512, np.zeros(4, np.int32), np.full(4, 512, np.int32))
    src.set_packets(wire)
    dst = PacketBatch(arena, np.arange(4, 8) * 512, np.zeros(4, np.int32), np.full(4, 512, np.int32))
    assert inb.decrypt_batch(src, dst) == 4
    assert dst.packets() == [_inner(100 + i) for i in range(4)]


def test_in_place_with_a_selection_touches_only_the_selected_slots() -> None:
    inb, wire = _wire()
    b = _batch(wire, 512)
    assert inb.decrypt_batch(b, b, select=np.array([2, 0])) == 2
    assert b.packet(0) == _inner(100) and b.packet(2) == _inner(102)
    assert b.packet(1) == wire[1] and b.packet(3) == wire[3]


# ---- the packet step other compiled modules call (esp/_saapi.h), driven through ctypes -----------------------
def _sa_api():
    import ctypes

    from esp import _core

    class Api(ctypes.Structure):
        _fields_ = [("version", ctypes.c_int),
                    ("begin", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)),
                    ("process", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                                 ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int))),
                    ("end", ctypes.CFUNCTYPE(None, ctypes.c_void_p))]

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes, Api.from_address(get(_core.SA_API, b"esp._core.SA_API"))


@pytest.mark.parametrize("backend", available_backends("aes128-sha256"))
def test_packet_step_refuses_bad_sizes_and_overlap_and_works_in_place(backend: str) -> None:
    ctypes, api = _sa_api()
    sa, twin = _sa("aes128-sha256", "out", backend), _sa("aes128-sha256", "out", backend)
    ctx = ctypes.c_void_p(id(sa._ctx))          # the context object itself, borrowed (sa keeps it alive)
    pkt = _inner(1000)
    buf = (ctypes.c_uint8 * 4096)()
    ctypes.memmove(buf, pkt, len(pkt))
    base = ctypes.addressof(buf)
    outl = ctypes.c_int(0)
    assert api.begin(ctx, 1) == 0
    try:
        verdicts = [api.process(ctx, base, -1, base + 2048, 2048, ctypes.byref(outl)),
                    api.process(ctx, base, len(pkt), base + 2048, -5, ctypes.byref(outl)),
                    api.process(ctx, base, len(pkt), base + 4, 2048, ctypes.byref(outl))]   # partial overlap
        assert [Verdict(v).name for v in verdicts] == ["MALFORMED"] * 3
        assert bytes(buf[:len(pkt)]) == pkt           # nothing written
        assert api.process(ctx, base, len(pkt), base, 4096, ctypes.byref(outl)) == Verdict.OK
    finally:
        api.end(ctx)
    assert bytes(buf[:outl.value]) == twin.encrypt(pkt)
