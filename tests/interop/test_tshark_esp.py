"""tshark as the oracle for ``pcap encrypt``/``pcap decrypt`` and for the esp_sa files espresso writes.

One capture holds a tunnel-mode SA for every suite Wireshark 4.0 decrypts, plus transport-mode and
UDP-encapsulated SAs; tshark reads it with an esp_sa table that espresso wrote into a private profile, and must
decrypt every packet to the same inner bytes as espresso's own decrypt (and, for HMAC suites, find every ICV
good). ChaCha20-Poly1305, AES-CCM and AES-GMAC are not in Wireshark 4.0's ESP dissector, so they are not here.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from esp.pcap.sa_files import SaEntry, dump_wireshark, parse_toml, wireshark_supports
from esp.pcap import CaptureReader, decrypt_file, encrypt_file
from tests.esp.pcap_builders import Rec, ether, ipv4, pcap_file, udp
from tests.support import require_tool

pytestmark = pytest.mark.interop

SUITES = ["aes128gcm16", "aes256gcm16", "aes192gcm16", "aes128gcm12", "aes256gcm8", "aes128-sha1",
          "aes256-sha256", "aes128-sha384", "aes256-sha512", "aes192-sha256", "aes128ctr-sha256",
          "aes256ctr-sha1", "null-sha256", "null-sha1"]


def _key(n: int, seed: int) -> str:
    return "0x" + bytes((seed * 31 + i * 7) & 0xFF for i in range(n)).hex()


def _sa_text(k: int, suite: str, mode: str, encap: bool, src: str, dst: str, sel: str) -> str:
    from esp.suites import parse_suite
    s = parse_suite(suite)
    lines = ["[[sa]]", f"spi = {0x5000 + k}", f'suite = "{suite}"', f'src = "{src}"', f'dst = "{dst}"',
             f'mode = "{mode}"', f"selector = {{ {sel} }}"]
    if s.enc_keymat_len:
        lines.append(f'enc_key = "{_key(s.enc_keymat_len, k)}"')
    if s.integ_key_len:
        lines.append(f'integ_key = "{_key(s.integ_key_len, k + 100)}"')
    if encap:
        lines.append("encap = true")
    return "\n".join(lines) + "\n\n"


def _tshark(tshark: str, capture, esp_sa_text: str, tmp_path) -> list[list[str]]:
    home = tmp_path / "wshome"
    prof = home / "wireshark" / "profiles" / "espresso-test"
    prof.mkdir(parents=True)
    (prof / "esp_sa").write_text(esp_sa_text)
    (prof / "preferences").write_text("esp.enable_encryption_decode: TRUE\n"
                                      "esp.enable_authentication_check: TRUE\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "HOME": str(home)}
    res = subprocess.run([tshark, "-n", "-C", "espresso-test", "-r", str(capture), "-T", "fields", "-E", "occurrence=l",
                          "-e", "esp.spi", "-e", "esp.contained_data", "-e", "esp.icv_good", "-e", "esp.sequence"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()]


def _udp_packets(n: int) -> list[bytes]:
    """UDP between ports no dissector claims, so tshark shows the ESP trailer and ICV after the inner packet
    (a payload a dissector finds malformed, e.g. junk on port 53, would end its ESP dissection early)."""
    return [ipv4("10.1.0.1", "10.2.0.2", 17, udp(30000 + i, 40000, bytes((i * 3 + k) & 0xFF for k in range(i * 29 % 200))),
                 ident=i) for i in range(n)]


def _packets(path) -> list[bytes]:
    out = []
    with CaptureReader(path) as r:
        for c in r.chunks():
            for i in range(c.count):
                o = int(c.offsets[i])
                out.append(c.data[o:o + int(c.caplen[i])].tobytes())
    return out


def test_tshark_decrypts_what_espresso_encrypts_for_every_wireshark_suite(tmp_path):
    tshark = require_tool("tshark")
    # Each SA takes the plaintext of one UDP source port (its selector), so each suite gets a few packets.
    udp_pk = _udp_packets(3 * (len(SUITES) + 3))
    per = 3
    blocks, toml = [], []
    for k, suite in enumerate(SUITES):
        assert wireshark_supports(suite)
        mine = udp_pk[k * per:(k + 1) * per]
        ports = [int.from_bytes(p[20:22], "big") for p in mine]
        sel = f'proto = "udp", sport = "{min(ports)}-{max(ports)}"'
        toml.append(_sa_text(k, suite, "tunnel", False, "192.0.2.1", "192.0.2.2", sel))
        blocks += mine
    k = len(SUITES)
    extra = udp_pk[k * per:(k + 3) * per]
    for j, (suite, mode, encap) in enumerate([("aes128gcm16", "transport", False), ("aes256-sha256", "tunnel", True),
                                               ("aes128gcm16", "transport", True)]):
        mine = extra[j * per:(j + 1) * per]
        ports = [int.from_bytes(p[20:22], "big") for p in mine]
        sel = f'proto = "udp", sport = "{min(ports)}-{max(ports)}"'
        src, dst = ("10.1.0.1", "10.2.0.2") if mode == "transport" else ("192.0.2.1", "192.0.2.2")
        toml.append(_sa_text(k + j, suite, mode, encap, src, dst, sel))
        blocks += mine
    sas: list[SaEntry] = parse_toml("".join(toml)).entries
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(pcap_file([Rec(ether(p), 1_700_000_000 + i) for i, p in enumerate(blocks)]))
    s = encrypt_file(plain, tmp_path / "esp.pcap", sas, drop_other=True)
    assert s.exit_code == 0 and s.written == len(blocks) and all(x.packets == per for x in s.per_sa), s.format()

    ours = decrypt_file(tmp_path / "esp.pcap", tmp_path / "dec.pcap", sas)
    assert ours.exit_code == 0 and ours.written == len(blocks), ours.format()
    decrypted = _packets(tmp_path / "dec.pcap")
    assert decrypted == blocks

    rows = _tshark(tshark, tmp_path / "esp.pcap", dump_wireshark(sas), tmp_path)
    assert len(rows) == len(blocks)
    by_spi = {e.spi: e for e in sas}
    for row, inner in zip(rows, decrypted):
        spi_s, contained, icv_good, seq = (row + ["", "", "", ""])[:4]
        e = by_spi[int(spi_s, 16)]
        assert contained, f"tshark did not decrypt SPI {spi_s} ({e.suite.name}, {e.mode})"
        want = inner if e.mode == "tunnel" else inner[(inner[0] & 0x0F) * 4:]  # transport: the payload only
        assert bytes.fromhex(contained.replace(":", "")) == want, (e.suite.name, e.mode, e.encap)
        if not e.suite.aead:
            assert icv_good == "1", (e.suite.name, "ICV not good for tshark")
        assert 1 <= int(seq) <= per


def test_tshark_flags_a_bad_icv_that_espresso_rejects(tmp_path):
    tshark = require_tool("tshark")
    sas = parse_toml(_sa_text(1, "aes256-sha256", "tunnel", False, "192.0.2.1", "192.0.2.2", 'proto = "udp"')).entries
    pk = _udp_packets(2)
    plain = tmp_path / "p.pcap"
    plain.write_bytes(pcap_file([Rec(ether(p)) for p in pk]))
    encrypt_file(plain, tmp_path / "e.pcap", sas)
    frames = _packets(tmp_path / "e.pcap")
    bad = bytearray(frames[1])
    bad[-1] ^= 0x80  # last ICV byte
    (tmp_path / "t.pcap").write_bytes(pcap_file([Rec(frames[0]), Rec(bytes(bad))]))
    rows = _tshark(tshark, tmp_path / "t.pcap", dump_wireshark(sas), tmp_path)
    assert [r[2] for r in rows] == ["1", "0"]
    s = decrypt_file(tmp_path / "t.pcap", None, sas)
    assert s.per_sa[0].packets == 1 and s.per_sa[0].count("AUTH_FAILED") == 1 and s.exit_code == 1


@pytest.mark.parametrize("fmt", ["pcapng", "nsecpcap"])
def test_captures_rewritten_by_wireshark_tools_decrypt_the_same(tmp_path, fmt):
    """editcap (Wireshark's own writer: SHB/IDB options, if_tsresol, nanosecond pcap) and mergecap (several
    interfaces in one pcapng) produce files our reader takes, with the same packets and timestamps."""
    editcap = require_tool("editcap")
    mergecap = require_tool("mergecap")
    sas = parse_toml(_sa_text(2, "aes128gcm16", "tunnel", False, "192.0.2.1", "192.0.2.2", 'proto = "udp"')).entries
    pk = _udp_packets(20)
    plain = tmp_path / "p.pcap"
    plain.write_bytes(pcap_file([Rec(ether(p), 1_700_000_000 + i, i * 1000 + 7) for i, p in enumerate(pk)]))
    encrypt_file(plain, tmp_path / "e.pcap", sas)
    out = tmp_path / f"e.{fmt}"
    res = subprocess.run([editcap, "-F", fmt, str(tmp_path / "e.pcap"), str(out)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    s = decrypt_file(out, tmp_path / "d.pcapng", sas, fmt="pcapng")
    assert s.per_sa[0].packets == 20 and s.exit_code == 0, s.format()
    ref = decrypt_file(tmp_path / "e.pcap", tmp_path / "d2.pcapng", sas, fmt="pcapng")
    assert ref.per_sa[0].packets == 20

    def with_ts(path):
        rows = []
        with CaptureReader(path) as r:
            for c in r.chunks():
                for i in range(c.count):
                    o = int(c.offsets[i])
                    res_ = r.interfaces[int(c.iface[i])].tsresol
                    rows.append((c.data[o:o + int(c.caplen[i])].tobytes(), int(c.ts[i]) * (10**9 // res_)))
        return rows

    assert with_ts(tmp_path / "d.pcapng") == with_ts(tmp_path / "d2.pcapng")
    # two captures merged into one pcapng with two interfaces (Ethernet and raw IP)
    raw = tmp_path / "raw.pcap"
    raw.write_bytes(pcap_file([Rec(p, 1_700_000_000 + i, 500) for i, p in enumerate(pk)], linktype=101))
    encrypt_file(raw, tmp_path / "eraw.pcap", sas)
    merged = tmp_path / "m.pcapng"
    res = subprocess.run([mergecap, "-F", "pcapng", "-w", str(merged), str(tmp_path / "e.pcap"),
                          str(tmp_path / "eraw.pcap")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    with CaptureReader(merged) as r:
        list(r.chunks())
        assert sorted(i.linktype for i in r.interfaces) == [1, 101]
    s = decrypt_file(merged, tmp_path / "dm.pcapng", sas, replay_window=0)
    assert s.per_sa[0].packets == 40 and s.exit_code == 0, s.format()
