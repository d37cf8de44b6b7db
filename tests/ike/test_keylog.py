"""The key log is only useful if Wireshark reads it: tshark is the oracle.

Each test builds real protected packets with known keys (using ``cryptography``, independent of espresso's
code paths), writes the key log with :class:`ike.keylog.KeyLog`, points tshark at it as its profile, and checks
that tshark shows the plaintext.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ike.core_config import TrafficSelector
from ike.events import ChildSaEstablished, IkeKeysDerived
from ike.keylog import ESP_TABLE, IKEV2_TABLE, KeyLog, esp_lines, ikev2_line
from tests.support import require_tool

SRC, DST = "192.0.2.1", "192.0.2.2"


# -- packet helpers (no espresso code) -----------------------------------------------------------------


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + payload


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _pcap(path: Path, packets: list[bytes]) -> None:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)  # LINKTYPE_IPV4
    for i, p in enumerate(packets):
        out += struct.pack("<IIII", 1700000000 + i, 0, len(p), len(p)) + p
    path.write_bytes(out)


def _tshark(profile: Path, pcap: Path, prefs: list[str]) -> str:
    tshark = require_tool("tshark")
    env = dict(os.environ, XDG_CONFIG_HOME=str(profile.parent), HOME=str(profile.parent))
    args = [tshark, "-n", "-r", str(pcap), "-V"]
    for p in prefs:
        args += ["-o", p]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _inner_udp(text: bytes) -> bytes:
    return _ipv4("10.98.1.1", "10.98.2.1", 17, _udp(1234, 5678, text))


def _esp_gcm(spi: int, seq: int, key: bytes, salt: bytes, inner: bytes) -> bytes:
    pad = (-(len(inner) + 2)) % 4
    pt = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    iv = os.urandom(8)
    hdr = struct.pack("!II", spi, seq)
    return hdr + iv + AESGCM(key).encrypt(salt + iv, pt, hdr)


def _esp_cbc(spi: int, seq: int, key: bytes, akey: bytes, inner: bytes, triple_des: bool = False) -> bytes:
    """AES-CBC with HMAC-SHA-256-128, or 3DES-CBC (RFC 2451: 8-byte blocks and IV) with HMAC-SHA-1-96."""
    block = 8 if triple_des else 16
    pad = (-(len(inner) + 2)) % block
    pt = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    iv = os.urandom(block)
    enc = Cipher(TripleDES(key) if triple_des else algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = struct.pack("!II", spi, seq) + iv + enc.update(pt) + enc.finalize()
    if triple_des:
        return body + hmac.new(akey, body, hashlib.sha1).digest()[:12]
    return body + hmac.new(akey, body, hashlib.sha256).digest()[:16]


def _child_event(suite: str, enc_out: bytes, enc_in: bytes, integ_out: bytes = b"", integ_in: bytes = b"",
                 spi_out: int = 0xC0FFEE01, spi_in: int = 0xC0FFEE02) -> ChildSaEstablished:
    return ChildSaEstablished(
        ike_id=1, peer="b", child="net", spi_in=spi_in, spi_out=spi_out, suite=suite, esn=False, mode="tunnel",
        local_ts=(TrafficSelector.from_cidr("10.98.1.1/32"),), remote_ts=(TrafficSelector.from_cidr("10.98.2.1/32"),),
        local_addr=(SRC, 4500), remote_addr=(DST, 4500), encap=True, initiator=True, rekey_time=0, life_time=0,
        rekey_bytes=0, life_bytes=0, rekey_packets=0, life_packets=0,
        enc_key_in=enc_in, enc_key_out=enc_out, integ_key_in=integ_in, integ_key_out=integ_out)


# -- formats --------------------------------------------------------------------------------------------


def test_ikev2_line_format() -> None:
    ev = IkeKeysDerived(ike_id=1, peer="b", spi_i=0x0102030405060708, spi_r=0xA0, encr=20, encr_key_bits=128,
                        integ=0, encr_name="aes128gcm16", integ_name="", sk_ei=b"\x01" * 20, sk_er=b"\x02" * 20,
                        sk_ai=b"", sk_ar=b"")
    assert ikev2_line(ev) == (
        "0102030405060708,00000000000000a0," + "01" * 20 + "," + "02" * 20
        + ',"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"')


def test_esp_lines_format() -> None:
    ev = _child_event("aes256-sha256", b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32)
    out, inn = esp_lines(ev)
    assert out == ('"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-CBC [RFC3602]","0x' + "11" * 32
                   + '","HMAC-SHA-256-128 [RFC4868]","0x' + "33" * 32 + '"')
    assert inn.startswith('"IPv4","192.0.2.2","192.0.2.1","0xc0ffee02",')
    # an IKEv1 SA with ESP_3DES (named by its configuration): Wireshark's RFC 2451 row
    out, _ = esp_lines(_child_event("3des-sha1", b"\x11" * 24, b"\x22" * 24, b"\x33" * 20, b"\x44" * 20))
    assert '"TripleDES-CBC [RFC2451]","0x' + "11" * 24 + '","HMAC-SHA-1-96 [RFC2404]"' in out


def test_unsupported_algorithms_become_comments(tmp_path: Path) -> None:
    with KeyLog(tmp_path) as log:
        log.record(_child_event("chacha20poly1305", b"\x01" * 36, b"\x02" * 36))
        log.record(IkeKeysDerived(ike_id=1, peer="b", spi_i=1, spi_r=2, encr=28, encr_key_bits=256, integ=0,
                                  encr_name="chacha20poly1305", integ_name="", sk_ei=b"k" * 36, sk_er=b"k" * 36,
                                  sk_ai=b"", sk_ar=b""))
        log.record("not an event")
    esp = (tmp_path / ESP_TABLE).read_text()
    ike = (tmp_path / IKEV2_TABLE).read_text()
    assert esp.startswith("# CHILD_SA c0ffee02_i c0ffee01_o") and "0101" not in esp
    assert ike.startswith("# IKE_SA 0000000000000001_i") and "6b6b" not in ike


def test_files_are_private_and_appended(tmp_path: Path) -> None:
    (tmp_path / ESP_TABLE).write_text("# existing\n")
    os.chmod(tmp_path / ESP_TABLE, 0o644)
    with KeyLog(tmp_path) as log:
        log.record(_child_event("aes128gcm16", b"\x01" * 20, b"\x02" * 20))
        assert "0x" not in repr(log)
    for name in (ESP_TABLE, IKEV2_TABLE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    lines = (tmp_path / ESP_TABLE).read_text().splitlines()
    assert lines[0] == "# existing" and len(lines) == 3


# -- tshark as the oracle -------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256-sha256", "3des-sha1"])
def test_tshark_decrypts_esp_with_our_table(tmp_path: Path, suite: str) -> None:
    profile = tmp_path / "wireshark"
    if suite == "aes128gcm16":
        ko, ki = os.urandom(20), os.urandom(20)
        ev = _child_event(suite, ko, ki)
        esp_out = _esp_gcm(ev.spi_out, 1, ko[:16], ko[16:], _inner_udp(b"outbound secret"))
        esp_in = _esp_gcm(ev.spi_in, 1, ki[:16], ki[16:], _inner_udp(b"inbound secret!"))
    else:
        tdes = suite.startswith("3des")
        ko, ki = (os.urandom(24 if tdes else 32) for _ in range(2))
        ao, ai = (os.urandom(20 if tdes else 32) for _ in range(2))
        ev = _child_event(suite, ko, ki, ao, ai)
        esp_out = _esp_cbc(ev.spi_out, 1, ko, ao, _inner_udp(b"outbound secret"), tdes)
        esp_in = _esp_cbc(ev.spi_in, 1, ki, ai, _inner_udp(b"inbound secret!"), tdes)
    with KeyLog(profile) as log:
        (profile / ESP_TABLE).open("a").write("# a comment line Wireshark must skip\n")
        log.record(ev)
    pcap = tmp_path / "esp.pcap"
    # One plain ESP packet, one UDP-encapsulated (RFC 3948, as with NAT-T).
    _pcap(pcap, [_ipv4(SRC, DST, 50, esp_out), _ipv4(DST, SRC, 17, _udp(4500, 4500, esp_in))])
    text = _tshark(profile, pcap, ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"])
    assert b"outbound secret".hex() in text.replace(" ", "") or "outbound secret" in text, text
    assert text.count("User Datagram Protocol, Src Port: 1234, Dst Port: 5678") == 2, text
    if suite != "aes128gcm16":
        assert "[correct]" in text, text


def _ike_auth_message(spi_i: int, spi_r: int, ev_kind: str, sk_e: bytes, sk_a: bytes) -> bytes:
    idi = struct.pack("!BBH", 0, 0, 4 + 4 + 6) + bytes([2, 0, 0, 0]) + b"a.test"  # IDi, FQDN
    if ev_kind == "gcm":
        iv = os.urandom(8)
        pad = 0
        pt = idi + bytes([pad])
        sk_len = 4 + 8 + len(pt) + 16
        total = 28 + sk_len
        hdr = struct.pack("!QQBBBBII", spi_i, spi_r, 46, 0x20, 35, 0x08, 1, total)
        skh = struct.pack("!BBH", 35, 0, sk_len)
        ct = AESGCM(sk_e[:16]).encrypt(sk_e[16:] + iv, pt, hdr + skh)
        return hdr + skh + iv + ct
    iv = os.urandom(16)
    pad = (-(len(idi) + 1)) % 16
    pt = idi + bytes(pad) + bytes([pad])
    enc = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).encryptor()
    ct = enc.update(pt) + enc.finalize()
    sk_len = 4 + 16 + len(ct) + 16
    total = 28 + sk_len
    hdr = struct.pack("!QQBBBBII", spi_i, spi_r, 46, 0x20, 35, 0x08, 1, total)
    skh = struct.pack("!BBH", 35, 0, sk_len)
    body = hdr + skh + iv + ct
    return body + hmac.new(sk_a, body, hashlib.sha256).digest()[:16]


def ike_keys_event(kind: str) -> IkeKeysDerived:
    """Random keys of an IKE_SA with AES-GCM-16 ("gcm") or AES-256-CBC/HMAC-SHA-256 ("cbc")."""
    spi_i, spi_r = int.from_bytes(os.urandom(8), "big"), int.from_bytes(os.urandom(8), "big")
    if kind == "gcm":
        return IkeKeysDerived(ike_id=1, peer="b", spi_i=spi_i, spi_r=spi_r, encr=20, encr_key_bits=128, integ=0,
                              encr_name="aes128gcm16", integ_name="", sk_ei=os.urandom(20), sk_er=os.urandom(20),
                              sk_ai=b"", sk_ar=b"")
    return IkeKeysDerived(ike_id=1, peer="b", spi_i=spi_i, spi_r=spi_r, encr=12, encr_key_bits=256, integ=12,
                          encr_name="aes256", integ_name="sha256", sk_ei=os.urandom(32), sk_er=os.urandom(32),
                          sk_ai=os.urandom(32), sk_ar=os.urandom(32))


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["gcm", "cbc"])
def test_tshark_decrypts_ike_with_our_table(tmp_path: Path, kind: str) -> None:
    profile = tmp_path / "wireshark"
    ev = ike_keys_event(kind)
    spi_i, spi_r = ev.spi_i, ev.spi_r
    with KeyLog(profile) as log:
        log.record(ev)
    msg = _ike_auth_message(spi_i, spi_r, kind, ev.sk_ei, ev.sk_ai)
    pcap = tmp_path / "ike.pcap"
    _pcap(pcap, [_ipv4(SRC, DST, 17, _udp(500, 500, msg))])
    text = _tshark(profile, pcap, [])
    assert "Decrypted Data" in text or "Payload: Identification - Initiator" in text, text
    assert "Identification - Initiator" in text and "a.test" in text, text
    if kind == "cbc":
        assert "[correct]" in text, text



def test_key_log_on_a_file_raises_a_clear_error(tmp_path: Path) -> None:
    from ike.keylog import KeyLogError
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(KeyLogError, match=r"^key log: .*file exists and is not a directory"):
        KeyLog(f)
