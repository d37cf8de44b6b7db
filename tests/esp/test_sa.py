"""SA behaviour through the single-packet API: framing, verdicts, sequence numbers and lifetimes."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

import pytest

from esp import SUITES, Sa, SaParams, available_backends, parse_suite
from esp.errors import (AuthenticationFailed, DummyPacket, MalformedPacket, PaddingError, ReplayedPacket,
                        SaExpiredError, SequenceExhausted, UnknownSpi)
from esp.sa import Lifetime, UdpEncap

from .helpers import csum, ipv4, ipv6, sa_pair, udp

ALL = sorted(s for s in SUITES if not s.endswith("-none"))


@pytest.mark.parametrize("suite", ALL)
@pytest.mark.parametrize("mode,v6", [("tunnel", False), ("tunnel", True), ("transport", False), ("transport", True)])
def test_round_trip_every_suite(suite: str, mode: str, v6: bool) -> None:
    out, inb = sa_pair(suite, mode=mode, v6=v6)
    for size in (0, 1, 15, 16, 17, 100, 1400):
        pkt = ipv6(udp(bytes(range(256)) * 6)[: size + 8]) if v6 else ipv4(udp(bytes(size)))
        assert inb.decrypt(out.encrypt(pkt)) == pkt
    assert inb.counters.packets == out.counters.packets == 7


@pytest.mark.parametrize("v6", [False, True])
def test_tunnel_outer_header(v6: bool) -> None:
    out, _ = sa_pair("aes128gcm16", v6=v6)
    inner = ipv6(udp(b"x" * 10), tc=0xB8) if v6 else ipv4(udp(b"x" * 10), tos=0xB8)
    wire = out.encrypt(inner)
    if v6:
        assert wire[0] >> 4 == 6 and wire[6] == 50
        assert struct.unpack("!H", wire[4:6])[0] == len(wire) - 40
        assert ipaddress.ip_address(wire[8:24]) == ipaddress.ip_address("2001:db8::1")
        assert ((struct.unpack("!I", wire[:4])[0] >> 20) & 0xFF) == 0xB8  # DSCP/ECN copied
        esp = wire[40:]
    else:
        assert wire[0] == 0x45 and wire[9] == 50 and wire[1] == 0xB8
        assert struct.unpack("!H", wire[2:4])[0] == len(wire)
        assert csum(wire[:20]) == 0
        esp = wire[20:]
    assert struct.unpack("!II", esp[:8]) == (0x1001, 1)
    # AEAD explicit IV is the 64-bit sequence number: never repeats under one key.
    assert esp[8:16] == (1).to_bytes(8, "big")


def test_tunnel_inner_next_header_and_padding() -> None:
    out, _ = sa_pair("aes128-sha256")
    p = SaParams(spi=0x1001, direction="in", suite="aes128-sha256", enc_key=out.params.enc_key,
                 integ_key=out.params.integ_key, mode="transport")
    raw = Sa(p, framing="raw")
    inner = ipv4(udp(b"abc"))
    payload, nh = raw.open(out.encrypt(inner)[20:])
    assert (payload, nh) == (inner, 4)


def test_transport_mode_fixes_protocol_length_checksum() -> None:
    out, inb = sa_pair("aes256gcm16", mode="transport")
    pkt = ipv4(udp(b"hello"), proto=17)
    wire = out.encrypt(pkt)
    assert wire[9] == 50 and struct.unpack("!H", wire[2:4])[0] == len(wire) and csum(wire[:20]) == 0
    assert wire[12:20] == pkt[12:20]
    assert inb.decrypt(wire) == pkt


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_udp_encapsulation(v6: bool, mode: str) -> None:
    out, inb = sa_pair("aes128gcm16", v6=v6, mode=mode, encap=UdpEncap(4500, 4501))
    pkt = ipv6(udp(b"q" * 33)) if v6 else ipv4(udp(b"q" * 33))
    wire = out.encrypt(pkt)
    hl = 40 if v6 else 20
    assert (wire[6] if v6 else wire[9]) == 17
    sport, dport, length, cks = struct.unpack("!HHHH", wire[hl:hl + 8])
    assert (sport, dport, length) == (4500, 4501, len(wire) - hl)
    if v6:  # IPv6 needs a real UDP checksum: verify it over the pseudo-header
        pseudo = wire[8:40] + struct.pack("!IxxxB", len(wire) - 40, 17)
        assert csum(pseudo + wire[40:]) == 0
    assert struct.unpack("!I", wire[hl + 8:hl + 12])[0] == 0x1001
    assert inb.decrypt(wire) == pkt


def test_non_esp_marker_is_not_decrypted() -> None:
    _, inb = sa_pair("aes128gcm16", encap=UdpEncap())
    ike = ipv4(udp(b"\0\0\0\0" + b"ike message" * 3, 4500, 4500))
    with pytest.raises(MalformedPacket):
        inb.decrypt(ike)


def test_flipped_bit_anywhere_is_refused() -> None:
    out, inb = sa_pair("aes128-sha256")
    wire = out.encrypt(ipv4(udp(b"z" * 40)))
    for pos in range(20 + 8, len(wire)):  # everything after the SPI and sequence number is authenticated
        bad = bytearray(wire)
        bad[pos] ^= 0x80
        with pytest.raises(AuthenticationFailed):
            inb.decrypt(bytes(bad))
    assert inb.counters.auth_failed == len(wire) - 28
    assert inb.decrypt(wire)  # the genuine packet still passes: failures did not move the window


def test_wrong_key_fails_authentication() -> None:
    out, _ = sa_pair("chacha20poly1305")
    _, other = sa_pair("chacha20poly1305")
    with pytest.raises(AuthenticationFailed):
        other.decrypt(out.encrypt(ipv4(b"")))


def test_other_spi_is_refused() -> None:
    out, _ = sa_pair("aes128gcm16", spi=0x2000)
    _, inb = sa_pair("aes128gcm16", spi=0x3000)
    with pytest.raises(UnknownSpi):
        inb.decrypt(out.encrypt(ipv4(b"")))


def test_replay_is_refused_and_counted() -> None:
    out, inb = sa_pair("aes128gcm16")
    wire = out.encrypt(ipv4(b"once"))
    inb.decrypt(wire)
    with pytest.raises(ReplayedPacket):
        inb.decrypt(wire)
    assert inb.counters.replayed == 1


def _null_packet(spi: int, seq: int, body: bytes, key: bytes) -> bytes:
    hdr = struct.pack("!II", spi, seq) + body
    return hdr + hmac.new(key, hdr, hashlib.sha256).digest()[:16]


def test_bad_padding_is_refused_after_authentication() -> None:
    key = bytes(32)
    inb = Sa(SaParams(spi=0x500, direction="in", suite="null-sha256", enc_key=b"", integ_key=key, mode="transport"),
             framing="raw")
    good = _null_packet(0x500, 1, b"ab" + bytes([1, 2]) + bytes([2, 17]), key)
    assert inb.open(good) == (b"ab", 17)
    bad = _null_packet(0x500, 2, b"ab" + bytes([1, 9]) + bytes([2, 17]), key)
    with pytest.raises(PaddingError):
        inb.open(bad)
    too_long = _null_packet(0x500, 3, b"ab" + bytes([200, 17]), key)
    with pytest.raises(PaddingError):
        inb.open(too_long)
    assert inb.counters.pad_errors == 2


def test_dummy_packets_are_counted_and_dropped() -> None:
    out, inb = sa_pair("aes128gcm16", mode="transport")
    raw_out = Sa(out.params, framing="raw")
    raw_in = Sa(inb.params, framing="raw")
    with pytest.raises(DummyPacket):
        raw_in.open(raw_out.seal(b"\0" * 20, 59))
    assert raw_in.counters.dummy == 1 and raw_in.counters.packets == 0


@pytest.mark.parametrize("data", [b"", b"\x45", bytes(19), ipv4(b"x")[:-1] + b"", b"\x60" + bytes(50),
                                  ipv4(b"", proto=50), ipv4(b"\0" * 7, proto=50), ipv4(b"\1" * 30, proto=6)])
def test_malformed_inbound(data: bytes) -> None:
    _, inb = sa_pair("aes128gcm16")
    with pytest.raises((MalformedPacket, UnknownSpi)):
        inb.decrypt(data)


def test_malformed_outbound_tunnel_input() -> None:
    out, _ = sa_pair("aes128gcm16")
    for bad in (b"", b"\x45" * 10, ipv4(b"abc")[:-1], b"\x70" + bytes(40)):
        with pytest.raises(MalformedPacket):
            out.encrypt(bad)
    assert out.counters.malformed == 4 and out.seq == 0


def test_sequence_number_never_wraps_without_esn() -> None:
    out, inb = sa_pair("aes128gcm16", initial_seq=2**32 - 3)
    pkt = ipv4(b"")
    inb.decrypt(out.encrypt(pkt))
    inb.decrypt(out.encrypt(pkt))
    assert out.seq == 2**32 - 1
    with pytest.raises(SequenceExhausted):
        out.encrypt(pkt)
    assert out.counters.seq_exhausted == 1 and out.seq == 2**32 - 1


def test_esn_crosses_2_32() -> None:
    out, inb = sa_pair("aes128-sha256", esn=True, initial_seq=2**32 - 5)
    wires = [out.encrypt(ipv4(bytes([i]))) for i in range(10)]
    # the low 32 bits wrap on the wire
    assert [struct.unpack("!I", w[24:28])[0] for w in wires][3:5] == [0xFFFFFFFF, 0]
    # deliver across the boundary out of order: the high half is inferred from the window
    order = [0, 1, 6, 2, 3, 4, 5, 9, 7, 8]
    for i in order:
        assert inb.decrypt(wires[i]) == ipv4(bytes([i]))
    assert inb.seq == 2**32 + 5
    with pytest.raises(ReplayedPacket):
        inb.decrypt(wires[3])


def test_esn_high_bits_are_authenticated() -> None:
    out, _ = sa_pair("aes128gcm16", esn=True, initial_seq=2**33)
    _, inb_low = sa_pair("aes128gcm16", esn=True)  # other keys anyway; use the same keys below
    inb = Sa(SaParams(spi=0x1001, direction="in", suite="aes128gcm16", enc_key=out.params.enc_key, esn=True),
             initial_seq=5)  # believes the high half is 0
    with pytest.raises(AuthenticationFailed):
        inb.decrypt(out.encrypt(ipv4(b"x")))
    del inb_low


def test_soft_and_hard_lifetimes() -> None:
    out, inb = sa_pair("aes128gcm16", lifetime=Lifetime(soft_packets=3, hard_packets=5))
    pkt = ipv4(b"p")
    for i in range(5):
        inb.decrypt(out.encrypt(pkt))
        assert out.soft_expired is (i >= 2)
    assert not out.hard_expired
    with pytest.raises(SaExpiredError):
        out.encrypt(pkt)
    assert out.hard_expired and out.counters.expired == 1


def test_byte_lifetime() -> None:
    out, _ = sa_pair("aes128gcm16", lifetime=Lifetime(soft_bytes=100, hard_bytes=200))
    pkt = ipv4(bytes(60))  # 80 bytes of payload each
    out.encrypt(pkt)
    assert not out.soft_expired
    out.encrypt(pkt)
    assert out.soft_expired and not out.hard_expired
    out.encrypt(pkt)
    with pytest.raises(SaExpiredError):
        out.encrypt(pkt)


def test_tfc_padding_is_stripped_by_the_receiver() -> None:
    out, inb = sa_pair("aes128gcm16", tfc_pad=300)
    pkt = ipv4(udp(b"tiny"))
    wire = out.encrypt(pkt)
    assert len(wire) >= 20 + 8 + 8 + 300 + 16
    assert inb.decrypt(wire) == pkt


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="needs 20 bytes"):
        SaParams(spi=0x1000, direction="out", suite="aes128gcm16", enc_key=bytes(16), src="1.1.1.1", dst="2.2.2.2")
    with pytest.raises(ValueError, match="integrity key"):
        SaParams(spi=0x1000, direction="in", suite="aes128-sha256", enc_key=bytes(16), integ_key=bytes(20))
    with pytest.raises(ValueError, match="outer src and dst"):
        SaParams(spi=0x1000, direction="out", suite="aes128gcm16", enc_key=bytes(20))
    with pytest.raises(ValueError, match="one address family"):
        SaParams(spi=0x1000, direction="out", suite="aes128gcm16", enc_key=bytes(20), src="1.1.1.1", dst="::1")
    with pytest.raises(ValueError, match="replay window"):
        SaParams(spi=0x1000, direction="in", suite="aes128gcm16", enc_key=bytes(20), replay_window=5)
    with pytest.raises(ValueError, match="unknown ESP suite"):
        parse_suite("aes129gcm16")
    with pytest.raises(ValueError, match="needs an integrity algorithm"):
        parse_suite("aes128")


def test_keys_are_not_in_repr() -> None:
    out, _ = sa_pair("aes128-sha256")
    assert out.params.enc_key.hex() not in repr(out.params)
    assert out.params.integ_key.hex() not in repr(out.params) + repr(out)


def test_backends_listed() -> None:
    assert available_backends("null-sha256") == ["openssl"]
    assert available_backends("aes128ccm8") == ["openssl"]
    for suite in ("aes128gcm16", "aes128-sha256", "aes128ctr-sha1", "chacha20poly1305"):
        assert available_backends(suite)[-1] == "openssl"


def test_3des_ciphertext_of_partial_blocks_is_malformed() -> None:
    """RFC 2451: 3DES-CBC ciphertext is whole 8-byte blocks; a packet whose ciphertext is not is refused and
    counted before any crypto, like AES-CBC's 16."""
    out, inb = sa_pair("3des-sha1")
    wire = out.encrypt(ipv4(udp(b"x" * 21)))
    assert (len(wire) - 20 - 8 - 8 - 12) % 8 == 0  # outer IPv4, SPI/seq, IV, ICV around whole blocks
    short = wire[:-12 - 4] + wire[-12:]  # four bytes of ciphertext fewer, ICV kept
    short = short[:2] + struct.pack("!H", len(short)) + short[4:]
    with pytest.raises(MalformedPacket):
        inb.decrypt(short)
    assert inb.counters.malformed == 1 and inb.counters.packets == 0
    assert inb.decrypt(wire) == ipv4(udp(b"x" * 21))


def test_3des_pads_to_its_8_byte_block() -> None:
    out, _ = sa_pair("3des-sha256")
    sizes = {len(out.encrypt(ipv4(udp(b"p" * n)))) for n in range(0, 24)}
    # 20 outer + 8 SPI/seq + 8 IV + ciphertext (multiples of 8) + 16 ICV
    assert all((n - 20 - 8 - 8 - 16) % 8 == 0 for n in sizes) and any((n - 52) % 16 == 8 for n in sizes)


def test_a_padding_alignment_shorter_than_the_cipher_block_is_refused() -> None:
    from esp import _core
    for cipher, key, iv, align in (("3des-cbc", 24, 8, 4), ("aes-cbc", 16, 16, 8)):
        with pytest.raises(ValueError, match="shorter than"):
            _core.SaContext(cipher=cipher, integ="sha1_96", outbound=True, key=bytes(key), salt=b"",
                            integ_key=bytes(20), iv_len=iv, icv_len=12, align=align, spi=1, framing="raw")
