"""The compiled kernels of esp.pcap._pcapio against the numpy references they replace: same arrays, same files."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import esp.pcap as pcap_mod
import esp.pcap.classify as classify_mod
import esp.pcap.decrypt as decrypt_mod
import esp.pcap.layers as layers_mod
import esp.pcap.sas as sas_mod
from esp.pcap import decrypt_file, encrypt_file
from esp.pcap.classify import _classify_esp_numpy
from esp.pcap.formats import READ_PAD, Chunk
from esp.pcap.layers import parse_l3_numpy
from tests.esp.pcap_builders import (FRAMERS, Rec, ether, ipv4, ipv6, pcap_file, plaintext_packets, sll, sll2,
                                     udp)
from tests.esp.test_pcap_tool import entries, make_capture, sa_toml
from tests.support import patch_pcap, require_module

try:
    from esp.pcap import _pcapio
except ImportError:  # pragma: no cover - the build always makes it
    _pcapio = None

NATIVE = ["_NATIVE_GATHER", "_NATIVE_SCAN", "_NATIVE_FIELDS", "_NATIVE_SCATTER", "_NATIVE_PARSE_L3",
          "_NATIVE_ASSEMBLE"]


def _need_native():
    require_module("esp.pcap._pcapio")


def _numpy_only(monkeypatch):
    for name in NATIVE:
        patch_pcap(monkeypatch, name, None)
    for name in ("_NATIVE_CLASSIFY", "_NATIVE_EMIT", "_NATIVE_ESP_CHUNK", "_NATIVE_OUTCOME"):
        patch_pcap(monkeypatch, name, None)


def _chunk(frames, lts):
    """A chunk holding ``frames`` back to back (no padding after the last one: the kernel must not need it)."""
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    offs = np.cumsum(lens) - lens
    data = np.frombuffer(b"".join(frames) + bytes(READ_PAD), dtype=np.uint8).copy()
    n = len(frames)
    return Chunk(data, offs, lens, lens, np.zeros(n, np.int64), np.asarray(lts, dtype=np.int32), 0, 0)


ESP_V4 = ipv4("192.0.2.1", "192.0.2.2", 50, b"\x00\x00\x10\x01" + bytes(range(40)))
ESP_V6 = ipv6("2001:db8::1", "2001:db8::2", 50, b"\x00\x00\x10\x02" + bytes(range(40)))
NATT = ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\x00\x00\x10\x03" + bytes(40)))
IKE = ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, bytes(4) + b"\x11" * 30))
KA = ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\xff"))
HOP = ipv6("2001:db8::1", "2001:db8::2", 0, bytes([44, 0]) + bytes(6) + bytes([50, 0, 0, 0, 0, 0, 0, 1])
           + b"\x00\x00\x10\x04" + bytes(20))
BASE = [ESP_V4, ESP_V6, NATT, IKE, KA, HOP] + plaintext_packets(4) + plaintext_packets(2, v6=True)
LINKS = [1, 101, 12, 228, 229, 113, 276, 147]


def _frame(pkt: bytes, lt: int) -> bytes:
    if lt == 147:
        return pkt
    return FRAMERS[lt](pkt)


@st.composite
def _records(draw):
    out, lts = [], []
    for _ in range(draw(st.integers(1, 12))):
        lt = draw(st.sampled_from(LINKS))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            f = draw(st.binary(max_size=120))
        else:
            f = bytearray(_frame(draw(st.sampled_from(BASE)), lt))
            for _ in range(draw(st.integers(0, 4)) if kind == 2 else 0):  # damage a header byte or two
                if f:
                    f[draw(st.integers(0, min(len(f), 80) - 1))] = draw(st.integers(0, 255))
            if kind == 3:
                f = f[: draw(st.integers(0, len(f)))]
            if lt == 1 and draw(st.booleans()):
                f = ether(bytes(f[14:]), vlans=(5,) * draw(st.integers(1, 3)))
            f = bytes(f)
        out.append(f)
        lts.append(lt)
    return out, lts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records())
def test_parse_l3_and_classify_match_the_numpy_reference(recs):
    _need_native()
    frames, lts = recs
    linktypes = sorted(set(lts))
    c = _chunk(frames, [linktypes.index(x) for x in lts])
    a = pcap_mod.parse_l3(c, linktypes)
    b = parse_l3_numpy(c, linktypes)
    for field in a.__dataclass_fields__:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field
    ea = classify_mod.classify_esp(c, a, (4500, 4501))
    eb = _classify_esp_numpy(c, b, (4500, 4501))
    for field in ea.__dataclass_fields__:
        assert np.array_equal(getattr(ea, field), getattr(eb, field)), field


def _decrypt_both(tmp_path, monkeypatch, src, sas, **kw):
    fmt = kw.get("fmt") or ("pcapng" if src.suffix == ".pcapng" else "pcap")
    out_native = tmp_path / f"native.{fmt}"
    out_ref = tmp_path / f"ref.{fmt}"
    s1 = decrypt_file(src, out_native, sas, **kw)
    with monkeypatch.context() as m:
        _numpy_only(m)
        s2 = decrypt_file(src, out_ref, sas, **kw)
    assert s1.format().splitlines()[1:] == s2.format().splitlines()[1:]
    assert out_native.read_bytes() == out_ref.read_bytes()
    return s1


@pytest.mark.parametrize("kind", ["pcap-le-us", "pcap-be-ns", "pcapng-le", "pcapng-be"])
@pytest.mark.parametrize("frames", [False, True])
def test_decrypt_file_is_byte_identical_to_the_numpy_path(tmp_path, monkeypatch, kind, frames):
    _need_native()
    sas = entries(sa_toml(extra="encap = true\n"), sa_toml(spi=0x1002, mode="transport", src="10.1.0.1",
                                                             dst="10.2.0.2"))
    ext = "pcapng" if kind.startswith("pcapng") else "pcap"
    src = tmp_path / f"p.{ext}"
    make_capture(src, plaintext_packets(40) + plaintext_packets(9, v6=True), 1, kind)
    enc = tmp_path / f"e.{ext}"
    encrypt_file(src, enc, sas)
    s = _decrypt_both(tmp_path, monkeypatch, enc, sas, frames=frames, chunk_records=7)
    assert s.per_sa[0].packets + s.per_sa[1].packets == 49
    # damaged copies (bytes flipped, file cut): the same counts and the same output either way
    good = enc.read_bytes()
    rng = random.Random(11)
    for trial in range(12):
        blob = bytearray(good)
        for _ in range(rng.choice([1, 5, 30])):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if trial % 3 == 0:
            blob = blob[: rng.randrange(len(blob))]
        bad = tmp_path / f"bad.{ext}"
        bad.write_bytes(bytes(blob))
        try:
            _decrypt_both(tmp_path, monkeypatch, bad, sas, frames=frames, chunk_records=rng.choice([1, 5, 100]))
        except pcap_mod.CaptureError:
            pass


def test_reader_read_path_equals_mapped_path(tmp_path, monkeypatch):
    """pcap chunks read into the arena give the records, problems and positions of the mapped walk, and of the
    zero-copy walk that reads the record fields as it goes."""
    _need_native()
    frames = [_frame(p, 1) for p in BASE * 30]
    whole = pcap_file([Rec(f, 1_700_000_000 + i, i) for i, f in enumerate(frames)])
    cases = [whole, whole[:-3], whole[:-len(frames[-1]) - 9], whole + b"\x01" * 20 + b"\x7f" * 12]
    for k, data in enumerate(cases):
        p = tmp_path / f"c{k}.pcap"
        p.write_bytes(data)
        results = []
        for read_path, zero_copy in ((True, False), (False, False), (False, True)):
            with monkeypatch.context() as m:
                if not read_path:
                    m.setattr(pcap_mod.CaptureReader, "_pcap_chunks_read",
                              lambda self: self._pcap_chunks_mapped())
                recs, err = [], None
                r = pcap_mod.CaptureReader(p, chunk_records=17, chunk_bytes=4096, reuse_buffers=True,
                                           zero_copy=zero_copy)
                try:
                    for c in r.chunks():
                        for i in range(c.count):
                            o = int(c.offsets[i])
                            recs.append((c.data[o:o + int(c.caplen[i])].tobytes(), int(c.ts[i]),
                                         int(c.origlen[i])))
                        last = c.end_position
                except pcap_mod.CaptureError as exc:
                    err = str(exc)
                results.append((recs, err, r.problems, r.truncated_records, last))
                r.close()
        assert results[0] == results[1] == results[2]


def test_kernels_refuse_out_of_bounds_offsets():
    _need_native()
    src = np.arange(100, dtype=np.uint8)
    dst = np.zeros(50, dtype=np.uint8)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    with pytest.raises(ValueError):
        _pcapio.gather_segments(src, i64(90), i64(20), dst, i64(0))
    with pytest.raises(ValueError):
        _pcapio.gather_segments(src, i64(0), i64(20), dst, i64(40))
    with pytest.raises(ValueError):
        _pcapio.gather_segments(src, i64(-1), i64(2), dst, i64(0))
    with pytest.raises(ValueError):
        _pcapio.scatter_rows(dst, i64(48), np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError):
        _pcapio.scan_pcap(src, 0, 100, 200, 4, False, 1000, np.zeros(4, np.int64))
    with pytest.raises(ValueError):
        _pcapio.scan_pcap_fields(src, 0, 100, 200, 4, False, 1000, 10**6, *(np.zeros(4, np.int64) for _ in range(4)))
    with pytest.raises(ValueError):
        _pcapio.scan_pcap_fields(src, 0, 100, 100, 4, False, 1000, 10**6, *(np.zeros(3, np.int64) for _ in range(4)))
    with pytest.raises(ValueError):
        _pcapio.pcap_fields(src, i64(8), False, 10**6, *(np.zeros(1, np.int64) for _ in range(3)))
    z = np.zeros(1, np.int64)
    with pytest.raises(ValueError):
        _pcapio.assemble(dst, i64(0), np.zeros((1, 16), np.uint8), src, i64(95), i64(10), src, z, z, src, z, z)
    with pytest.raises(ValueError):
        _pcapio.assemble(dst, i64(0), np.zeros((1, 16), np.uint8), src, i64(0), i64(40), src, z, z, src, z, z)
    c = _chunk([b"\x45" * 30], [0])
    c.caplen[0] = 10_000
    with pytest.raises(ValueError):
        pcap_mod.parse_l3(c, [101])
    c.caplen[0], c.offsets[0] = 100, 2**63 - 50  # a sum that wraps must not pass the bounds check
    with pytest.raises(ValueError):
        pcap_mod.parse_l3(c, [101])


# -- the direct output: the core decrypts into the file image, records packed as they are written ----------------

def _mixed_capture(tmp_path, enc=None, dec=None):
    """Records interleaved: ESP of the SA (some with a flipped byte: authentication fails; some of them an IPv6
    tunnel in IPv4, so a kept Ethernet header changes type), ESP of an SPI no SA has, and plaintext. ``enc``:
    sa_toml's arguments for the SA that encrypts; ``dec``: those of the key file returned (default: the same)."""
    from tests.esp.test_pcap_tool import records

    enc = enc or {}
    sa = entries(sa_toml(**enc))
    stranger = entries(sa_toml(**{**enc, "spi": 0x1003}))
    plain = tmp_path / "p.pcap"
    make_capture(plain, plaintext_packets(40) + plaintext_packets(12, v6=True), 1)
    mine, theirs = tmp_path / "mine.pcap", tmp_path / "theirs.pcap"
    encrypt_file(plain, mine, sa)
    encrypt_file(plain, theirs, stranger)
    ours = [bytearray(b) for b, _ in records(mine)[0]]
    for k in (3, 17, 30):
        ours[k][-1] ^= 0xFF
    mixed = []
    for i, (a, (b, _), (c, _)) in enumerate(zip(ours, records(theirs)[0], records(plain)[0])):
        mixed += [bytes(a)] + ([b] if i % 5 == 0 else []) + ([c] if i % 3 == 0 else [])
    out = tmp_path / "mixed.pcap"
    out.write_bytes(pcap_file([Rec(f, 1_700_000_000 + i, i * 13) for i, f in enumerate(mixed)]))
    return out, entries(sa_toml(**{**enc, **(dec or {})}))


@pytest.mark.parametrize("frames", [False, True])
@pytest.mark.parametrize("drop", ["", "other", "unknown"])
@pytest.mark.parametrize("group", [1, 4, 1024])
def test_direct_output_equals_the_whole_chunk_path(tmp_path, monkeypatch, frames, drop, group):
    """The direct decrypt (the core and the record writer a group of records at a time, in a small buffer)
    gives the bytes and the summary of the whole-chunk path, whatever each record becomes and wherever the
    groups and chunks begin."""
    _need_native()
    enc, sas = _mixed_capture(tmp_path)
    kw = {"frames": frames, "drop_other": drop == "other", "drop_unknown": drop == "unknown", "chunk_records": 13}
    direct = _same_both_ways(decrypt_file, enc, sas, kw, group, tmp_path, monkeypatch)
    assert direct.per_sa[0].count("AUTH_FAILED") == 3 and direct.per_sa[0].packets == 49
    assert sum(direct.unknown_spi.values()) == 11
    assert direct.passed_through + direct.policy_dropped > 0


@pytest.mark.parametrize("where", ["writer thread", "either thread", "this thread", "pipe"])
def test_direct_output_is_the_same_whoever_writes_it(tmp_path, monkeypatch, where):
    """Groups written at reserved offsets by the writer thread, by the decrypting thread or by both (pwrite),
    or in order to an output that cannot seek (a pipe): the same file."""
    import threading

    _need_native()
    enc, sas = _mixed_capture(tmp_path)
    patch_pcap(monkeypatch, "GROUP_RECORDS", 3)
    ref = tmp_path / "ref.pcap"
    with monkeypatch.context() as m:
        patch_pcap(m, "_NATIVE_ESP_CHUNK", None)
        decrypt_file(enc, ref, sas, chunk_records=13)
    patch_pcap(monkeypatch, "_WRITES_AHEAD", {"writer thread": 10**6, "either thread": 1, "this thread": 0,
                                                    "pipe": 0}[where])
    out = tmp_path / "out.pcap"
    if where != "pipe":
        decrypt_file(enc, out, sas, chunk_records=13)
        assert out.read_bytes() == ref.read_bytes()
        return
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    t.start()
    decrypt_file(enc, fifo, sas, chunk_records=13)
    t.join(timeout=30)
    assert got and got[0] == ref.read_bytes()


@pytest.fixture(scope="module")
def record_pool(tmp_path_factory):
    """Ethernet records to draw captures from: ESP of the SA (sequence numbers 1..60, IPv4 and IPv6 inner
    packets), ESP of an SPI no SA has, plaintext IPv4/IPv6, an ARP frame."""
    from tests.esp.test_pcap_tool import records

    tmp = tmp_path_factory.mktemp("pool")
    plain = tmp / "p.pcap"
    make_capture(plain, plaintext_packets(48) + plaintext_packets(12, v6=True), 1)
    mine, theirs = tmp / "mine.pcap", tmp / "theirs.pcap"
    encrypt_file(plain, mine, entries(sa_toml()))
    encrypt_file(plain, theirs, entries(sa_toml(spi=0x1003)))
    arp = ether(bytes(28), ethertype=0x0806)
    return {"mine": [b for b, _ in records(mine)[0]], "theirs": [b for b, _ in records(theirs)[0]][:8],
            "plain": [b for b, _ in records(plain)[0]][:8], "arp": [arp]}


def _reframe(frame: bytes, link: str) -> bytes:
    """An Ethernet frame of the pool on another link: "vlan" (802.1Q), "raw" (101), "sll", "sll2"."""
    et, payload = int.from_bytes(frame[12:14], "big"), frame[14:]
    if link == "vlan":
        return ether(payload, et, vlans=(7,))
    if link == "sll":
        return sll(payload, et)
    if link == "sll2":
        return sll2(payload, et)
    return payload if et != 0x0806 else bytes(28)  # raw IP: a non-IP record is one whose version is 0


LINK_OF = {"ether": 1, "vlan": 1, "raw": 101, "sll": 113, "sll2": 276}


@st.composite
def _mixed_records(draw, pool, link="ether"):
    """A capture's records: ESP of the SA in any order, repeated (replays) or with a flipped byte (forged) or cut
    by the snap length, among other records."""
    out = []
    for _ in range(draw(st.integers(1, 80))):
        kind = draw(st.sampled_from(["mine", "mine", "mine", "forged", "cut", "theirs", "plain", "arp"]))
        src = pool["mine" if kind in ("forged", "cut") else kind]
        rec = bytearray(src[draw(st.integers(0, len(src) - 1))])
        if link != "ether":
            rec = bytearray(_reframe(bytes(rec), link))
        origlen = None
        if kind == "forged":
            rec[draw(st.integers(0, len(rec) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            origlen = len(rec)
            rec = rec[:draw(st.integers(1, len(rec) - 1))]
        out.append(Rec(bytes(rec), 1_700_000_000 + len(out), 7 * len(out), origlen))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_direct_output_equals_the_whole_chunk_path_for_any_mix(tmp_path, monkeypatch, record_pool, data):
    """Property: for any mix of records (replays, forgeries, snap-length cuts, other SPIs, non-ESP, non-IP) on any
    link (Ethernet, 802.1Q, raw, SLL, SLL2), any group and chunk size, frames or raw, and drop options, the direct decrypt and the whole-chunk path write the
    same file and count the same summary."""
    _need_native()
    link = data.draw(st.sampled_from(list(LINK_OF)))
    recs = data.draw(_mixed_records(record_pool, link))
    frames, drop = data.draw(st.booleans()), data.draw(st.sampled_from(["", "other", "unknown"]))
    group, chunk = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 100))
    enc = tmp_path / "mixed.pcap"
    enc.write_bytes(pcap_file(recs, linktype=LINK_OF[link]))
    kw = {"frames": frames, "drop_other": drop == "other", "drop_unknown": drop == "unknown",
          "chunk_records": chunk}
    _same_both_ways(decrypt_file, enc, entries(sa_toml()), kw, group, tmp_path, monkeypatch)


def _same_both_ways(tool, path, sas, kw, group, tmp_path, monkeypatch):
    """``tool`` (decrypt_file or encrypt_file) through the direct path, in groups of ``group`` records, and
    through the whole-chunk path: the same file and the same summary."""
    with monkeypatch.context() as m:
        patch_pcap(m, "GROUP_RECORDS", group)
        used = []
        real = decrypt_mod._direct
        patch_pcap(m, "_direct", lambda *a, **k: used.append(1) or real(*a, **k))
        direct = tool(path, tmp_path / "direct.pcap", sas, **kw)
        assert used, "the direct path was not used"
    with monkeypatch.context() as m:
        patch_pcap(m, "_NATIVE_ESP_CHUNK", None)
        whole = tool(path, tmp_path / "whole.pcap", sas, **kw)
    assert direct.as_dict() | {"seconds": 0} == whole.as_dict() | {"seconds": 0}
    assert (tmp_path / "direct.pcap").read_bytes() == (tmp_path / "whole.pcap").read_bytes()
    return direct


ENCRYPT_SAS = {
    # the first SA takes 10.1/16 -> 10.2/16 (its selector), the second, an IPv6 tunnel, the rest
    "tunnel": sa_toml(extra='selector = { src = "10.1.0.0/16", dst = "10.2.0.0/16" }\n')
    + sa_toml(spi=0x1002, src="2001:db8::a", dst="2001:db8::b"),
    "transport": sa_toml(mode="transport", src="10.1.0.1", dst="10.2.0.2"),
    # ipsec-mb's job manager (CTR: the IV is the sequence number, so both paths give the same bytes)
    "ctr-jobs": sa_toml(suite="aes128ctr-sha256", enc_key="0x" + bytes(range(70, 90)).hex(),
                        integ_key="0x" + bytes(range(90, 122)).hex()),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_direct_encrypt_equals_the_whole_chunk_path_for_any_mix(tmp_path, monkeypatch, record_pool, data):
    """Property: encrypt_file's direct output (the core writes into the records) and the whole-chunk path write
    the same file and the same summary, for any mix of IPv4/IPv6/non-IP/cut records on any link, tunnel (two
    SAs, selectors) or transport, frames or raw, drop_other, any group and chunk size."""
    _need_native()
    kind = data.draw(st.sampled_from(list(ENCRYPT_SAS)))
    backend = "ipsecmb" if kind == "ctr-jobs" else None
    if backend:
        from esp import _core
        if not _core.HAVE_IPSECMB:
            return
    link = data.draw(st.sampled_from(list(LINK_OF)))
    pool = {"plain": record_pool["plain"] + [ether(ipv6("2001:db8:1::1", "2001:db8:2::2", 17, udp(5, 6, b"v6")),
                                                  0x86DD)], "arp": record_pool["arp"]}
    recs = []
    for _ in range(data.draw(st.integers(1, 60))):
        kind_r = data.draw(st.sampled_from(["plain", "plain", "plain", "cut", "arp"]))
        src = pool["arp" if kind_r == "arp" else "plain"]
        rec = src[data.draw(st.integers(0, len(src) - 1))]
        rec = rec if link == "ether" else _reframe(rec, link)
        origlen = None
        if kind_r == "cut":
            origlen, rec = len(rec), rec[:data.draw(st.integers(1, len(rec) - 1))]
        recs.append(Rec(rec, 1_700_000_000 + len(recs), 3 * len(recs), origlen))
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(pcap_file(recs, linktype=LINK_OF[link]))
    kw = {"frames": data.draw(st.booleans()), "drop_other": data.draw(st.booleans()),
          "chunk_records": data.draw(st.integers(1, 70)), "backend": backend}
    _same_both_ways(encrypt_file, plain, entries(ENCRYPT_SAS[kind]), kw, data.draw(st.integers(1, 30)), tmp_path,
                    monkeypatch)


KEY16, KEY32 = "0x" + bytes(range(70, 86)).hex(), "0x" + bytes(range(90, 122)).hex()
SA_KINDS = {
    # ipsec-mb's job manager (CBC): the packet step drains it per packet
    "cbc-jobs": ({"suite": "aes128-sha256", "enc_key": KEY16, "integ_key": KEY32}, {}, "ipsecmb", 49),
    # mode not in the key file: tunnel first, then transport on the packets tunnel found malformed (the 40 IPv4
    # packets are the hosts')
    "mode-unknown": ({"mode": "transport", "src": "10.1.0.1", "dst": "10.2.0.2"}, {"mode": ""}, None, 37),
    # SPI "*": one SA per SPI seen (here both SPIs decrypt, they share the keys)
    "wildcard": ({}, {"spi": '"*"'}, None, 49 + 11),
}


@pytest.mark.parametrize("kind", list(SA_KINDS))
@pytest.mark.parametrize("frames", [False, True])
def test_direct_output_equals_the_whole_chunk_path_for_every_kind_of_sa(tmp_path, monkeypatch, kind, frames):
    _need_native()
    enc_kw, dec_kw, backend, decrypted = SA_KINDS[kind]
    if backend == "ipsecmb":
        from esp import _core
        if not _core.HAVE_IPSECMB:
            pytest.skip("built without ipsec-mb: no job manager to test")
    enc, sas = _mixed_capture(tmp_path, enc_kw, dec_kw)
    kw = {"frames": frames, "backend": backend, "chunk_records": 29}
    direct = _same_both_ways(decrypt_file, enc, sas, kw, 7, tmp_path, monkeypatch)
    ok = sum(st.packets for st in direct.per_sa)
    assert ok == decrypted, direct.format()
    assert sum(st.count("AUTH_FAILED") for st in direct.per_sa) == 3


def _decrypt_chunk_args(n=4, nsa=1):
    """An EspChunk's arguments (decrypt) for ``n`` plaintext records of 100 bytes (no SA takes any)."""
    from esp import Direction
    from esp._core import SA_API

    data = np.zeros(100 * n + 64, np.uint8)

    def i64(v):
        return np.full(n, v, np.int64)

    ctx = [sas_mod._make_sa(entries(sa_toml(spi=0x2000 + k))[0], Direction.IN, "tunnel", None, None)._ctx
           for k in range(nsa)]
    return {"api": SA_API, "outbound": False, "grow": 0, "primaries": ctx, "fallbacks": [None] * nsa, "sa_of": np.full(n, -1, np.int32),
            "data": data, "base": np.arange(n, dtype=np.int64) * 100, "l3": i64(0), "cap": i64(100),
            "origlen": i64(100), "ip_len": i64(100), "cut": np.zeros(n, np.uint8), "ts": i64(5), "et_at": i64(-1),
            "esp": np.zeros(n, np.uint8), "frag": np.zeros(n, np.uint8), "version": i64(4),
            "tally": np.zeros((nsa, 33), np.int64), "drop_other": False, "drop_unknown": False, "frames": False,
            "big": False, "ts_mul": 1, "ts_div": 1, "units": 10**6}


def test_esp_chunk_checks_before_it_touches_memory():
    """Indices outside the arrays, a buffer too small for the records, a context named twice, a wrong capsule:
    a ValueError before the loop, never a write outside a buffer."""
    _need_native()
    DC = _pcapio.EspChunk
    a = _decrypt_chunk_args()
    job = DC(*a.values())
    assert job.run(np.zeros(4 * 116, np.uint8), 0, 4) == (4 * 116, 4, 0, 0, 0, 4)
    with pytest.raises(ValueError, match="need up to"):
        job.run(np.zeros(4 * 116 - 1, np.uint8), 0, 4)
    with pytest.raises(ValueError):
        job.run(np.zeros(4 * 116, np.uint8), 2, 5)
    for change in ({"sa_of": np.array([0, 1, -1, -1], np.int32)},          # SA 1 of 1
                   {"base": np.array([0, 100, 200, 390], np.int64)},      # past the data
                   {"ip_len": np.array([100, 100, 100, 10**6], np.int64), "sa_of": np.array([-1, -1, -1, 0], np.int32)},
                   {"tally": np.zeros((1, 32), np.int64)},
                   {"base": np.zeros(3, np.int64)},
                   # base + cap wraps past 2^63: a sum-based bounds check passes it (issue 12)
                   {"base": np.array([0, 100, 200, 2**63 - 50], np.int64)},
                   {"base": np.array([0, 100, 200, 300], np.int64),
                    "cap": np.array([100] * 3 + [2**63 - 1], np.int64)},
                   {"ip_len": np.array([100, 100, 100, 0x7FFFFF00], np.int64),
                    "sa_of": np.array([-1, -1, -1, 0], np.int32)}):
        b = {**a, **change}
        with pytest.raises(ValueError):
            DC(*b.values()).run(np.zeros(10_000, np.uint8), 0, 4)
    with pytest.raises(ValueError, match="twice"):
        DC(*{**a, "fallbacks": a["primaries"]}.values())
    import datetime
    with pytest.raises(ValueError):  # another module's capsule
        DC(*{**a, "api": datetime.datetime_CAPI}.values())


@pytest.mark.parametrize("outbound", [False, True])
def test_esp_chunk_refuses_an_sa_of_the_other_direction_as_unsupported(outbound):
    """The packet step works in the direction asked for: a context of the other direction has its records
    counted UNSUPPORTED and not written."""
    _need_native()
    from esp import Direction

    a = _decrypt_chunk_args()
    a["outbound"], a["grow"] = outbound, 160 if outbound else 0
    sa = sas_mod._make_sa(entries(sa_toml(spi=0x2000))[0], Direction.IN if outbound else Direction.OUT, "tunnel",
                           None, None)
    a["primaries"] = [sa._ctx]
    a["sa_of"] = np.array([0, -1, 0, -1], np.int32)
    nbytes, written, processed, *_ = _pcapio.EspChunk(*a.values()).run(np.zeros(2000, np.uint8), 0, 4)
    assert (written, processed, nbytes) == (2, 2, 2 * 116)
    assert a["tally"][0, 13] == 2 and a["tally"][0].sum() == 2  # UNSUPPORTED


_CUT_READER = """
import os, sys
import numpy as np
from esp.pcap import CaptureError, CaptureReader
path = sys.argv[1]
r = CaptureReader(path, chunk_records=10**6, chunk_bytes=1 << 20, zero_copy=True)
first = next(r.chunks())
os.truncate(path, 4096)
print("zeros past the end:", int(np.asarray(r._arr[r.size - 8192:]).sum()) == 0, flush=True)
try:
    r.check_intact()
except CaptureError as exc:
    print("error:", exc)
"""

_CUT_DECRYPT = """
import os, sys
import esp.pcap as T
import esp.pcap.output as O
path, out, keys = sys.argv[1:4]
O.GROUP_RECORDS = 4
real = O._Output.claim_group_buffer
def cut(self):
    cut.groups = getattr(cut, "groups", 0) + 1
    if cut.groups == 6:  # five groups decrypted and written; the rest of the chunk is mapped already
        os.truncate(path, 4096)  # the records of the next groups lie in pages past the new end
    return real(self)
O._Output.claim_group_buffer = cut
s = T.decrypt_file(path, out, keys)
print("records written:", s.written)
print("error:", s.capture_error)
"""


@pytest.mark.parametrize("script", ["reader", "decrypt"])
def test_a_capture_cut_under_its_mapping_is_an_error_not_sigbus(tmp_path, script):
    """A capture truncated after its pages were mapped (a rotation with copytruncate): reading past the new end
    would be SIGBUS; the reader's guard reads zeros there and reports a CaptureError, and nothing read from the
    lost part reaches the output. In a child process, so that a regression kills only the child."""
    import subprocess
    import sys

    from tests.esp.test_pcap_tool import records

    _need_native()
    if script == "reader":
        p = tmp_path / "c.pcap"
        p.write_bytes(pcap_file([Rec(_frame(b, 1), 1_700_000_000 + i, i) for i, b in enumerate(BASE * 2000)]))
        run = subprocess.run([sys.executable, "-c", _CUT_READER, str(p)], capture_output=True, text=True,
                             timeout=120, cwd=os.getcwd(), check=False)
        assert run.returncode == 0, f"child ended by signal {-run.returncode}: {run.stderr[-2000:]}"
        assert "zeros past the end: True" in run.stdout and "shrank to 4096 bytes" in run.stdout, run.stdout
        return
    enc, sas = _mixed_capture(tmp_path)
    ref = tmp_path / "ref.pcap"
    decrypt_file(enc, ref, sas)
    keys = tmp_path / "sa.toml"
    keys.write_text(sa_toml())
    keys.chmod(0o600)
    out = tmp_path / "out.pcap"
    run = subprocess.run([sys.executable, "-c", _CUT_DECRYPT, str(enc), str(out), str(keys)], capture_output=True,
                         text=True, timeout=120, cwd=os.getcwd(), check=False)
    assert run.returncode == 0, f"child ended by signal {-run.returncode}: {run.stderr[-2000:]}"
    assert "shrank to 4096 bytes" in run.stdout, run.stdout
    got, want = records(out)[0], records(ref)[0]
    assert 0 < len(got) < len(want) and got == want[:len(got)]
    assert f"records written: {len(got)}" in run.stdout


def test_outcome_matches_the_numpy_reference():
    _need_native()
    rng = np.random.default_rng(5)
    frames = [_frame(p, lt) for p in BASE for lt in (1, 101, 113)]
    c = _chunk(frames, [0] * len(frames))
    lts = np.asarray([1], dtype=np.int64)
    L = layers_mod.parse_l3(c, lts)
    E = classify_mod.classify_esp(c, L, (4500,))
    n = c.count
    for _ in range(30):
        assigned = rng.random(n) < 0.5
        status = rng.choice([0, 0, 1, 2, 3], size=n).astype(np.uint8)
        flags = {"drop_other": bool(rng.random() < 0.5), "drop_unknown": bool(rng.random() < 0.5),
                 "frames": bool(rng.random() < 0.5)}
        body_ref, counts_ref = decrypt_mod._outcome_numpy(L, E, assigned, status, **flags)
        body = np.empty(n, np.int8)
        counts = _pcapio.decrypt_outcome(assigned.view(np.uint8), status, E.esp.view(np.uint8),
                                         E.frag.view(np.uint8), E.cut.view(np.uint8), L.version,
                                         flags["drop_other"], flags["drop_unknown"], flags["frames"], body)
        assert np.array_equal(body, body_ref)
        assert tuple(counts[:4]) == counts_ref and counts[4] == int(np.count_nonzero(body_ref))


@pytest.mark.parametrize("zero_copy", [False, True])
def test_a_capture_cut_while_it_is_read_is_an_error_not_a_crash(tmp_path, zero_copy):
    """Truncating the file under the reader (a capture still being rotated, a full disk) ends the walk with
    a CaptureError; with the mapping, the pages are populated ahead, which finds the cut before any read
    past the end (that would be SIGBUS)."""
    _need_native()
    frames = [_frame(p, 1) for p in BASE * 400]
    p = tmp_path / "c.pcap"
    p.write_bytes(pcap_file([Rec(f, 1_700_000_000 + i, i) for i, f in enumerate(frames)]))
    r = pcap_mod.CaptureReader(p, chunk_records=100_000, chunk_bytes=64 * 1024, reuse_buffers=2,
                               zero_copy=zero_copy)
    assert r.zero_copy == zero_copy
    got = 0
    with pytest.raises(pcap_mod.CaptureError, match="shrank"):
        for c in r.chunks():
            if got == 0:
                os.truncate(p, r.size // 2)
            got += c.count
    assert 0 < got < len(frames)
    r.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("direct", [True, False])
def test_a_failed_write_is_reported_not_lost(tmp_path, monkeypatch, direct):
    """A write that fails (disk full) on the writer thread is a CaptureError naming the output, whichever path
    wrote: nothing is lost silently."""
    _need_native()
    enc, sas = _mixed_capture(tmp_path)
    if not direct:
        patch_pcap(monkeypatch, "_NATIVE_ESP_CHUNK", None)
    with pytest.raises(pcap_mod.CaptureError, match="/dev/full: write failed"):
        decrypt_file(enc, "/dev/full", sas, chunk_records=13)
