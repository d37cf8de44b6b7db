"""esp.pcap.sa_files: Wireshark esp_sa tables and the TOML form — parsing, errors with line numbers, round trips."""
from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from esp.pcap.sa_files import (AddressMatch, KeyFileError, PortRange, SaEntry, dump_toml, dump_wireshark, load_keyfile,
                         parse_toml, parse_wireshark, write_keyfile)
from esp.suites import SUITES, parse_suite

K16 = "0x" + bytes(range(16)).hex()
K20 = "0x" + bytes(range(20)).hex()
K32 = "0x" + bytes(range(32)).hex()
K36 = "0x" + bytes(range(36)).hex()
H20 = "0x" + bytes(range(100, 120)).hex()
H32 = "0x" + bytes(range(100, 132)).hex()
H48 = "0x" + bytes(range(100, 148)).hex()
H64 = "0x" + bytes(range(100, 164)).hex()


def _line(enc, ekey, auth, akey, proto="IPv4", src="192.0.2.1", dst="192.0.2.2", spi="0x00001001"):
    return f'"{proto}","{src}","{dst}","{spi}","{enc}","{ekey}","{auth}","{akey}"'


@pytest.mark.parametrize("enc,ekey,auth,akey,suite", [
    ("AES-GCM with 16 octet ICV [RFC4106]", K20, "NULL", "", "aes128gcm16"),
    ("AES-GCM with 16 octet ICV [RFC4106]", K36, "NULL", "", "aes256gcm16"),
    ("AES-GCM with 12 octet ICV [RFC4106]", K20, "NULL", "", "aes128gcm12"),
    ("AES-GCM with 8 octet ICV [RFC4106]", K36, "NULL", "", "aes256gcm8"),
    ("AES-GCM [RFC4106]", K20, "NULL", "", "aes128gcm16"),
    ("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, "aes128-sha1"),
    ("AES-CBC [RFC3602]", K32, "HMAC-SHA-256-128 [RFC4868]", H32, "aes256-sha256"),
    ("AES-CBC [RFC3602]", K16, "HMAC-SHA-384-192 [RFC4868]", H48, "aes128-sha384"),
    ("AES-CBC [RFC3602]", K32, "HMAC-SHA-512-256 [RFC4868]", H64, "aes256-sha512"),
    ("AES-CTR [RFC3686]", K20, "HMAC-SHA-256-128 [RFC4868]", H32, "aes128ctr-sha256"),
    ("AES-CTR [RFC3686]", K36, "HMAC-SHA-1-96 [RFC2404]", H20, "aes256ctr-sha1"),
    ("NULL", "", "HMAC-SHA-256-128 [RFC4868]", H32, "null-sha256"),
])
def test_wireshark_algorithms(enc, ekey, auth, akey, suite):
    kf = parse_wireshark("# comment\n\n" + _line(enc, ekey, auth, akey) + "\n")
    (e,) = kf.entries
    assert e.suite.name == suite and e.spi == 0x1001
    assert e.enc_key == bytes.fromhex(ekey[2:]) and e.integ_key == bytes.fromhex(akey[2:])
    assert e.src.address == "192.0.2.1" and e.origin == "<esp_sa>:3" and e.mode is None
    # and back: the line Wireshark's preferences would save
    assert dump_wireshark([e]).splitlines()[1] == _line(enc if enc != "AES-GCM [RFC4106]" else
                                                        "AES-GCM with 16 octet ICV [RFC4106]", ekey, auth, akey)


def test_wireshark_wildcards_ipv6_and_ascii_keys():
    text = "\n".join([
        _line("AES-CBC [RFC3602]", "0123456789abcdef", "HMAC-SHA-1-96 [RFC2404]", "0123456789abcdefghij",
              src="10.0.*.*", dst="*", spi="*"),
        _line("AES-GCM with 16 octet ICV [RFC4106]", K20, "NULL", "", proto="IPv6", src="2001:db8::1",
              dst="2001:db8::/32", spi="4660"),
    ])
    a, b = parse_wireshark(text).entries
    assert a.spi is None and a.enc_key == b"0123456789abcdef" and a.integ_key == b"0123456789abcdefghij"
    assert a.src.matches("10.0.200.1") and not a.src.matches("10.1.0.1") and not a.src.matches("2001:db8::1")
    assert a.dst.is_any
    assert b.spi == 4660 and b.src.family == 6 and b.dst.matches("2001:db8:ffff::9")


def test_every_wireshark_row_is_read_and_twofish_is_skipped_with_a_reason():
    """Issue 15: rows the data plane would never negotiate (TripleDES, MD5, no integrity, unchecked ICVs) are
    read; Twofish, which no library here implements, is skipped with a warning that says so."""
    text = "\n".join([
        _line("TripleDES-CBC [RFC2451]", "0x" + "11" * 24, "HMAC-SHA-1-96 [RFC2404]", H20),
        _line("AES-CBC [RFC3602]", K16, "HMAC-MD5-96 [RFC2403]", "0x" + "22" * 16),
        _line("AES-CBC [RFC3602]", K16, "NULL", ""),
        _line("AES-CTR [RFC3686]", K20, "NULL", ""),
        _line("NULL", "", "ANY 96 bit authentication [no checking]", ""),
        _line("TWOFISH-CBC", K16, "HMAC-SHA-1-96 [RFC2404]", H20),
        _line("AES-GCM with 16 octet ICV [RFC4106]", K20, "NULL", ""),
    ])
    kf = parse_wireshark(text, "keys")
    assert [e.suite.name for e in kf.entries] == ["3des-sha1", "aes128-md5", "aes128-none", "aes128ctr-none",
                                                  "null-any96", "aes128gcm16"]
    assert len(kf.warnings) == 1 and kf.warnings[0].startswith("keys:6:") and "Twofish" in kf.warnings[0]


def test_the_data_planes_policy_stays_strict():
    """Capture-only rows are not suites the data plane (or IKE) can be configured with."""
    from esp.suites import SUITES, parse_suite
    for name in ("aes128ctr-none", "3des-md5", "3des-none", "aes128-md5", "null-none", "aes128-sha256_96", "des-md5"):
        assert name not in SUITES
        with pytest.raises(ValueError):
            parse_suite(name)


def test_a_3des_row_runs_in_the_compiled_core():
    """3DES-CBC with an HMAC is a data-plane suite (legacy IKEv1 peers that name it), so its capture rows are
    decrypted by the core, not the pure-Python fallback."""
    from esp.pcap.capture_suites import is_compiled, wireshark_names, wireshark_row
    suite = wireshark_row("TripleDES-CBC [RFC2451]", 24, "HMAC-SHA-256-128 [RFC4868]")
    assert suite.name == "3des-sha256" and is_compiled(suite)
    assert wireshark_names(suite) == ("TripleDES-CBC [RFC2451]", "HMAC-SHA-256-128 [RFC4868]")


def test_legacy_ciphers_are_refused_with_a_reason_without_the_legacy_provider(tmp_path):
    """Blowfish and CAST5 live in OpenSSL 3's legacy provider: without it (CRYPTOGRAPHY_OPENSSL_NO_LEGACY)
    the row is skipped with a message that says so, and a TOML file naming it is refused the same way."""
    import os
    import subprocess
    import sys
    code = (
        "from esp.pcap.sa_files import parse_wireshark, parse_toml, KeyFileError\n"
        f"kf = parse_wireshark({_line('BLOWFISH-CBC [RFC2451]', K16, 'NULL', '')!r})\n"
        "print(kf.warnings[0] if kf.warnings else 'NO WARNING')\n"
        "try:\n"
        "    parse_toml('[[sa]]\\nspi = 4096\\nsuite = \"cast128-sha1\"\\nenc_key = \"0x' + '11' * 16 + "
        "'\"\\ninteg_key = \"0x' + '22' * 20 + '\"\\n')\n"
        "    print('ACCEPTED')\n"
        "except KeyFileError as exc:\n"
        "    print(exc)\n")
    env = {**os.environ, "CRYPTOGRAPHY_OPENSSL_NO_LEGACY": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    assert "Blowfish-CBC" in first and "legacy provider" in first
    assert "CAST5-CBC" in second and "legacy provider" in second


@pytest.mark.parametrize("line,reason", [
    ('"IPv4","1.2.3.4","5.6.7.8","0x1001","AES-CBC [RFC3602]"', "5 fields"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20) + ',"x"', "9 fields"),
    (_line("AES-CBC [RFC3602]", K20, "HMAC-SHA-1-96 [RFC2404]", H20), "must be 16, 24 or 32"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H32), "authentication key is 32 bytes"),
    (_line("AES-GCM with 16 octet ICV [RFC4106]", K16, "NULL", ""), "20, 28 or 36"),
    (_line("AES-GCM with 16 octet ICV [RFC4106]", K20, "HMAC-SHA-1-96 [RFC2404]", H20), "AEAD"),
    (_line("AES-XTS", K16, "NULL", ""), "unknown encryption algorithm 'AES-XTS'"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA3", H20), "unknown authentication"),
    (_line("AES-CBC [RFC3602]", "0xabc", "HMAC-SHA-1-96 [RFC2404]", H20), "odd number of hex digits"),
    (_line("AES-CBC [RFC3602]", "0xzz" * 8, "HMAC-SHA-1-96 [RFC2404]", H20), "not hex"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, proto="IPX"), "IPv4 or IPv6"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, src="300.1.1.1"), "not an IPv4/IPv6"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, src="2001:db8::1"), "record says IPv4"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, spi="0xnope"), "SPI"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, spi="0x1ffffffff"), "outside"),
    (_line("AES-CBC [RFC3602]", K16, "HMAC-SHA-1-96 [RFC2404]", H20, spi="7"), "reserved"),
    ('"IPv4","1.2.3.4', "unterminated"),
    ('"IPv4" x "1.2.3.4"', "unexpected character"),
])
def test_wireshark_errors_name_the_line(line, reason):
    text = "# This file is automatically generated, DO NOT MODIFY.\n" + _line(
        "AES-GCM with 16 octet ICV [RFC4106]", K20, "NULL", "") + "\n" + line + "\n"
    with pytest.raises(KeyFileError, match=reason) as ei:
        parse_wireshark(text, "esp_sa")
    assert ei.value.line == 3 and str(ei.value).startswith("esp_sa:3: ")


def test_uat_escapes_round_trip():
    e = parse_wireshark(_line("AES-CBC [RFC3602]", 'ab"c\\def01234567'[:16], "HMAC-SHA-1-96 [RFC2404]",
                              H20).replace('ab"c\\', 'ab\\x22c\\x5c')).entries[0]
    assert e.enc_key == b'ab"c\\def01234567'[:16]
    assert parse_wireshark(dump_wireshark([e])).entries[0].enc_key == e.enc_key


TOML = '''
# two SAs
[[sa]]
name = "site-a"
spi = 0x00001001
suite = "aes256gcm16"
enc_key = "{k36}"
src = "192.0.2.1"
dst = "192.0.2.2"
mode = "tunnel"
encap = true
esn = true
replay_window = 128
initial_seq = 99
selector = {{ src = "10.1.0.0/16", dst = "10.2.0.0/16", proto = "udp", dport = "53" }}

[[sa]]
spi = "0x2002"
suite = "aes128-sha256"
enc_key = "{k16}"
integ_key = "{h32}"
src = "2001:db8::1"
dst = "2001:db8::2"
mode = "transport"
'''.format(k36=K36, k16=K16, h32=H32)


def test_toml_form():
    kf = parse_toml(TOML, "sa.toml")
    a, b = kf.entries
    assert a.name == "site-a" and a.suite.name == "aes256gcm16" and a.encap == (4500, 4500) and a.esn
    assert a.replay_window == 128 and a.initial_seq == 99 and a.mode == "tunnel"
    assert a.selector.proto == 17 and a.selector.dport == PortRange(53, 53) and a.selector.src.matches("10.1.2.3")
    assert a.origin == "sa.toml:3"
    assert b.spi == 0x2002 and b.mode == "transport" and b.src.family == 6 and b.integ_key == bytes.fromhex(H32[2:])
    assert b.effective_selector().src.matches("2001:db8::1")
    again = parse_toml(dump_toml(kf.entries)).entries
    assert again == kf.entries


@pytest.mark.parametrize("mutate,line,reason", [
    (lambda t: t.replace('suite = "aes256gcm16"', 'suite = "aes256gcm17"'), 6, "suite: unknown ESP suite"),
    (lambda t: t.replace('replay_window = 128', 'replay_window = -1'), 13, "replay_window"),
    (lambda t: t.replace('mode = "transport"', 'mode = "tunel"'), 24, "mode: 'tunel' is not tunnel or transport"),
    (lambda t: t.replace(f'integ_key = "{H32}"', 'integ_key = "0x00"'), 21, "integ_key: authentication key is 1 bytes"),
    (lambda t: t.replace('dport = "53"', 'dport = "99999"'), 15, "outside 0-65535"),
    (lambda t: t.replace('esn = true', 'esn = "yes"'), 12, "esn: true or false"),
    (lambda t: t.replace('encap = true', 'colour = "red"'), 11, "colour: unknown key"),
    (lambda t: t.replace('src = "2001:db8::1"', 'src = "192.0.2.9"'), 23, "src is IPv4 but dst is IPv6"),
    (lambda t: t.replace('[[sa]]\nspi = "0x2002"', '[[sa]\nspi = "0x2002"'), 17, "not valid TOML"),
    (lambda t: t + "\n[[sa]]\nsuite = \"aes128gcm16\"\n", 26, "missing spi"),
])
def test_toml_errors_name_the_line(mutate, line, reason):
    text = mutate(TOML)
    with pytest.raises(KeyFileError, match=reason) as ei:
        parse_toml(text, "sa.toml")
    assert ei.value.line == line, str(ei.value)


def test_load_sniffs_the_form_and_refuses_loose_permissions(tmp_path):
    ws = tmp_path / "esp_sa"
    write_keyfile(ws, dump_wireshark(parse_toml(TOML).entries[1:]))
    assert stat.S_IMODE(os.stat(ws).st_mode) == 0o600
    kf = load_keyfile(ws)
    assert kf.kind == "wireshark" and kf.entries[0].spi == 0x2002 and not kf.warnings
    tm = tmp_path / "keys.conf"
    tm.write_text(TOML)
    for loose in (0o644, 0o640, 0o604, 0o660):  # OpenSSH's rule: any permission for group or others
        os.chmod(tm, loose)
        with pytest.raises(KeyFileError, match=f"keys.conf: UNPROTECTED KEY FILE: permissions {loose:04o} are too "
                                               f"open.*chmod 600"):
            load_keyfile(tm)
    os.chmod(tm, 0o600)
    kf = load_keyfile(tm)
    assert kf.kind == "toml" and len(kf.entries) == 2 and not kf.warnings
    os.chown(tm, 65534, -1) if os.geteuid() == 0 else None
    if os.geteuid() == 0:
        with pytest.raises(KeyFileError, match="owned by uid 65534"):
            load_keyfile(tm)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_keyfile(tmp_path / "missing")
    bad = tmp_path / "bin"
    bad.write_bytes(b'"IPv4"\n\xff\xfe')
    with pytest.raises(KeyFileError, match="bin:2: not UTF-8"):
        load_keyfile(bad)


@pytest.mark.parametrize("text,ok,bad", [
    ("*", ["1.2.3.4", "::1"], []),
    ("192.0.2.*", ["192.0.2.77"], ["192.0.3.1", "::ffff:192.0.3.1"]),
    ("10.*.*.1", ["10.9.8.1"], ["10.9.8.2"]),
    ("10.0.0.0/8", ["10.200.0.1"], ["11.0.0.1"]),
    ("2001:db8::/48", ["2001:db8:0:1::1"], ["2001:db9::1", "10.0.0.1"]),
])
def test_address_patterns(text, ok, bad):
    m = AddressMatch.parse(text)
    assert all(m.matches(a) for a in ok) and not any(m.matches(a) for a in bad)


@settings(max_examples=80, deadline=None)
@given(suite=st.sampled_from([s for s in SUITES.values() if s.ikev2_integ is not None or s.cipher.value != "null"]),
       spi=st.integers(256, 0xFFFFFFFF), seed=st.binary(min_size=64, max_size=64),
       v6=st.booleans(), mode=st.sampled_from([None, "tunnel", "transport"]))
def test_toml_round_trip_every_suite(suite, spi, seed, v6, mode):
    e = SaEntry(spi=spi, suite=suite, enc_key=(seed * 2)[: suite.enc_keymat_len],
                integ_key=seed[: suite.integ_key_len],
                src=AddressMatch.parse("2001:db8::1" if v6 else "192.0.2.1"),
                dst=AddressMatch.parse("2001:db8::2" if v6 else "192.0.2.2"), mode=mode)
    (back,) = parse_toml(dump_toml([e])).entries
    assert dataclass_eq(back, e)
    from esp.pcap.sa_files import wireshark_supports
    if wireshark_supports(suite):
        (ws,) = parse_wireshark(dump_wireshark([e])).entries
        assert (ws.suite, ws.enc_key, ws.integ_key, ws.spi, str(ws.src)) == (e.suite, e.enc_key, e.integ_key, e.spi,
                                                                              str(e.src))


def dataclass_eq(a: SaEntry, b: SaEntry) -> bool:
    fields = ("spi", "suite", "enc_key", "integ_key", "mode", "encap", "esn", "replay_window", "initial_seq")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and str(a.src) == str(b.src)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_only_keyfile_errors(text):
    for parse in (parse_wireshark, parse_toml):
        try:
            parse(text)
        except KeyFileError:
            pass


def test_sa_params_from_entry():
    from esp import Direction, Mode
    e = parse_toml(TOML).entries[0]
    p = e.sa_params(Direction.OUT)
    assert p.spi == 0x1001 and p.mode is Mode.TUNNEL and p.encap.dport == 4500 and p.esn and p.src == "192.0.2.1"
    assert p.suite is parse_suite("aes256gcm16")


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256gcm16", "aes256-sha256", "aes128-sha1", "aes128ctr-sha256",
                                   "null-sha256"])
def test_reads_the_ike_daemons_key_log(suite):
    """The IKE daemon's esp_sa key log (ike.keylog) and this reader agree on every column."""
    from types import SimpleNamespace

    keylog = pytest.importorskip("ike.keylog")
    s = parse_suite(suite)
    ev = SimpleNamespace(suite=suite, local_addr=("192.0.2.1", 4500), remote_addr=("192.0.2.2", 4500),
                         spi_out=0xC0000001, spi_in=0xC0000002, enc_key_out=bytes([1]) * s.enc_keymat_len,
                         enc_key_in=bytes([2]) * s.enc_keymat_len, integ_key_out=bytes([3]) * s.integ_key_len,
                         integ_key_in=bytes([4]) * s.integ_key_len)
    out, inb = parse_wireshark("\n".join(keylog.esp_lines(ev))).entries
    assert (out.spi, out.suite, out.enc_key, out.integ_key, str(out.src), str(out.dst)) == (
        0xC0000001, s, ev.enc_key_out, ev.integ_key_out, "192.0.2.1", "192.0.2.2")
    assert (inb.spi, inb.enc_key, inb.integ_key, str(inb.src)) == (0xC0000002, ev.enc_key_in, ev.integ_key_in,
                                                                    "192.0.2.2")


def test_the_gateway_checks_secret_files_without_the_capture_package():
    """Layering (issue 15): the data plane's gateway shares esp.secret_file with the capture tools, and
    imports nothing of esp.pcap."""
    import subprocess
    import sys
    code = ("import sys, esp.gateway.runtime\n"
            "print(sorted(m for m in sys.modules if m.startswith('esp.pcap')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_secret_files_are_refused_when_others_can_read_them(tmp_path):
    from esp.secret_file import SecretFileError, check_secret_file, write_secret_file
    p = tmp_path / "k"
    write_secret_file(p, "x")
    assert p.stat().st_mode & 0o777 == 0o600
    check_secret_file(p)
    p.chmod(0o640)
    with pytest.raises(SecretFileError, match="chmod 600"):
        check_secret_file(p)
    with pytest.raises(KeyFileError, match="UNPROTECTED KEY FILE"):
        load_keyfile(p)
