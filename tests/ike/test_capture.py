"""python -m ike pcap: IKE messages of a capture decrypted with Wireshark's table and shown as charon logs them.

Messages are built with ``cryptography`` (tests/ike/test_keylog.py's helpers, independent of espresso's protector);
tshark reads both the original with the key table and the decrypted output without keys, and must show the same
exchanges and payloads. A real espresso<->charon session is checked in tests/interop/test_ike_strongswan.py.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.capture import CaptureKeyError, load_ike_keys, parse_ike_table, read_ike
from ike.events import IkeKeysDerived
from ike.keylog import KeyLog
from tests.support import require_tool

from .test_keylog import DST, SRC, _ike_auth_message, _ipv4, _pcap, _udp, ike_keys_event

ROOT = Path(__file__).resolve().parents[2]


def _session(tmp_path: Path, kind: str) -> tuple[Path, Path, IkeKeysDerived]:
    ev = ike_keys_event(kind)
    spi_i, spi_r = ev.spi_i, ev.spi_r
    keys = tmp_path / "keys"
    with KeyLog(keys) as log:
        log.record(ev)
    pcap = tmp_path / "ike.pcap"
    msg = _ike_auth_message(spi_i, spi_r, kind, ev.sk_ei, ev.sk_ai)
    _pcap(pcap, [_ipv4(SRC, DST, 17, _udp(500, 500, msg)), _ipv4(SRC, DST, 17, _udp(4500, 4500, b"\0\0\0\0" + msg))])
    return pcap, keys, ev


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ike", "pcap", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("kind", ["gcm", "cbc"])
def test_show_decrypts_and_prints_like_charon(tmp_path: Path, kind: str) -> None:
    pcap, keys, ev = _session(tmp_path, kind)
    proc = _cli("show", str(pcap), "--keys", str(keys))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"#1 received packet: from {SRC}[500] to {DST}[500]" in out
    assert f"#2 received packet: from {SRC}[4500] to {DST}[4500]" in out
    assert out.count("parsed IKE_AUTH request 1 [ IDi ]") == 2, out
    assert "IDi 'a.test'" in out and f"{ev.spi_i:016x}_i" in out
    assert "2 IKE messages, 2 decrypted" in proc.stderr


def test_show_without_keys_says_so(tmp_path: Path) -> None:
    pcap, _keys, ev = _session(tmp_path, "gcm")
    proc = _cli("show", str(pcap))
    assert proc.returncode == 0, proc.stderr
    assert f"encrypted, no keys for SPIs {ev.spi_i:016x}_i" in proc.stdout


def test_wrong_keys_are_a_counted_line_not_a_crash(tmp_path: Path) -> None:
    pcap, keys, ev = _session(tmp_path, "cbc")
    table = keys / "ikev2_decryption_table"
    row = table.read_text().split(",")
    row[5] = os.urandom(32).hex()  # SK_ai: the ICV no longer verifies
    table.write_text(",".join(row))
    packets = list(read_ike(pcap, load_ike_keys(keys)[0]))
    assert [p.message for p in packets] == [None, None]
    assert all("does not decode" in p.note and "integrity" in p.note for p in packets)


@pytest.mark.parametrize("row,problem", [
    ("1,2,3", "3 fields"),
    ("zz,0000000000000002,00,00,\"AES-CBC-128 [RFC3602]\",00,00,\"HMAC_SHA2_256_128 [RFC4868]\"", "SPIi is not hex"),
    ("0000000000000001,0000000000000002,00,00,\"ROT13\",00,00,\"NONE [RFC4306]\"", "unknown encryption"),
    ("0000000000000001,0000000000000002,00,00,\"AES-CBC-128 [RFC3602]\",00,00,\"HMAC_SHA2_256_128 [RFC4868]\"",
     "16-byte SK_e"),
])
def test_bad_tables_are_refused_with_line_and_field(row: str, problem: str) -> None:
    with pytest.raises(CaptureKeyError, match=problem) as info:
        parse_ike_table(row + "\n", "t")
    assert str(info.value).startswith("t:1:")


def test_rows_espresso_cannot_decrypt_are_warnings(tmp_path: Path) -> None:
    row = ("0000000000000001,0000000000000002,00,00,\"3DES [RFC2451]\",00,00,\"HMAC_SHA1_96 [RFC2404]\"")
    keys, warnings = parse_ike_table(row, "t")
    assert keys == {} and "3DES" in warnings[0]


def test_cli_refuses_a_missing_table_on_one_line(tmp_path: Path) -> None:
    pcap, _keys, _ev = _session(tmp_path, "gcm")
    proc = _cli("show", str(pcap), "--keys", str(tmp_path))
    assert proc.returncode == 2 and "no ikev2_decryption_table" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["gcm", "cbc"])
def test_decrypted_capture_reads_in_tshark_without_keys(tmp_path: Path, kind: str) -> None:
    tshark = require_tool("tshark")
    pcap, keys, _ev = _session(tmp_path, kind)
    out = tmp_path / "clear.pcap"
    proc = _cli("decrypt", str(pcap), str(out), "--keys", str(keys))
    assert proc.returncode == 0, proc.stderr
    assert "2 IKE messages" in proc.stderr
    env = dict(os.environ, HOME=str(tmp_path / "nohome"), XDG_CONFIG_HOME=str(tmp_path / "nohome"))
    text = subprocess.run([tshark, "-n", "-r", str(out), "-V"], capture_output=True, text=True, timeout=60,
                          env=env).stdout
    assert text.count("Payload: Identification - Initiator") == 2 and "a.test" in text, text
    assert "Encrypted and Authenticated" not in text


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The README's ``python -m ike pcap`` block, run literally in a directory holding session.pcap and keys/."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "python -m ike pcap" in b)
    pcap, _keys, _ev = _session(tmp_path, "cbc")
    pcap.rename(tmp_path / "session.pcap")
    for line in block.strip().splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[:4] == ["python", "-m", "ike", "pcap"], line
        proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 0, (line, proc.stderr)
    assert (tmp_path / "clear.pcap").stat().st_size > 0


def _budget(default: int) -> int:
    return int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", default))


def _sealed(spi_i: int, spi_r: int, key: bytes, first_inner: int, inner: bytes) -> bytes:
    """An IKE_AUTH request whose SK payload (AES-GCM-16, sealed with ``cryptography``) carries ``inner``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv, pt = os.urandom(8), inner + b"\0"
    sk_len = 4 + 8 + len(pt) + 16
    hdr = struct.pack("!QQBBBBII", spi_i, spi_r, 46, 0x20, 35, 0x08, 1, 28 + sk_len)
    skh = struct.pack("!BBH", first_inner, 0, sk_len)
    return hdr + skh + iv + AESGCM(key[:16]).encrypt(key[16:] + iv, pt, hdr + skh)


@settings(max_examples=_budget(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_messages_in_a_capture_are_lines_not_exceptions(tmp_path: Path, data: st.DataObject) -> None:
    """Authenticated but malformed inner payloads, damaged headers, fragments out of order: every datagram
    becomes a line of ``show``, never an exception."""
    spi_i, spi_r, key = 0x1111, 0x2222, bytes(range(20))
    table = (f"{spi_i:016x},{spi_r:016x},{key.hex()},{key.hex()},\"AES-GCM-128 with 16 octet ICV [RFC5282]\","
             ",,\"NONE [RFC4306]\"")
    keys, _ = parse_ike_table(table)
    packets = []
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["inner", "outer", "skf"]))
        inner = data.draw(st.binary(max_size=120))
        first = data.draw(st.sampled_from([35, 36, 37, 39, 41, 44, 45, 33, 0, 200]))
        msg = _sealed(spi_i, spi_r, key, first, inner)
        if kind == "outer":
            pos = data.draw(st.integers(0, len(msg) - 1))
            msg = msg[:pos] + bytes([data.draw(st.integers(0, 255))]) + msg[pos + 1:]
        elif kind == "skf":  # turn the SK into an SKF with a drawn number/total
            n, total = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
            msg = msg[:16] + bytes([53]) + msg[17:28] + msg[28:32] + struct.pack("!HH", n, total) + msg[32:]
            msg = msg[:24] + struct.pack("!I", len(msg)) + msg[28:]
            msg = msg[:30] + struct.pack("!H", len(msg) - 28) + msg[32:]
        packets.append(_ipv4(SRC, DST, 17, _udp(500, 500, msg)))
    pcap = tmp_path / f"h{data.draw(st.integers(0, 10**9))}.pcap"
    _pcap(pcap, packets)
    from ike.capture import show
    out = io.StringIO()
    counts = show(pcap, keys, out)
    assert counts["messages"] == len(packets)
    assert out.getvalue().count("received packet") == len(packets)
