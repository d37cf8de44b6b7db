"""esp.pcap: reading pcap/pcapng built byte by byte, link-layer parsing, writing, damaged files."""
from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from esp.pcap import CaptureError, CaptureReader, CaptureWriter, Interface, gather_segments, parse_l3
from tests.esp.pcap_builders import (Rec, epb, ether, idb, ipv4, ipv6, opb, other_block, pcap_file, shb, sll,
                                     sll2, spb, udp)
from tests.support import patch_pcap, require_tool


def _records(path, **kw):
    """Every record as (bytes, ts, iface, origlen) plus the reader."""
    r = CaptureReader(path, **kw)
    out = []
    for c in r.chunks():
        for i in range(c.count):
            o = int(c.offsets[i])
            out.append((c.data[o:o + int(c.caplen[i])].tobytes(), int(c.ts[i]), int(c.iface[i]), int(c.origlen[i])))
    return out, r


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


PKTS = [ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, bytes(range(i)))) for i in range(1, 40, 3)]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_pcap_both_byte_orders_and_resolutions(tmp_path, order, nano, chunk):
    recs = [Rec(p, 1_700_000_000 + i, (999_999_999 if nano else 999_999) - i) for i, p in enumerate(PKTS)]
    path = _write(tmp_path, "a.pcap", pcap_file(recs, linktype=101, order=order, nano=nano))
    got, r = _records(path, chunk_records=chunk)
    assert r.format == "pcap" and r.byte_order == order and r.nanosecond == nano and r.linktype == 101
    unit = 10**9 if nano else 10**6
    assert [g[0] for g in got] == PKTS
    assert [g[1] for g in got] == [x.ts_sec * unit + x.ts_frac for x in recs]
    assert not r.problems


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_blocks_interfaces_sections(tmp_path, order):
    other = ">" if order == "<" else "<"
    data = (shb(order) + idb(1, order, tsresol=9, name="eth0") + idb(101, order)
            + other_block(4, b"\x00" * 8, order)  # name resolution block: skipped
            + epb(0, 5_000_000_123, ether(PKTS[0]), order) + epb(1, 7_000_001, PKTS[1], order)
            + spb(PKTS[2], order) + opb(1, 9, PKTS[3], order)
            + other_block(5, b"\x00" * 12, order)  # interface statistics: skipped
            # a second section, other byte order, its own interface 0
            + shb(other) + idb(113, other) + epb(0, 42, sll(PKTS[4]), other))
    path = _write(tmp_path, "b.pcapng", data)
    for chunk in (1, 2, 100):
        got, r = _records(path, chunk_records=chunk)
        assert [g[0] for g in got] == [ether(PKTS[0]), PKTS[1], PKTS[2], PKTS[3], sll(PKTS[4])]
        assert [g[2] for g in got] == [0, 1, 0, 1, 2]
        assert [g[1] for g in got] == [5_000_000_123, 7_000_001, 0, 9, 42]
        assert [i.linktype for i in r.interfaces] == [1, 101, 113]
        assert r.interfaces[0].tsresol == 10**9 and r.interfaces[0].name == "eth0"
        assert r.interfaces[1].tsresol == 10**6


def test_linktypes_and_vlans(tmp_path):
    v4 = ipv4("192.0.2.1", "192.0.2.2", 50, b"\x00\x00\x10\x01" + b"\x00" * 40)
    v6 = ipv6("2001:db8::1", "2001:db8::2", 50, b"\x00\x00\x10\x02" + b"\x00" * 40)
    frames = [
        (1, ether(v4)), (1, ether(v4, vlans=(5,))), (1, ether(v6, 0x86DD, vlans=(5, 6), outer_tpid=0x88A8)),
        (113, sll(v4)), (276, sll2(v6, 0x86DD)), (101, v4), (12, v6), (228, v4), (229, v6),
        (147, v4),  # a user link type: unknown
        (1, ether(b"\x00" * 30, 0x0806)),  # ARP: not IP
    ]
    data = shb() + b"".join(idb(lt) for lt, _ in frames) + b"".join(
        epb(k, k, f) for k, (_, f) in enumerate(frames))
    path = _write(tmp_path, "lt.pcapng", data)
    r = CaptureReader(path)
    (c,) = list(r.chunks())
    L = parse_l3(c, [i.linktype for i in r.interfaces])
    assert L.l3.tolist() == [14, 18, 22, 16, 20, 0, 0, 0, 0, -1, 14]
    assert L.version.tolist() == [4, 4, 6, 4, 6, 4, 6, 4, 6, 0, 0]
    assert L.proto.tolist()[:9] == [50] * 9
    assert L.unknown_link.tolist() == [False] * 9 + [True, False]
    assert L.ip_len.tolist()[:9] == [len(v4), len(v4), len(v6), len(v4), len(v6), len(v4), len(v6), len(v4), len(v6)]


def test_ethernet_padding_and_snaplen_cut(tmp_path):
    small = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"hi"))
    padded = ether(small) + b"\x00" * (60 - 14 - len(small))
    big = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"z" * 500))
    cut = ether(big)[:100]
    path = _write(tmp_path, "p.pcap", pcap_file([Rec(padded), Rec(cut, origlen=len(ether(big)))]))
    r = CaptureReader(path)
    (c,) = list(r.chunks())
    L = parse_l3(c, [1])
    assert L.ip_len.tolist() == [len(small), len(big)]  # the IP length, not the padded frame
    assert L.cut.tolist() == [False, True]
    assert c.origlen.tolist() == [60, len(ether(big))]


def test_ipv6_extension_headers_and_fragments(tmp_path):
    esp = b"\x00\x00\x10\x01" + b"\x00" * 20
    hbh = bytes([50, 0]) + b"\x00" * 6  # hop-by-hop, next header ESP
    frag6 = bytes([50, 0, 0, 1]) + b"\x00" * 4
    pk = [ipv6("2001:db8::1", "2001:db8::2", 0, hbh + esp), ipv6("2001:db8::1", "2001:db8::2", 44, frag6 + esp),
          ipv4("10.0.0.1", "10.0.0.2", 50, esp, frag=0x2000), ipv4("10.0.0.1", "10.0.0.2", 50, esp, frag=0x0010)]
    path = _write(tmp_path, "f.pcap", pcap_file([Rec(p) for p in pk], linktype=101))
    r = CaptureReader(path)
    (c,) = list(r.chunks())
    L = parse_l3(c, [101])
    assert L.proto.tolist()[0] == 50 and L.l4.tolist()[0] == 48
    assert L.frag.tolist() == [False, True, True, True]


# -- damaged input --------------------------------------------------------------------------------------------

def test_truncated_last_record_is_reported_and_rest_read(tmp_path):
    whole = pcap_file([Rec(p) for p in PKTS[:4]], linktype=101)
    for cut in (3, 10, 17):  # inside the data, inside the record header
        path = _write(tmp_path, "t.pcap", whole[:-cut])
        got, r = _records(path)
        assert len(got) == 3 and r.truncated_records == 1
        assert "truncated" in r.problems[0] and "record 4" in r.problems[0]


def test_truncated_pcapng_block(tmp_path):
    data = shb() + idb(101) + epb(0, 1, PKTS[0]) + epb(0, 2, PKTS[1])
    path = _write(tmp_path, "t.pcapng", data[:-9])
    got, r = _records(path)
    assert len(got) == 1 and r.truncated_records == 1


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"\x01\x02", "too short"),
    (b"GIF89a" + b"\x00" * 40, "not a pcap or pcapng"),
    (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "truncated pcap file header"),
    (shb()[:20], "truncated pcapng"),
    (struct.pack("<II", 0x0A0D0D0A, 28) + b"\xde\xad\xbe\xef" + b"\x00" * 16, "byte-order magic"),
])
def test_not_a_capture(tmp_path, data, reason):
    path = _write(tmp_path, "x.pcap", data)
    with pytest.raises(CaptureError, match=reason):
        with CaptureReader(path) as r:
            list(r.chunks())


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader(tmp_path / "nope.pcap")


def test_corrupt_length_stops_with_error_after_good_records(tmp_path):
    good = pcap_file([Rec(p) for p in PKTS[:3]], linktype=101)
    bad = struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 10) + b"junk"
    path = _write(tmp_path, "c.pcap", good + bad)
    r = CaptureReader(path, chunk_records=1)
    seen = 0
    with pytest.raises(CaptureError, match="implausible"):
        for c in r.chunks():
            seen += c.count
    assert seen == 3


def test_pcapng_packet_for_undescribed_interface(tmp_path):
    path = _write(tmp_path, "u.pcapng", shb() + idb(101) + epb(3, 1, PKTS[0]))
    with pytest.raises(CaptureError, match="interface 3 was never described"):
        list(CaptureReader(path).chunks())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from(["pcap", "pcapng"]))
def test_fuzz_only_capture_errors(tmp_path, junk, kind):
    head = pcap_file([Rec(PKTS[0])], linktype=1) if kind == "pcap" else shb() + idb(1) + epb(0, 1, ether(PKTS[0]))
    for data in (head + junk, junk, head[: len(junk) % (len(head) + 1)] + junk):
        path = tmp_path / "fz"
        path.write_bytes(data)
        try:
            with CaptureReader(path, chunk_records=2) as r:
                for c in r.chunks():
                    parse_l3(c, [i.linktype for i in r.interfaces])
        except CaptureError:
            pass


# -- writing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("src_kind", ["pcap-le-us", "pcap-be-ns", "pcapng-le", "pcapng-be"])
@pytest.mark.parametrize("out_fmt", ["pcap", "pcapng"])
def test_write_read_back(tmp_path, src_kind, out_fmt):
    if src_kind.startswith("pcap-"):
        order = "<" if "le" in src_kind else ">"
        nano = src_kind.endswith("ns")
        recs = [Rec(p, 1_700_000_000 + i, 123_456 + i) for i, p in enumerate(PKTS)]
        src = _write(tmp_path, "in.pcap", pcap_file(recs, linktype=101, order=order, nano=nano))
    else:
        order = "<" if "le" in src_kind else ">"
        src = _write(tmp_path, "in.pcapng", shb(order) + idb(101, order, tsresol=9) + b"".join(
            epb(0, 1_700_000_000_123_456_789 + i, p, order) for i, p in enumerate(PKTS)))
    got, r = _records(src)
    out = tmp_path / f"out.{out_fmt}"
    with CaptureReader(src, chunk_records=4) as r2, CaptureWriter(out, r2.interfaces, fmt=out_fmt,
                                                                    byte_order=r2.byte_order,
                                                                    nanosecond=r2.nanosecond if r2.format == "pcap" else None) as w:
        for c in r2.chunks():
            w.write(c.data, c.offsets, c.caplen, c.ts, c.iface, c.origlen)
    back, r3 = _records(out)
    assert [b[0] for b in back] == [g[0] for g in got]
    # timestamps as seconds since the epoch, exact
    to_ns = lambda t, res: t * (10**9 // res)  # noqa: E731
    assert [to_ns(b[1], r3.interfaces[0].tsresol) for b in back] == [to_ns(g[1], r.interfaces[0].tsresol) for g in got]
    if r.format == out_fmt:
        assert out.read_bytes() == src.read_bytes()  # same format: the same file, byte for byte


def test_tshark_reads_what_we_write(tmp_path):
    tshark = require_tool("tshark")
    frames = [ether(p) for p in PKTS[:3]]
    src = _write(tmp_path, "in.pcapng", shb() + idb(1, tsresol=9) + b"".join(
        epb(0, 1_700_000_000_000_000_001 + i, f) for i, f in enumerate(frames)))
    for fmt in ("pcap", "pcapng"):
        out = tmp_path / f"o.{fmt}"
        with CaptureReader(src) as r, CaptureWriter(out, r.interfaces, fmt=fmt) as w:
            for c in r.chunks():
                w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
        res = subprocess.run([tshark, "-r", str(out), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.len",
                              "-e", "frame.len"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        rows = [l.split("\t") for l in res.stdout.strip().splitlines()]
        assert [r_[0] for r_ in rows] == [f"1700000000.00000000{i + 1}" for i in range(3)]
        assert [int(r_[2]) for r_ in rows] == [len(f) for f in frames]


def test_pcap_writer_refuses_mixed_linktypes(tmp_path):
    with pytest.raises(CaptureError, match="pcapng"):
        CaptureWriter(tmp_path / "m.pcap", [Interface(1), Interface(101)], fmt="pcap")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=30))
def test_gather_segments_matches_slicing(chunks):
    src = np.frombuffer(b"".join(chunks) or b"\0", dtype=np.uint8)
    lens = np.array([len(c) for c in chunks], dtype=np.int64)
    offs = np.cumsum(lens) - lens
    rev = lens[::-1]
    out = np.zeros(int(lens.sum()) + 1, dtype=np.uint8)
    out_off = (np.cumsum(rev) - rev)[::-1]
    gather_segments(src, offs, lens, out, out_off)
    assert out[: int(lens.sum())].tobytes() == b"".join(reversed(chunks))


# -- the parallel record scan ---------------------------------------------------------------------------------------

def _fake_header_payload(rng, n):
    """Packet bytes full of things that look like pcap record headers, to tempt the scan's guesses."""
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            c = rng.randrange(1, 1600)
            out += struct.pack("<IIII", 1_700_000_000, rng.randrange(10**6), c, c + rng.randrange(2))
        else:
            out += bytes(rng.randrange(256) for _ in range(8))
    return bytes(out[:n])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tricky", [False, True])
def test_parallel_scan_equals_sequential_walk(tmp_path, monkeypatch, seed, order, tricky):
    import random

    import esp.pcap.reader as pcap_mod
    rng = random.Random(seed)
    recs = []
    total = 0
    while total < 900_000:
        size = rng.choice([0, 1, 60, 64, 333, 1500]) if rng.random() < 0.7 else rng.randrange(0, 2000)
        if tricky and rng.random() < 0.01:
            size = 9000
        data = _fake_header_payload(rng, size) if tricky else bytes(rng.randrange(256) for _ in range(size))
        recs.append(Rec(data, 1_700_000_000 + len(recs), rng.randrange(10**6), len(data) + rng.randrange(3)))
        total += 16 + size
    blob = pcap_file(recs, linktype=1, order=order)
    if seed % 2:
        blob = blob[: -rng.randrange(1, 20)]  # and a truncated last record
    path = _write(tmp_path, "s.pcap", blob)
    used = []
    real = pcap_mod._pcap_scan_parallel

    def counting(*a, **k):
        r = real(*a, **k)
        used.append(r is not None)
        return r

    monkeypatch.setattr(pcap_mod, "_pcap_scan_parallel", counting)
    results = []
    for parallel in (True, False):
        r = CaptureReader(path, parallel_scan=parallel, chunk_records=[5000, 65536][seed % 2],
                          chunk_bytes=[300_000, 1 << 25][seed // 2 % 2])
        caps, ts = [], []
        pos = 0
        for c in r.chunks():
            caps.append(c.caplen.copy())
            ts.append(c.ts.copy())
            pos = c.end_position
        results.append((np.concatenate(caps), np.concatenate(ts), r.truncated_records, pos))
    (c1, t1, tr1, e1), (c2, t2, tr2, e2) = results
    assert np.array_equal(c1, c2) and np.array_equal(t1, t2) and tr1 == tr2 and e1 == e2
    assert c1.size == len(recs) - (1 if seed % 2 else 0)
    if not tricky:
        assert any(used), "the parallel scan never ran"


def test_chunks_stay_bounded(tmp_path):
    recs = [Rec(bytes(1000)) for _ in range(3000)]
    path = _write(tmp_path, "big.pcap", pcap_file(recs, linktype=101))
    r = CaptureReader(path, chunk_bytes=100_000, reuse_buffers=True)
    seen = 0
    for c in r.chunks():
        assert c.data.shape[0] <= 100_000 + 1016 + 4096
        seen += c.count
    assert seen == 3000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 2**31), st.integers(0, 10**6 - 1)),
                        max_size=25),
       fmt=st.sampled_from(["pcap", "pcapng"]), order=st.sampled_from(["<", ">"]), nano=st.booleans(),
       chunk=st.integers(1, 30))
def test_hypothesis_write_then_read(tmp_path, packets, fmt, order, nano, chunk):
    res = 10**9 if nano else 10**6
    iface = [Interface(101, 65535, res)]
    path = tmp_path / f"h.{fmt}"
    data = np.frombuffer(b"".join(p for p, _, _ in packets) + b"\0", dtype=np.uint8)
    lens = np.array([len(p) for p, _, _ in packets], dtype=np.int64)
    offs = np.cumsum(lens) - lens
    ts = np.array([s * res + f for _, s, f in packets], dtype=np.int64)
    with CaptureWriter(path, iface, fmt=fmt, byte_order=order, nanosecond=nano) as w:
        w.write(data, offs, lens, ts, np.zeros(len(packets), dtype=np.int32))
    got, r = _records(path, chunk_records=chunk)
    assert [g[0] for g in got] == [p for p, _, _ in packets]
    assert [g[1] * (10**9 // r.interfaces[0].tsresol) for g in got] == [t * (10**9 // res) for t in ts.tolist()]
    assert not r.problems


@pytest.mark.parametrize("seed", range(3))
def test_pcapng_parallel_scan_equals_sequential_walk(tmp_path, monkeypatch, seed):
    import random

    import esp.pcap.reader as pcap_mod
    rng = random.Random(seed)
    order = "<>"[seed % 2]
    blocks = [shb(order), idb(1, order, tsresol=9), idb(101, order)]
    n = 0
    total = 0
    while total < 1_200_000:
        size = rng.choice([0, 3, 60, 333, 1500])
        data = _fake_header_payload(rng, size)
        kind = rng.random()
        if kind < 0.9:
            blk = epb(rng.randrange(2), 1_700_000_000_000_000_000 + n, data, order)
        elif kind < 0.95:
            blk = spb(data, order)
        else:
            blk = other_block(5, b"\x00" * 16, order)
            n -= 1
        if n == 1000:
            blocks.append(idb(113, order))  # an interface described mid-capture
        blocks.append(blk)
        n += 1
        total += len(blk)
    blob = b"".join(blocks)
    if seed == 1:
        blob = blob[:-7]
    path = _write(tmp_path, "s.pcapng", blob)
    used = []
    real = pcap_mod._pcapng_scan_parallel

    def counting(*a, **k):
        r = real(*a, **k)
        used.append(r is not None)
        return r

    monkeypatch.setattr(pcap_mod, "_pcapng_scan_parallel", counting)
    out = []
    for parallel in (True, False):
        r = CaptureReader(path, parallel_scan=parallel, chunk_records=[200, 500, 700][seed])
        caps, ts, ifs = [], [], []
        for c in r.chunks():
            caps.append(c.caplen.copy())
            ts.append(c.ts.copy())
            ifs.append(c.iface.copy())
        out.append((np.concatenate(caps), np.concatenate(ts), np.concatenate(ifs), r.truncated_records,
                    [i.linktype for i in r.interfaces]))
    a, b = out
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3:] == b[3:]
    assert any(used)


# -- the compiled-kernel hooks (esp._io.scan_pcap / gather_segments), driven by Python stand-ins ------------------

def _scan_pcap_reference(buf, pos, stop, size, limit, big, max_record, out):
    """The contract esp._io.scan_pcap must meet (see esp.pcap._NATIVE_SCAN)."""
    n = 0
    fmt = ">I" if big else "<I"
    while pos + 16 <= size:
        caplen = struct.unpack_from(fmt, buf, pos + 8)[0]
        if caplen > max_record or pos + 16 + caplen > size:
            break
        out[n] = pos + 16
        n += 1
        pos += 16 + caplen
        if n >= limit or pos >= stop:
            break
    return n, pos


def _gather_reference(src, src_off, lengths, dst, dst_off):
    for so, ln, do in zip(src_off.tolist(), lengths.tolist(), dst_off.tolist()):
        if ln > 0:
            dst[do:do + ln] = src[so:so + ln]


def test_native_hooks_are_used_and_agree(tmp_path, monkeypatch):
    import esp.pcap.reader as pcap_mod
    calls = {"scan": 0, "gather": 0}

    def scan(*a):
        calls["scan"] += 1
        return _scan_pcap_reference(*a)

    def gather(*a):
        calls["gather"] += 1
        return _gather_reference(*a)

    recs = [Rec(p, 1_700_000_000 + i, i) for i, p in enumerate(PKTS * 5)]
    whole = pcap_file(recs, linktype=101, order=">")
    cases = [whole, whole[:-5], whole + struct.pack(">IIII", 1, 0, 0x7FFFFFFF, 1)]
    expected = []
    for data in cases:
        path = _write(tmp_path, "n.pcap", data)
        try:
            expected.append((_records(path, chunk_records=7)[0], None))
        except CaptureError as exc:
            expected.append((None, str(exc)))
    patch_pcap(monkeypatch, "_NATIVE_SCAN", scan)
    patch_pcap(monkeypatch, "_NATIVE_GATHER", gather)
    patch_pcap(monkeypatch, "_NATIVE_ASSEMBLE", None)  # the writer then goes through the gather hook
    for data, (want, err) in zip(cases, expected):
        path = _write(tmp_path, "n.pcap", data)
        if err is None:
            got, r = _records(path, chunk_records=7)
            assert got == want
        else:
            with pytest.raises(CaptureError) as ei:
                _records(path, chunk_records=7)
            assert str(ei.value) == err
    out = tmp_path / "o.pcapng"
    with CaptureReader(_write(tmp_path, "n.pcap", whole)) as r, CaptureWriter(out, r.interfaces, fmt="pcapng") as w:
        for c in r.chunks():
            w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
    assert [g[0] for g in _records(out)[0]] == PKTS * 5
    assert calls["scan"] > 0 and calls["gather"] > 0
