"""Every encryption x authentication row of Wireshark 4.0's esp_sa table, with tshark as the oracle (issue 15).

Inbound: a capture whose ESP packets this test encrypts itself with the ``cryptography`` library and the
standard library's HMACs (independent of espresso), one tunnel-mode SA per row, and an esp_sa table written here
in Wireshark's own spelling (with wildcard addresses). tshark and ``python -m esp pcap decrypt`` read it with that
table: both must give back every inner packet, byte for byte, and tshark must find every checked ICV good.
Outbound: ``python -m esp pcap encrypt --write-esp-sa`` encrypts the plaintext with the same rows from a TOML
file and writes the esp_sa table; tshark decrypts the result with that table alone.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import subprocess
import sys

import pytest
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from esp.pcap import decrypt_file
from esp.pcap.capture_suites import WIRESHARK_AUTHENTICATION, WIRESHARK_ENCRYPTION
from esp.pcap.sa_files import load_keyfile, parse_wireshark
from tests.esp.pcap_builders import Rec, ether, ipv4, pcap_file
from tests.interop.test_tshark_esp import _packets, _tshark, _udp_packets
from tests.support import require_tool

pytestmark = pytest.mark.interop

# (Wireshark name, key bytes, TOML token, IV bytes, block) for each encryption row and key size tried.
ENCS = [
    ("NULL", 0, "null", 0, 4),
    ("AES-CBC [RFC3602]", 16, "aes128", 16, 16),
    ("AES-CBC [RFC3602]", 32, "aes256", 16, 16),
    ("AES-CTR [RFC3686]", 20, "aes128ctr", 8, 4),
    ("AES-CTR [RFC3686]", 36, "aes256ctr", 8, 4),
    ("TripleDES-CBC [RFC2451]", 24, "3des", 8, 8),
    ("DES-CBC [RFC2405]", 8, "des", 8, 8),
    ("CAST5-CBC [RFC2144]", 16, "cast128", 8, 8),
    ("BLOWFISH-CBC [RFC2451]", 16, "blowfish128", 8, 8),
]
GCMS = [("AES-GCM with 8 octet ICV [RFC4106]", 8, "aes128gcm8"), ("AES-GCM with 12 octet ICV [RFC4106]", 12,
        "aes128gcm12"), ("AES-GCM with 16 octet ICV [RFC4106]", 16, "aes128gcm16"), ("AES-GCM [RFC4106]", 16, None)]
# (Wireshark name, TOML token, hash or None, ICV bytes, key bytes)
AUTHS = [
    ("NULL", "none", None, 0, 0),
    ("HMAC-SHA-1-96 [RFC2404]", "sha1", "sha1", 12, 20),
    ("HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]", "sha256_96", "sha256", 12, 32),
    ("HMAC-SHA-256-128 [RFC4868]", "sha256", "sha256", 16, 32),
    ("HMAC-SHA-384-192 [RFC4868]", "sha384", "sha384", 24, 48),
    ("HMAC-SHA-512-256 [RFC4868]", "sha512", "sha512", 32, 64),
    ("HMAC-MD5-96 [RFC2403]", "md5", "md5", 12, 16),
    ("MAC-RIPEMD-160-96 [RFC2857]", "ripemd160", "ripemd160", 12, 20),
] + [(f"ANY {b} bit authentication [no checking]", f"any{b}", None, b // 8, 0) for b in (64, 96, 128, 192, 256)]
PER = 2


def _ripemd_ok() -> bool:
    try:
        hashlib.new("ripemd160")
    except ValueError:
        return False
    return True


def rows() -> list[tuple]:
    """(enc name, enc key len, auth name, toml suite or None, iv, block, hash, icv, auth key len, aead)."""
    out = []
    for enc, klen, tok, iv, block in ENCS:
        for auth, atok, h, icv, alen in AUTHS:
            if h == "ripemd160" and not _ripemd_ok():
                continue
            out.append((enc, klen, auth, f"{tok}-{atok}", iv, block, h, icv, alen, False))
    for enc, icv, tok in GCMS:
        out.append((enc, 20, "NULL", tok, 8, 4, None, icv, 0, True))
    return out


def test_the_rows_are_wiresharks_own():
    """The names the rows are spelt with are the strings in this tshark's libwireshark."""
    tshark = require_tool("tshark")
    lib = subprocess.run(["ldd", tshark], capture_output=True, text=True).stdout
    path = next((ln.split("=>")[1].split()[0] for ln in lib.splitlines() if "libwireshark.so" in ln), None)
    if path is None:
        pytest.skip("libwireshark not found beside tshark")
    blob = open(path, "rb").read()
    for name in WIRESHARK_ENCRYPTION + WIRESHARK_AUTHENTICATION:
        assert name.encode() + b"\0" in blob, name


def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 37 + i * 11 + 1) & 0xFF for i in range(n))


def _cipher(enc: str, key: bytes, iv: bytes):
    if enc.startswith("AES-CBC"):
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    if enc.startswith("AES-CTR"):
        return Cipher(algorithms.AES(key[:-4]), modes.CTR(key[-4:] + iv + b"\0\0\0\1"))
    if enc.startswith("TripleDES"):
        return Cipher(decrepit.TripleDES(key), modes.CBC(iv))
    if enc.startswith("DES"):
        return Cipher(decrepit.TripleDES(key * 3), modes.CBC(iv))
    if enc.startswith("CAST5"):
        return Cipher(decrepit.CAST5(key), modes.CBC(iv))
    if enc.startswith("BLOWFISH"):
        return Cipher(decrepit.Blowfish(key), modes.CBC(iv))
    raise AssertionError(enc)


def esp_packet(row: tuple, spi: int, seq: int, inner: bytes, ekey: bytes, ikey: bytes) -> bytes:
    """RFC 4303 tunnel mode (next header 4), written from the RFCs with the cryptography library."""
    enc, _, _, _, iv_len, block, h, icv, _, aead = row
    pad = (-(len(inner) + 2)) % block
    pt = inner + bytes(range(1, pad + 1)) + bytes((pad, 4))
    iv = os.urandom(iv_len)
    head = struct.pack("!II", spi, seq)
    if aead:
        sealed = AESGCM(ekey[:-4]).encrypt(ekey[-4:] + iv, pt, head)
        return head + iv + sealed[:-16] + sealed[-16:][:icv]  # a shorter GCM tag is the full tag's first bytes
    if enc == "NULL":
        ct = pt
    else:
        e = _cipher(enc, ekey, iv).encryptor()
        ct = e.update(pt) + e.finalize()
    esp = head + iv + ct
    if h is not None:
        esp += hmac.new(ikey, esp, h).digest()[:icv]
    elif icv:
        esp += os.urandom(icv)  # "ANY n bit": an ICV nobody checks
    return esp


def _uat(fields: list[str]) -> str:
    return ",".join('"' + f + '"' for f in fields) + "\n"


def test_tshark_and_espresso_decrypt_every_row_alike(tmp_path):
    tshark = require_tool("tshark")
    table = rows()
    inner = _udp_packets(PER * len(table))
    frames, uat, want = [], ["# This file is automatically generated, DO NOT MODIFY.\n"], {}
    for k, row in enumerate(table):
        enc, klen, auth, _, _, _, _, _, alen, _ = row
        spi = 0x10000 + k
        ekey, ikey = _key(klen, k), _key(alen, k + 500)
        # wildcards as Wireshark reads them: any source, the destination's last octet
        uat.append(_uat(["IPv4", "*", "192.0.2.*", f"0x{spi:08x}", enc, "0x" + ekey.hex() if ekey else "", auth,
                         "0x" + ikey.hex() if ikey else ""]))
        for j in range(PER):
            p = inner[k * PER + j]
            esp = esp_packet(row, spi, j + 1, p, ekey, ikey)
            frames.append(ether(ipv4("198.51.100.1", "192.0.2.2", 50, esp, ident=k)))
            want[(spi, j + 1)] = p
    cap = tmp_path / "rows.pcap"
    cap.write_bytes(pcap_file([Rec(f, 1_700_000_000 + i) for i, f in enumerate(frames)]))
    esp_sa = tmp_path / "esp_sa"
    esp_sa.write_text("".join(uat))
    esp_sa.chmod(0o600)
    kf = parse_wireshark(esp_sa.read_text())
    assert not kf.warnings and len(kf.entries) == len(table)

    # espresso, through the CLI as users run it
    res = subprocess.run([sys.executable, "-m", "esp", "pcap", "decrypt", str(cap), str(tmp_path / "dec.pcap"),
                          "--sa", str(esp_sa), "--mode", "tunnel"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ours = _packets(tmp_path / "dec.pcap")
    assert ours == [want[k] for k in sorted(want)], "espresso's decryption differs from the plaintext"

    rows_ts = _tshark(tshark, cap, "".join(uat), tmp_path)
    assert len(rows_ts) == len(frames)
    for (spi_s, contained, icv_good, seq), row in zip(((r + ["", "", "", ""])[:4] for r in rows_ts),
                                                        (t for t in table for _ in range(PER))):
        spi = int(spi_s, 16)
        if row[0] == "AES-GCM [RFC4106]":
            # Wireshark 4.0 decrypts its deprecated row as counter mode with no ICV (the tag is read as
            # ciphertext, so the trailer it finds is junk); espresso reads it as the 16-octet-ICV row.
            continue
        assert contained, f"tshark did not decrypt {row[0]} / {row[2]}"
        assert bytes.fromhex(contained.replace(":", "")) == want[(spi, int(seq))], (row[0], row[2])
        if row[6] is not None:
            assert icv_good == "1", (row[0], row[2], "tshark finds the ICV bad")


def test_tshark_decrypts_what_espresso_encrypts_for_every_row_with_the_esp_sa_it_writes(tmp_path):
    tshark = require_tool("tshark")
    table = [r for r in rows() if r[3] is not None and not r[3].split("-")[-1].startswith("any")]
    inner = _udp_packets(PER * len(table))
    toml = []
    for k, row in enumerate(table):
        ports = [int.from_bytes(p[20:22], "big") for p in inner[k * PER:(k + 1) * PER]]
        lines = ["[[sa]]", f"spi = {0x20000 + k}", f'suite = "{row[3]}"', 'src = "192.0.2.1"', 'dst = "192.0.2.2"',
                 'mode = "tunnel"', f'selector = {{ proto = "udp", sport = "{min(ports)}-{max(ports)}" }}']
        if row[1]:
            lines.append(f'enc_key = "0x{_key(row[1], k).hex()}"')
        if row[8]:
            lines.append(f'integ_key = "0x{_key(row[8], k + 500).hex()}"')
        toml.append("\n".join(lines) + "\n\n")
    sa = tmp_path / "sas.toml"
    sa.write_text("".join(toml))
    sa.chmod(0o600)
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(pcap_file([Rec(ether(p), 1_700_000_000 + i) for i, p in enumerate(inner)]))
    out_sa = tmp_path / "written_esp_sa"
    res = subprocess.run([sys.executable, "-m", "esp", "pcap", "encrypt", str(plain), str(tmp_path / "esp.pcap"),
                          "--sa", str(sa), "--write-esp-sa", str(out_sa)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert out_sa.stat().st_mode & 0o777 == 0o600
    assert len(load_keyfile(out_sa).entries) == len(table)
    rows_ts = _tshark(tshark, tmp_path / "esp.pcap", out_sa.read_text(), tmp_path)
    assert len(rows_ts) == len(inner)
    for (spi_s, contained, icv_good, _), row, p in zip(((r + ["", "", "", ""])[:4] for r in rows_ts),
                                                      (t for t in table for _ in range(PER)), inner):
        assert contained, f"tshark did not decrypt espresso's {row[3]}"
        assert bytes.fromhex(contained.replace(":", "")) == p, row[3]
        if row[6] is not None:
            assert icv_good == "1", (row[3], "tshark finds espresso's ICV bad")
    # and espresso reads back what it wrote
    s = decrypt_file(tmp_path / "esp.pcap", tmp_path / "back.pcap", load_keyfile(out_sa).entries, mode="tunnel")
    assert s.exit_code == 0 and _packets(tmp_path / "back.pcap") == inner, s.format()
