"""Fuzz the capture reader and ``python -m esp pcap decrypt`` with structure-aware mutations of valid captures.

Seeds are valid pcap (both byte orders, µs and ns) and pcapng files (two sections in both byte orders, IDB
options, EPB options, SPB, OPB, ISB, NRB and custom blocks) holding real ESP packets. A mutation sets a header,
block or option field to a boundary value, removes, repeats or swaps a block, cuts the file, or flips bytes.
Every input must be read, or refused with CaptureError (the command line: exit 0, 1 or 2, never an exception),
and reading it must stay within a fixed amount of memory.

Budget: a fixed number of inputs per target in CI (a few seconds); ESPRESSO_FUZZ_EXAMPLES=N runs N per target
by hand, and prints what was tried (``-s`` to see it).
"""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import struct
import tempfile
import tracemalloc
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.__main__ import main as esp_main
from esp.pcap import CaptureError, CaptureReader, CaptureWriter, parse_l3
from tests.esp.pcap_builders import (FRAMERS, Rec, epb, idb, opb, other_block, pcap_file, plaintext_packets, shb,
                                     spb)

LONG = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "0"))
READER_EXAMPLES = LONG or 300
CLI_EXAMPLES = LONG or 60
#: Peak Python-visible memory (numpy arrays included) one small input may take to read: the chunk arena is
#: bounded by the file, never by a length field in it.
MEMORY_BOUND = 16 * 1024 * 1024
STATS: Counter[str] = Counter()

SA_TOML = ('[[sa]]\nspi = 4097\nsuite = "aes256gcm16"\nenc_key = "0x' + bytes(range(1, 37)).hex()
           + '"\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\nmode = "tunnel"\n')


def _opt(order: str, code: int, val: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _idb_full(order: str, linktype: int, tsresol: int, tsoffset: int) -> bytes:
    opts = (_opt(order, 2, b"eth0") + _opt(order, 9, bytes([tsresol])) + _opt(order, 14, struct.pack(order + "q",
            tsoffset)) + _opt(order, 0, b""))
    body = struct.pack(order + "HHI", linktype, 0, 65535) + opts
    return struct.pack(order + "II", 1, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


@lru_cache(maxsize=1)
def _seeds() -> tuple[Path, list[bytes]]:
    """(directory holding sa.toml, the seed captures), built once: ESP made by ``pcap encrypt`` itself."""
    from esp.pcap.sa_files import parse_toml
    from esp.pcap import encrypt_file

    d = Path(tempfile.mkdtemp(prefix="espresso-pcap-fuzz-"))
    atexit.register(shutil.rmtree, d, True)
    sa = d / "sa.toml"
    sa.write_text(SA_TOML)
    sa.chmod(0o600)
    pk = plaintext_packets(6)
    plain = d / "plain.pcap"
    plain.write_bytes(pcap_file([Rec(FRAMERS[1](p), 1_700_000_000 + i, i * 1000) for i, p in enumerate(pk)]))
    encrypt_file(plain, d / "esp.pcap", parse_toml(SA_TOML).entries)
    with CaptureReader(d / "esp.pcap") as r:
        frames = [c.data[o:o + n].tobytes() for c in r.chunks() for o, n in zip(c.offsets.tolist(),
                                                                                  c.caplen.tolist())]
    raw = [f[14:] for f in frames]
    seeds = [
        pcap_file([Rec(f, 1_700_000_000 + i, 999_999 - i) for i, f in enumerate(frames)]),
        pcap_file([Rec(f, 1_700_000_000 + i, 999_999_999 - i) for i, f in enumerate(raw)], linktype=101,
                  order=">", nano=True),
        shb("<", _opt("<", 1, b"fuzz seed") + _opt("<", 0, b"")) + _idb_full("<", 1, 9, 0)
        + epb(0, 1_700_000_000_000_000_000, frames[0], "<", options=_opt("<", 1, b"c") + _opt("<", 0, b""))
        + other_block(4, struct.pack("<HH", 1, 8) + bytes([192, 0, 2, 1]) + b"gw\0\0" + struct.pack("<HH", 0, 0))
        + spb(frames[1]) + opb(0, 1_700_000_001_000_000_000, frames[2])
        + other_block(5, struct.pack("<III", 0, 0, 0)) + other_block(0x40000BAD, b"\0\0\0\0custom")
        + shb(">") + _idb_full(">", 101, 0x80 | 20, 1000) + idb(1, ">", tsresol=6)
        + epb(0, 1_700_000_000 << 20, raw[3], ">") + epb(1, 1_700_000_002_000_000, frames[4], ">")
        + epb(0, (1_700_000_003 << 20) + 5, raw[5], ">"),
        shb() + idb(1, tsresol=9) + b"".join(epb(0, 1_700_000_000_000_000_000 + i, f) for i, f in enumerate(frames)),
    ]
    return d, seeds


# -- structure: where the fields of a (possibly already mutated) capture are --------------------------------------

def _fields(buf: bytes) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """(fields as (offset, width, byte order), records/blocks as (offset, length)) of a capture, found by a
    walk that stops where the structure stops making sense."""
    fields: list[tuple[int, int, str]] = []
    units: list[tuple[int, int]] = []
    if len(buf) < 24:
        return fields, units
    magic = struct.unpack_from("<I", buf, 0)[0]
    if magic == 0x0A0D0D0A:
        pos, order = 0, "<"
        for _ in range(64):
            if pos + 12 > len(buf):
                break
            if struct.unpack_from("<I", buf, pos)[0] == 0x0A0D0D0A:
                order = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = struct.unpack_from(order + "II", buf, pos)
            if blen < 12 or blen % 4 or pos + blen > len(buf):
                break
            fields += [(pos, 4, order), (pos + 4, 4, order), (pos + blen - 4, 4, order)]
            units.append((pos, blen))
            fixed = {0x0A0D0D0A: [(12, 2), (14, 2), (16, 8)], 1: [(8, 2), (12, 4)], 3: [(8, 4)],
                     2: [(8, 2), (12, 4), (16, 4), (20, 4), (24, 4)], 5: [(8, 4), (12, 4)],
                     6: [(8, 4), (12, 4), (16, 4), (20, 4), (24, 4)]}.get(btype, [])
            fields += [(pos + o, w, order) for o, w in fixed if o + w <= blen - 4]
            opt = pos + {0x0A0D0D0A: 24, 1: 16, 5: 20}.get(btype, blen)
            if btype in (2, 6) and blen >= 32:
                cap = struct.unpack_from(order + "I", buf, pos + 20)[0]
                opt = pos + 28 + cap + (-cap % 4)
            for _ in range(16):
                if opt + 4 > pos + blen - 4:
                    break
                code, olen = struct.unpack_from(order + "HH", buf, opt)
                fields += [(opt, 2, order), (opt + 2, 2, order)]
                if olen and opt + 4 < pos + blen - 4:
                    fields.append((opt + 4, 1, order))  # if_tsresol is one byte; other options' first byte
                if code == 0:
                    break
                opt += 4 + olen + (-olen % 4)
            pos += blen
        return fields, units
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    fields += [(0, 4, order), (4, 2, order), (6, 2, order), (16, 4, order), (20, 4, order)]
    pos = 24
    for _ in range(256):
        if pos + 16 > len(buf):
            break
        cap = struct.unpack_from(order + "I", buf, pos + 8)[0]
        fields += [(pos + k, 4, order) for k in (0, 4, 8, 12)]
        units.append((pos, 16 + cap))
        pos += 16 + cap
    return fields, units


def _boundary(width: int, old: int, size: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * width)) - 1
    near = [0, 1, 2, 3, 4, 8, 12, 16, 19, 20, 24, 28, 32, 63, 0x80 | 62, 0x80 | 63, 0x80 | 64, 0xFF, top,
            top - 1, top >> 1, (top >> 1) + 1, old + 1, old - 1, old + 4, old - 4, old * 2, size, size - old]
    return st.one_of(st.sampled_from([v & top for v in near]), st.integers(0, top))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(_seeds()[1])))
    for _ in range(draw(st.integers(1, 4))):
        fields, units = _fields(bytes(buf))
        op = draw(st.sampled_from(["field", "field", "field", "drop", "repeat", "swap", "cut", "flip", "junk"]))
        if op == "field" and fields:
            off, width, order = draw(st.sampled_from(fields))
            fmt = order + {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
            old = struct.unpack_from(fmt, buf, off)[0]
            struct.pack_into(fmt, buf, off, draw(_boundary(width, old, len(buf))))
        elif op in ("drop", "repeat") and units:
            pos, n = draw(st.sampled_from(units))
            unit = bytes(buf[pos:pos + n])
            buf[pos:pos + n] = b"" if op == "drop" else unit * draw(st.integers(2, 3))
        elif op == "swap" and len(units) > 1:
            k = draw(st.integers(0, len(units) - 2))
            (a, na), (b, nb) = units[k], units[k + 1]
            if a + na == b:
                buf[a:b + nb] = buf[b:b + nb] + buf[a:a + na]
        elif op == "cut" and buf:
            del buf[draw(st.integers(0, len(buf) - 1)):]
        elif op == "flip" and buf:
            for _ in range(draw(st.integers(1, 8))):
                buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "junk":
            at = draw(st.integers(0, len(buf)))
            buf[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(buf)


def _read_all(path: Path, **kw: object) -> tuple[int, list[str]]:
    """Read every record, checking what the reader hands out; (records, link types)."""
    n = 0
    with CaptureReader(path, **kw) as r:  # type: ignore[arg-type]
        for c in r.chunks():
            assert c.offsets.shape == c.caplen.shape == c.origlen.shape == c.ts.shape == c.iface.shape
            if c.count:
                assert (c.caplen >= 0).all() and (c.origlen >= 0).all() and (c.offsets >= 0).all()
                assert int((c.offsets + c.caplen).max()) <= c.data.shape[0]
                assert (c.ts >= 0).all()
                assert int(c.iface.max()) < len(r.interfaces) and int(c.iface.min()) >= 0
            parse_l3(c, [i.linktype for i in r.interfaces])
            n += c.count
        return n, [i.linktype for i in r.interfaces]


@settings(max_examples=READER_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=mutated(), chunk=st.sampled_from([1, 3, 65536]), parallel=st.booleans(), zero_copy=st.booleans(),
       out_fmt=st.sampled_from(["pcap", "pcapng"]))
def test_reader_reads_or_refuses(tmp_path: Path, data: bytes, chunk: int, parallel: bool, zero_copy: bool,
                                 out_fmt: str) -> None:
    path = tmp_path / "in"
    path.write_bytes(data)
    STATS["reader inputs"] += 1
    tracemalloc.start()
    try:
        try:
            n, _ = _read_all(path, chunk_records=chunk, parallel_scan=parallel, zero_copy=zero_copy)
        except CaptureError:
            STATS["reader refused"] += 1
            return
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak} bytes to read {len(data)}"
    STATS["reader read"] += 1
    STATS["reader records"] += n
    if not n:
        return
    # what was read can be written, or the writer says why not (a time pcap cannot hold, mixed link types)
    try:
        with CaptureReader(path) as r, CaptureWriter(tmp_path / "out", r.interfaces, fmt=out_fmt) as w:
            for c in r.chunks():
                w.write(c.data, c.offsets, c.caplen, c.ts, c.iface, c.origlen)
    except CaptureError:
        STATS["writer refused"] += 1
        return
    back, _ = _read_all(tmp_path / "out")
    assert back == n


@settings(max_examples=CLI_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=mutated(), verb=st.sampled_from(["decrypt", "decrypt", "decrypt", "encrypt", "replay"]),
       fmt=st.sampled_from(["pcap", "pcapng"]), frames=st.booleans(), chunk=st.sampled_from([2, 64]))
def test_decrypt_cli_reads_or_refuses(tmp_path: Path, data: bytes, verb: str, fmt: str, frames: bool,
                                      chunk: int) -> None:
    """``python -m esp pcap decrypt`` (and encrypt, replay) in-process: an exit status, and with 2 one line,
    whatever the input."""
    d, _ = _seeds()
    path = tmp_path / "in"
    path.write_bytes(data)
    err = io.StringIO()
    out = str(tmp_path / "out")
    common = ["--sa", str(d / "sa.toml"), "--chunk", str(chunk), "--no-progress", "--json"]
    argv = {"decrypt": ["pcap", "decrypt", path, out, "--format", fmt] + (["--frames"] if frames else []),
            "encrypt": ["pcap", "encrypt", path, out, "--format", fmt] + (["--raw"] if frames else []),
            "replay": ["pcap", "replay", path, "--output", out, "--reorder", "0.2"]}[verb]
    argv = [str(a) for a in argv] + common
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = esp_main(argv)
    STATS[f"cli {verb} inputs"] += 1
    STATS[f"cli {verb} exit {rc}"] += 1
    assert rc in (0, 1, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if rc == 2:
        assert err.getvalue().count("\n") == 1, err.getvalue()


def test_seeds_are_valid_and_decrypt(tmp_path: Path) -> None:
    """The seeds themselves: read whole, and their ESP packets decrypt (so mutations reach the core)."""
    d, seeds = _seeds()
    for k, s in enumerate(seeds):
        p = tmp_path / f"s{k}"
        p.write_bytes(s)
        n, _ = _read_all(p)
        assert n == 6
        rc = esp_main(["pcap", "decrypt", str(p), str(tmp_path / f"o{k}"), "--sa", str(d / "sa.toml"), "-q"])
        assert rc == 0
        # replay writes every section's interfaces (the third seed has two sections)
        rc = esp_main(["pcap", "replay", str(p), "--output", str(tmp_path / f"r{k}"), "--sa", str(d / "sa.toml"),
                       "--no-progress", "-q"])
        assert rc == 0
        n_out, _ = _read_all(tmp_path / f"r{k}")
        assert n_out == 6


@pytest.fixture(scope="module", autouse=True)
def _report():  # type: ignore[no-untyped-def]
    yield
    if LONG:
        import resource
        print(f"\npcap fuzz (ESPRESSO_FUZZ_EXAMPLES={LONG}): {dict(sorted(STATS.items()))}; "
              f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
