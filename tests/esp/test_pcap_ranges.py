"""Every field esp.pcap reads from a capture is range-checked (issue 12).

Each bad input is a table row (bytes, what the error must name); a field that cannot be represented is a
CaptureError naming the field, the offset and the value, from the reader, the writer and ``python -m esp pcap``
(exit 2, one line, no traceback). Where the value is representable, timestamps written to pcap are exact to
the output's precision, compared with tshark reading the input (tshark and libpcap/tcpdump are the oracles
for what is accepted: see the notes on each row).
"""
from __future__ import annotations

import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from esp.__main__ import main as esp_main
from esp.pcap import CaptureError, CaptureReader, CaptureWriter, Interface
from tests.esp.pcap_builders import epb, ether, idb, ipv4, opb, other_block, shb, spb, udp
from tests.support import require_tool

PKT = ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, bytes(range(20)))))
T0 = 1_700_000_000


def _pcap_header(major: int = 2, minor: int = 4, network: int = 1, order: str = "<", snaplen: int = 65535) -> bytes:
    return struct.pack(order + "IHHiIII", 0xA1B2C3D4, major, minor, 0, 0, snaplen, network)


def _pcap_rec(data: bytes = PKT, sec: int = T0, frac: int = 0) -> bytes:
    return struct.pack("<IIII", sec, frac, len(data), len(data)) + data


def _block(btype: int, body: bytes, order: str = "<", trailer: int | None = None) -> bytes:
    blen = 12 + len(body)
    return struct.pack(order + "II", btype, blen) + body + struct.pack(order + "I", blen if trailer is None
                                                                        else trailer)


def _opt(code: int, val: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HH", code, len(val) if length is None else length) + val + b"\0" * (-len(val) % 4)


def _idb_opts(opts: bytes, linktype: int = 1) -> bytes:
    return _block(1, struct.pack("<HHI", linktype, 0, 0) + opts)


def _shb_version(major: int, minor: int) -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, major, minor, -1))


def _epb_ts(ts: int) -> bytes:
    return epb(0, ts, PKT)


def _with_trailer(block: bytes, delta: int) -> bytes:
    b = bytearray(block)
    b[-4:] = struct.pack("<I", struct.unpack("<I", b[-4:])[0] + delta)
    return bytes(b)


def _sa_file(tmp_path: Path) -> Path:
    sa = tmp_path / "sa.toml"
    sa.write_text('[[sa]]\nspi = 4097\nsuite = "aes128gcm16"\nenc_key = "0x' + "11" * 20
                  + '"\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n')
    sa.chmod(0o600)
    return sa


GOOD_EPB = epb(0, T0 * 10**6, PKT)
EOO = struct.pack("<HH", 0, 0)

# (name, file bytes, a regex the error must match). Oracles: "tshark" = refused by Wireshark 4.0's wiretap,
# "libpcap" = refused by tcpdump 4.99 / libpcap 1.10; "repr" = accepted by an oracle but not representable here.
BAD = [
    # pcap file header
    ("pcap version 9.9 (libpcap)", _pcap_header(9, 9) + _pcap_rec(), r"version 9\.9.*offset 4"),
    ("pcap version 2.5 (libpcap)", _pcap_header(2, 5) + _pcap_rec(), r"version 2\.5"),
    ("pcap version 1.0 (tshark, libpcap)", _pcap_header(1, 0) + _pcap_rec(), r"version 1\.0"),
    ("pcap version 9.9 big-endian", _pcap_header(9, 9, order=">"), r"version 9\.9"),
    ("pcap linktype reserved bits (tshark)", _pcap_header(network=1 | 1 << 20) + _pcap_rec(),
     r"link type field.*reserved.*0x00100001"),
    # pcapng section header
    ("SHB version 2.0 (tshark)", _shb_version(2, 0) + idb(1) + GOOD_EPB, r"section header at offset 0: version 2\.0"),
    ("SHB version 1.1 (tshark)", _shb_version(1, 1) + idb(1) + GOOD_EPB, r"version 1\.1"),
    ("SHB too short", _block(0x0A0D0D0A, struct.pack("<I", 0x1A2B3C4D) + b"\0" * 4) + idb(1) + GOOD_EPB,
     r"offset 0.*length 20"),
    ("second SHB version 3.0", shb() + idb(1) + GOOD_EPB + _shb_version(3, 0) + idb(1) + GOOD_EPB,
     r"section header at offset \d+: version 3\.0"),
    ("SHB option past the block (tshark)", _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                                                  + _opt(4, b"abcd", 200)) + idb(1) + GOOD_EPB,
     r"option 4 at offset 24.*length 200.*past the end of its block"),
    # block framing
    ("EPB trailing length differs (tshark, libpcap)", shb() + idb(1) + _with_trailer(GOOD_EPB, 4),
     r"block at offset 48: trailing length \d+ differs from the leading \d+"),
    ("IDB trailing length differs", shb() + _with_trailer(idb(1), 8) + GOOD_EPB, r"offset 28: trailing length"),
    ("SHB trailing length differs", _with_trailer(shb(), 4) + idb(1) + GOOD_EPB, r"offset 0: trailing length"),
    ("unknown block trailing length differs", shb() + idb(1) + _with_trailer(other_block(0x0BAD, b"x" * 8), 4)
     + GOOD_EPB, r"offset 48: trailing length"),
    ("SPB shorter than 16 (tshark, libpcap)", shb() + idb(1) + struct.pack("<III", 3, 12, 12),
     r"simple packet block at offset 48: length 12 is less than 16"),
    ("IDB shorter than 20", shb() + _block(1, struct.pack("<I", 1)) + GOOD_EPB,
     r"interface description block at offset 28: length 16 is less than 20"),
    ("ISB shorter than 24", shb() + idb(1) + _block(5, struct.pack("<I", 0)) + GOOD_EPB,
     r"interface statistics block at offset 48: length 16 is less than 24"),
    # options
    ("IDB option past the block end (tshark)", shb() + _idb_opts(_opt(9, b"\x06", 40)) + GOOD_EPB,
     r"option 9 at offset 44.*length 40.*past the end of its block"),
    ("IDB option header past the block end", shb() + _idb_opts(b"\x09\x00") + GOOD_EPB,
     r"(option.*offset 44|length 22)"),
    ("EPB option past the block end", shb() + idb(1) + epb(0, 1, PKT, options=_opt(2, b"\0\0\0\0", 64)),
     r"option 2 at offset \d+.*length 64.*past the end"),
    ("if_tsresol of length 2", shb() + _idb_opts(_opt(9, b"\x06\x00") + EOO) + GOOD_EPB,
     r"if_tsresol.*length 2"),
    ("if_tsoffset of length 4", shb() + _idb_opts(_opt(14, b"\0\0\0\0") + EOO) + GOOD_EPB, r"if_tsoffset.*length 4"),
    # if_tsresol beyond what a 64-bit count of units per second holds
    ("if_tsresol 10^-19 (repr)", shb() + idb(1, tsresol=19) + GOOD_EPB, r"if_tsresol.*offset 44.*10\^-19"),
    ("if_tsresol 10^-63 (libpcap)", shb() + idb(1, tsresol=63) + GOOD_EPB, r"if_tsresol.*10\^-63"),
    ("if_tsresol 2^-63 (repr)", shb() + idb(1, tsresol=0x80 | 63) + GOOD_EPB, r"if_tsresol.*2\^-63"),
    ("if_tsresol 2^-64 (libpcap)", shb() + idb(1, tsresol=0x80 | 64) + GOOD_EPB, r"if_tsresol.*2\^-64"),
    ("if_tsresol 2^-127 (libpcap)", shb() + idb(1, tsresol=0xFF) + GOOD_EPB, r"if_tsresol.*2\^-127"),
    # packet blocks
    ("EPB timestamp 2^63 (repr)", shb() + idb(1) + _epb_ts(2**63 + 5),
     r"block at offset 48: timestamp 9223372036854775813 .*beyond"),
    ("OPB for an undescribed interface (tshark)", shb() + idb(1) + opb(2, 1, PKT), r"interface 2 was never described"),
]


@pytest.mark.parametrize("data,pattern", [pytest.param(d, p, id=n) for n, d, p in BAD])
def test_bad_field_is_a_capture_error(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = tmp_path / "bad.cap"
    path.write_bytes(data)
    with pytest.raises(CaptureError, match=pattern):
        with CaptureReader(path, chunk_records=1) as r:
            for _ in r.chunks():
                pass


@pytest.mark.parametrize("data,pattern", [pytest.param(d, p, id=n) for n, d, p in BAD[:6] + BAD[-8:]])
def test_cli_refuses_with_one_line(tmp_path: Path, data: bytes, pattern: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The command line names the problem in one line and exits 2 (nothing read) or 1 (records before it)."""
    path = tmp_path / "bad.cap"
    path.write_bytes(data)
    sa = _sa_file(tmp_path)
    rc = esp_main(["pcap", "decrypt", str(path), str(tmp_path / "out"), "--sa", str(sa), "-q"])
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    assert "Traceback" not in err
    if rc == 2:
        assert err.count("\n") == 1, err
    assert __import__("re").search(pattern, err), err


def test_cli_subprocess_tsresol_19_no_traceback(tmp_path: Path) -> None:
    """The case of the issue as a user runs it: a separate process, exit 2, one line."""
    path = tmp_path / "r19.pcapng"
    path.write_bytes(shb() + idb(1, tsresol=19) + GOOD_EPB)
    sa = _sa_file(tmp_path)
    for fmt in ("pcap", "pcapng"):
        res = subprocess.run([sys.executable, "-m", "esp", "pcap", "decrypt", str(path), str(tmp_path / "o"),
                              "--sa", str(sa), "--format", fmt], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "if_tsresol" in res.stderr, res.stderr


# -- what is accepted ---------------------------------------------------------------------------------------------

GOOD = [
    ("pcap 2.0", _pcap_header(2, 0) + _pcap_rec()),   # libpcap and tshark read 2.0 to 2.4
    ("pcap 2.2", _pcap_header(2, 2) + _pcap_rec()),
    ("pcap 2.3", _pcap_header(2, 3) + _pcap_rec()),
    ("pcap snaplen 0", _pcap_header(snaplen=0) + _pcap_rec()),
    ("pcap FCS bits", _pcap_header(network=1 | 0x10000000 | 0x04000000) + _pcap_rec()),
    ("SHB 1.2 (tshark reads it)", _shb_version(1, 2) + idb(1) + GOOD_EPB),
    ("if_tsresol 10^-18", shb() + idb(1, tsresol=18) + epb(0, 5, PKT)),
    ("if_tsresol 2^-62", shb() + idb(1, tsresol=0x80 | 62) + epb(0, 5, PKT)),
    ("options inside their block", shb() + _idb_opts(_opt(2, b"eth0") + _opt(9, b"\x09") + EOO)
     + epb(0, T0 * 10**9, PKT, options=_opt(1, b"comment") + EOO)),
    ("ISB for an interface", shb() + idb(1) + _block(5, struct.pack("<III", 0, 0, 0)) + GOOD_EPB),
    ("SPB of 16 bytes", shb() + idb(1) + spb(b"")),
]


@pytest.mark.parametrize("data", [pytest.param(d, id=n) for n, d in GOOD])
def test_valid_fields_are_read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "good.cap"
    path.write_bytes(data)
    with CaptureReader(path) as r:
        n = sum(c.count for c in r.chunks())
    assert n == 1
    assert not r.problems


# -- timestamps written to pcap -----------------------------------------------------------------------------------

def _tshark_epochs(tshark: str, path: Path) -> list[Decimal]:
    res = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [Decimal(x) for x in res.stdout.split()]


def _floor(d: Decimal, places: int) -> Decimal:
    q = Decimal(1).scaleb(-places)
    return (d / q).to_integral_value(rounding="ROUND_FLOOR") * q


RESOLUTIONS = [3, 6, 9, 12, 0x80 | 10, 0x80 | 20, 0x80 | 30]


@pytest.mark.parametrize("tsresol", RESOLUTIONS, ids=lambda r: f"2^-{r & 0x7F}" if r & 0x80 else f"10^-{r}")
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_output_timestamps_exact(tmp_path: Path, tsresol: int, nano: bool) -> None:
    """pcapng at any representable resolution to µs or ns pcap: each timestamp is the input's, cut (floor) to
    the output's precision, as tshark reads the input (editcap converts the same way)."""
    tshark = require_tool("tshark")
    units = 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10**tsresol
    fracs = [0, 1, units // 3, units // 2 + 1, units - 1]
    secs = T0 if units <= 10**9 else 0  # 10^-12: a 64-bit count of picoseconds ends in 1970
    ts = [(secs + i) * units + f for i, f in enumerate(fracs)]
    src = tmp_path / "in.pcapng"
    src.write_bytes(shb() + idb(1, tsresol=tsresol) + b"".join(epb(0, t, PKT) for t in ts))
    out = tmp_path / "out.pcap"
    with CaptureReader(src) as r, CaptureWriter(out, r.interfaces, fmt="pcap", nanosecond=nano) as w:
        for c in r.chunks():
            w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
    want = [_floor(Decimal(t) / Decimal(units), 9 if nano else 6) for t in ts]
    if units <= 10**9:  # tshark agrees with the exact value (a check of the test); for 10^-12, Wireshark 4.0
        # multiplies the fraction by 10^9 in 64 bits and wraps (it shows 4.003875820 for 4.999999999999)
        assert [_floor(x, 9 if nano else 6) for x in _tshark_epochs(tshark, src)] == want
    assert _tshark_epochs(tshark, out) == want


def test_pcap_output_applies_if_tsoffset(tmp_path: Path) -> None:
    """if_tsoffset (seconds added to every timestamp of the interface) goes into pcap output, as tshark shows."""
    tshark = require_tool("tshark")
    src = tmp_path / "off.pcapng"
    src.write_bytes(shb() + _idb_opts(_opt(14, struct.pack("<q", 1000)) + EOO)
                    + epb(0, T0 * 10**6 + 7, PKT))
    out = tmp_path / "out.pcap"
    with CaptureReader(src) as r, CaptureWriter(out, r.interfaces, fmt="pcap") as w:
        for c in r.chunks():
            w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
    assert _tshark_epochs(tshark, out) == _tshark_epochs(tshark, src) == [Decimal("1700001000.000007000")]


@pytest.mark.parametrize("ts,tsoffset,bad", [(2**32 * 10**6 + 5, 0, 2), (5, -10, 2), (T0 * 10**6, 2**32, 1)])
def test_pcap_output_refuses_seconds_beyond_32_bits(tmp_path: Path, ts: int, tsoffset: int, bad: int) -> None:
    """pcap holds seconds in 32 unsigned bits: a later (or negative) time is an error naming the record, while
    pcapng output keeps it."""
    src = tmp_path / "far.pcapng"
    src.write_bytes(shb() + _idb_opts(_opt(14, struct.pack("<q", tsoffset)) + EOO)
                    + epb(0, T0 * 10**6, PKT) + epb(0, ts, PKT))
    with CaptureReader(src) as r, CaptureWriter(tmp_path / "o.pcap", r.interfaces, fmt="pcap") as w:
        with pytest.raises(CaptureError, match=rf"record {bad}: timestamp .* 32-bit seconds"):
            for c in r.chunks():
                w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
    with CaptureReader(src) as r, CaptureWriter(tmp_path / "o.pcapng", r.interfaces, fmt="pcapng") as w:
        for c in r.chunks():
            w.write(c.data, c.offsets, c.caplen, c.ts, c.iface)
    with CaptureReader(tmp_path / "o.pcapng") as r2:
        got = [int(t) for c in r2.chunks() for t in c.ts]
        assert got == [T0 * 10**6, ts] and r2.interfaces[0].tsoffset == tsoffset


def test_decrypt_cli_pcap_output_far_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through ``python -m esp pcap decrypt`` (its compiled pcap writer included): the record that pcap cannot
    hold ends the run with the error, nothing wrong is written."""
    src = tmp_path / "far.pcapng"
    src.write_bytes(shb() + idb(1) + epb(0, T0 * 10**6, PKT) + epb(0, 2**33 * 10**6, PKT))
    sa = _sa_file(tmp_path)
    rc = esp_main(["pcap", "decrypt", str(src), str(tmp_path / "o.pcap"), "--sa", str(sa), "--format", "pcap"])
    err = capsys.readouterr().err
    assert rc in (1, 2) and "32-bit seconds" in err and "Traceback" not in err, err
    with CaptureReader(tmp_path / "o.pcap") as r:
        secs = [int(t) // 10**6 for c in r.chunks() for t in c.ts]
    assert all(s == T0 for s in secs)


def test_writer_converts_without_float(tmp_path: Path) -> None:
    """2^-k to 10^-9 is exact integer arithmetic (a float loses the last digits of a 2024 time)."""
    units = 2**30
    t = (T0 + 12345) * units + units - 1
    out = tmp_path / "o.pcap"
    with CaptureWriter(out, [Interface(1, 0, units)], fmt="pcap", nanosecond=True) as w:
        w.write(np.frombuffer(PKT, np.uint8).copy(), np.array([0]), np.array([len(PKT)]), np.array([t]),
                np.array([0]))
    with CaptureReader(out) as r:
        got = [int(x) for c in r.chunks() for x in c.ts]
    assert got == [t * 10**9 // units]
