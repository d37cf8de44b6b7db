"""esp.pcap.soft, the per-packet path of the Wireshark rows the compiled core has no suite for (issue 15).

Its framing (tunnel and transport, IPv4 and IPv6, ESP in UDP, ESN, the replay window, padding) is checked
against the compiled core: a soft SA made for a suite the core also runs (AES-CBC with HMAC-SHA-1) must read
what the core writes and write what the core reads. Hostile packets give verdicts, never exceptions.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.batch import PacketBatch, Verdict
from esp.pcap import decrypt_file, encrypt_file
from esp.pcap.capture_suites import SoftSuite
from esp.pcap.sas import _make_sa
from esp.pcap.soft import SoftSa
from esp.sa import Direction
from tests.esp.pcap_builders import ipv4, ipv6, udp
from tests.esp.test_pcap_tool import entries, make_capture, records, sa_toml

K16, H20 = "0x" + "3c" * 16, "0x" + "5a" * 20
FUZZ = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "200"))


def _pair(mode: str, src: str, dst: str, extra: str = ""):
    """A compiled aes128-sha1 entry and the same SA as a soft one."""
    e = entries(sa_toml(suite="aes128-sha1", mode=mode, src=src, dst=dst, enc_key=K16, integ_key=H20,
                        extra=extra))[0]
    soft = dataclasses.replace(e, suite=SoftSuite("aes128-sha1(soft)", "aes-cbc", 16, 0, 16, 16, "sha1", 12, 20))
    return e, soft


def _batch(pkts: list[bytes], room: int = 200) -> tuple[PacketBatch, PacketBatch]:
    n = len(pkts)
    cap = np.array([len(p) + room for p in pkts], dtype=np.int64)
    off = np.cumsum(cap) - cap
    buf = np.zeros(int(cap.sum()) + 1, dtype=np.uint8)
    for p, o in zip(pkts, off):
        buf[o:o + len(p)] = np.frombuffer(p, dtype=np.uint8)
    src = PacketBatch(buf, off, np.array([len(p) for p in pkts]), cap)
    dst = PacketBatch(np.zeros(int(cap.sum()) + 1, dtype=np.uint8), off, np.zeros(n, np.int32), cap)
    return src, dst


def _out(b: PacketBatch) -> list[bytes | int]:
    return [bytes(b.buf[int(o):int(o) + int(n)]) if s == Verdict.OK else int(s)
            for o, n, s in zip(b.offsets, b.lengths, b.status)]


INNER4 = [ipv4("10.1.0.1", "10.2.0.2", 17, udp(1000 + i, 2000, bytes(i * 5)), ident=i) for i in range(7)]
INNER6 = [ipv6("2001:db8::1", "2001:db8::2", 17, udp(1000 + i, 2000, bytes(i * 3))) for i in range(7)]
CASES = [
    ("tunnel", "192.0.2.1", "192.0.2.2", "", INNER4),
    ("tunnel", "2001:db8:1::1", "2001:db8:1::2", "", INNER4),
    ("tunnel", "192.0.2.1", "192.0.2.2", "encap = true\n", INNER6),
    ("tunnel", "2001:db8:1::1", "2001:db8:1::2", "encap = true\n", INNER6),
    ("transport", "10.1.0.1", "10.2.0.2", "", INNER4),
    ("transport", "2001:db8::1", "2001:db8::2", "encap = true\n", INNER6),
    ("tunnel", "192.0.2.1", "192.0.2.2", "esn = true\ninitial_seq = 4294967293\n", INNER4),
]


@pytest.mark.parametrize("mode,src,dst,extra,inner", CASES)
@pytest.mark.parametrize("soft_sends", [True, False])
def test_soft_and_compiled_sas_read_each_other(mode, src, dst, extra, inner, soft_sends):
    compiled, soft = _pair(mode, src, dst, extra)
    tx, rx = (soft, compiled) if soft_sends else (compiled, soft)
    out_sa = _make_sa(tx, Direction.OUT, mode, "openssl", None, tx.initial_seq)
    in_sa = _make_sa(rx, Direction.IN, mode, "openssl", None, rx.initial_seq)
    assert isinstance(out_sa if soft_sends else in_sa, SoftSa)
    src_b, esp_b = _batch(inner + inner[:1])
    out_sa.encrypt_batch(src_b, esp_b, np.arange(len(inner) + 1, dtype=np.int32))
    assert all(s == Verdict.OK for s in esp_b.status)
    wire = _out(esp_b)
    # then the first packet again (a replay) and one more with its last ICV byte flipped
    bad = bytearray(wire[-1])
    bad[-1] ^= 1
    feed = wire[:-1] + [wire[0], bytes(bad)]
    got_b, plain_b = _batch(feed)
    in_sa.decrypt_batch(got_b, plain_b, np.arange(len(feed), dtype=np.int32))
    got = _out(plain_b)
    assert got[:len(inner)] == inner
    assert got[len(inner):] == [int(Verdict.REPLAYED), int(Verdict.AUTH_FAILED)]


def test_soft_rows_through_the_file_tools(tmp_path):
    """Encryption-only and legacy rows through pcap encrypt and decrypt, the summary counting them."""
    make_capture(tmp_path / "p.pcap", INNER4)
    for suite, key, ikey in [("3des-md5", "0x" + "11" * 24, "0x" + "22" * 16), ("aes128ctr-none", "0x" + "33" * 20, ""),
                             ("cast128-none", "0x" + "44" * 16, ""), ("null-none", "", "")]:
        sas = entries(sa_toml(suite=suite, enc_key=key, integ_key=ikey).replace('enc_key = ""\n', ""))
        s = encrypt_file(tmp_path / "p.pcap", tmp_path / "e.pcap", sas)
        assert s.exit_code == 0 and s.per_sa[0].packets == len(INNER4), s.format()
        d = decrypt_file(tmp_path / "e.pcap", tmp_path / "d.pcap", sas)
        assert d.exit_code == 0 and d.per_sa[0].packets == len(INNER4), d.format()
        assert [r[0] for r in records(tmp_path / "d.pcap")[0]] == INNER4
        assert d.per_sa[0].suite == suite


def test_unchecked_icv_rows_decrypt_only(tmp_path):
    sas = entries(sa_toml(suite="aes128-any96", enc_key=K16))
    make_capture(tmp_path / "p.pcap", INNER4)
    with pytest.raises(ValueError, match="decrypt only"):
        encrypt_file(tmp_path / "p.pcap", tmp_path / "e.pcap", sas)


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.sampled_from(["tunnel", "transport"]),
       st.booleans())
def test_hostile_packets_get_verdicts_never_exceptions(pkts, mode, outbound):
    for suite, key, ikey in [("3des-md5", "0x" + "11" * 24, "0x" + "22" * 16), ("null-any64", "", ""),
                             ("aes128ctr-md5", "0x" + "33" * 20, "0x" + "22" * 16)]:
        e = entries(sa_toml(suite=suite, enc_key=key, integ_key=ikey, mode=mode).replace('enc_key = ""\n', ""))[0]
        if outbound and suite.endswith("any64"):
            continue
        sa = _make_sa(e, Direction.OUT if outbound else Direction.IN, mode, None, None)
        # Packets that look like IP: a version nibble of 4 or 6 on random bytes reaches the deeper checks.
        fixed = [bytes([0x45 if i % 2 else 0x60]) + p[1:] if p else p for i, p in enumerate(pkts)]
        src, dst = _batch(fixed, room=8)
        (sa.encrypt_batch if outbound else sa.decrypt_batch)(src, dst, np.arange(len(fixed), dtype=np.int32))
        assert all(int(s) in {int(v) for v in Verdict} and s != Verdict.UNPROCESSED for s in dst.status)
