"""esp.pcap's tools and ``python -m esp pcap``: round trips, classification, bad input, replay against RFC 4303."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from esp.pcap.sa_files import parse_toml
from esp.pcap import CaptureReader, ReplayPattern, decrypt_file, encrypt_file, replay_file
from tests.esp.pcap_builders import (FRAMERS, Rec, epb, ether, idb, ipv4, pcap_file, plaintext_packets, shb,
                                     udp)

KEY36 = "0x" + bytes(range(1, 37)).hex()
KEY16 = "0x" + bytes(range(50, 66)).hex()
H32 = "0x" + bytes(range(100, 132)).hex()


def sa_toml(spi=0x1001, suite="aes256gcm16", mode="tunnel", src="192.0.2.1", dst="192.0.2.2", extra="",
            enc_key=KEY36, integ_key=""):
    ik = f'integ_key = "{integ_key}"\n' if integ_key else ""
    md = f'mode = "{mode}"\n' if mode else ""
    return (f'[[sa]]\nspi = {spi}\nsuite = "{suite}"\nenc_key = "{enc_key}"\n{ik}src = "{src}"\ndst = "{dst}"\n'
            f'{md}{extra}\n')


def entries(*tomls):
    return parse_toml("".join(tomls)).entries


def records(path):
    """[(bytes, ts in ns)] of a capture, plus its reader's link types."""
    out = []
    with CaptureReader(path) as r:
        for c in r.chunks():
            for i in range(c.count):
                o = int(c.offsets[i])
                res = r.interfaces[int(c.iface[i])].tsresol
                out.append((c.data[o:o + int(c.caplen[i])].tobytes(), int(c.ts[i]) * (10**9 // res)))
        lts = [i.linktype for i in r.interfaces]
    return out, lts


def make_capture(path, packets, linktype=1, kind="pcap-le-us", framer=None):
    framer = framer or FRAMERS[linktype]
    frames = [framer(p) for p in packets]
    if kind.startswith("pcap-"):
        order = "<" if "-le-" in kind else ">"
        nano = kind.endswith("ns")
        recs = [Rec(f, 1_700_000_000 + i, (i * 7919) % (10**9 if nano else 10**6)) for i, f in enumerate(frames)]
        path.write_bytes(pcap_file(recs, linktype=linktype, order=order, nano=nano))
    else:
        order = "<" if kind.endswith("le") else ">"
        path.write_bytes(shb(order) + idb(linktype, order, tsresol=9) + b"".join(
            epb(0, 1_700_000_000_000_000_000 + i * 1_000_003, f, order) for i, f in enumerate(frames)))
    return frames


# -- round trips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("linktype", [1, 101, 12, 228, 229, 113, 276])
@pytest.mark.parametrize("kind", ["pcap-le-us", "pcap-be-ns", "pcapng-le", "pcapng-be"])
def test_encrypt_then_decrypt_is_identity(tmp_path, linktype, kind):
    pk = plaintext_packets(40, v6=linktype == 229)
    src = tmp_path / "plain"
    frames = make_capture(src, pk, linktype, kind)
    sas = entries(sa_toml())
    s1 = encrypt_file(src, tmp_path / "enc", sas, chunk_records=7)
    assert (s1.records, s1.processed, s1.exit_code) == (40, 40, 0), s1.format()
    enc, _ = records(tmp_path / "enc")
    assert all(len(e) > len(f) for (e, _), f in zip(enc, frames))
    s2 = decrypt_file(tmp_path / "enc", tmp_path / "dec", sas, frames=True, chunk_records=5)
    assert (s2.processed, s2.per_sa[0].packets, s2.exit_code) == (40, 40, 0), s2.format()
    back, lts = records(tmp_path / "dec")
    orig, olts = records(src)
    assert back == orig                     # every byte of every record, and every timestamp
    if linktype not in (228, 229):  # IPv4/IPv6-only link types come back as raw IP (101), which holds both
        assert lts == olts
        assert (tmp_path / "dec").read_bytes() == src.read_bytes()  # the whole file, header included
    # and the raw-IP form of decrypt gives the plaintext IP packets
    decrypt_file(tmp_path / "enc", tmp_path / "raw", sas)
    raw, rlts = records(tmp_path / "raw")
    assert [r[0] for r in raw] == pk and set(rlts) == {101}


@pytest.mark.parametrize("suite,key,ik", [("aes128-sha1", KEY16, "0x" + "ab" * 20), ("aes128ctr-sha256", "0x" + "cd" * 20, H32),
                                          ("chacha20poly1305", "0x" + "ef" * 36, ""), ("aes128ccm16", "0x" + "12" * 19, ""),
                                          ("aes256gmac", KEY36, ""), ("null-sha512", "", "0x" + "34" * 64)])
@pytest.mark.parametrize("mode,encap", [("tunnel", False), ("transport", False), ("tunnel", True), ("transport", True)])
def test_suites_modes_encap_round_trip(tmp_path, suite, key, ik, mode, encap):
    v6 = suite.startswith("aes128ctr")
    pk = plaintext_packets(12, v6=v6)
    if mode == "transport":
        src_a, dst_a = ("2001:db8:1::1", "2001:db8:2::2") if v6 else ("10.1.0.1", "10.2.0.2")
    else:
        src_a, dst_a = "192.0.2.1", "192.0.2.2"  # IPv6 inside IPv4 for the CTR case
    sas = entries(sa_toml(suite=suite, enc_key=key, integ_key=ik, mode=mode, src=src_a, dst=dst_a,
                          extra="encap = true\n" if encap else ""))
    src = tmp_path / "p.pcap"
    make_capture(src, pk, 1)
    assert encrypt_file(src, tmp_path / "e.pcap", sas).per_sa[0].packets == 12
    enc, _ = records(tmp_path / "e.pcap")
    et = struct.unpack("!H", enc[0][0][12:14])[0]
    ip = enc[0][0][14:]
    proto = ip[9] if et == 0x0800 else ip[6]
    assert proto == (17 if encap else 50)
    assert et == (0x86DD if (v6 and mode == "transport") else 0x0800)
    s = decrypt_file(tmp_path / "e.pcap", tmp_path / "d.pcap", sas, frames=True)
    assert s.per_sa[0].packets == 12 and s.exit_code == 0, s.format()
    assert records(tmp_path / "d.pcap")[0] == records(src)[0]


def test_first_seq_and_multiple_sas_by_selector(tmp_path):
    a = sa_toml(spi=0x2001, extra='selector = { dst = "10.2.0.0/16", proto = "udp" }\n')
    b = sa_toml(spi=0x2002, src="192.0.2.1", dst="192.0.2.3", extra='selector = { proto = 6, dport = "80" }\n')
    sas = entries(a, b)
    pk = plaintext_packets(30)
    arp = ether(b"\x00" * 28, 0x0806)
    src = tmp_path / "p.pcap"
    recs = [Rec(ether(p), 1_700_000_000, i) for i, p in enumerate(pk)] + [Rec(arp, 1_700_000_001, 0)]
    src.write_bytes(pcap_file(recs))
    s = encrypt_file(src, tmp_path / "e.pcap", sas, first_seq=1000, chunk_records=4)
    assert [x.packets for x in s.per_sa] == [20, 10] and s.passed_through == 1 and s.non_ip == 1
    enc, _ = records(tmp_path / "e.pcap")
    esp = [e for e, _ in enc if e[12:14] == b"\x08\x00" and e[14 + 9] == 50]
    by_spi: dict[int, list[int]] = {}
    for e in esp:
        spi, seq = struct.unpack("!II", e[34:42])
        by_spi.setdefault(spi, []).append(seq)
    assert by_spi == {0x2001: list(range(1000, 1020)), 0x2002: list(range(1000, 1010))}
    assert enc[-1][0] == arp
    # drop_other leaves only the ESP packets
    s = encrypt_file(src, tmp_path / "e2.pcap", sas, drop_other=True)
    assert s.written == 30 and s.policy_dropped == 1


# -- decrypt: classification --------------------------------------------------------------------------------------

def _esp_capture(tmp_path, sas, pk, **kw):
    src = tmp_path / "p.pcap"
    make_capture(src, pk, 1)
    encrypt_file(src, tmp_path / "e.pcap", sas, **kw)
    return records(tmp_path / "e.pcap")[0]


def test_nat_t_ike_and_keepalives_pass_through(tmp_path):
    sas = entries(sa_toml(extra="encap = true\n"))
    enc = _esp_capture(tmp_path, sas, plaintext_packets(5))
    ike = ether(ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\x00\x00\x00\x00" + b"\x11" * 40)))
    ka = ether(ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\xff")))
    recs = [Rec(f, 1_700_000_000 + i) for i, f in enumerate([ike] + [e for e, _ in enc] + [ka])]
    (tmp_path / "mix.pcap").write_bytes(pcap_file(recs))
    s = decrypt_file(tmp_path / "mix.pcap", tmp_path / "out.pcap", sas, frames=True)
    assert (s.ike, s.keepalives, s.per_sa[0].packets, s.passed_through, s.exit_code) == (1, 1, 5, 2, 0), s.format()
    out, _ = records(tmp_path / "out.pcap")
    assert out[0][0] == ike and out[-1][0] == ka


def test_unknown_spi_auth_failure_replay_and_exit_code(tmp_path):
    sas = entries(sa_toml())
    enc = [e for e, _ in _esp_capture(tmp_path, sas, plaintext_packets(6))]
    tampered = bytearray(enc[2])
    tampered[60] ^= 1
    other = bytearray(enc[3])
    other[34:38] = b"\xde\xad\xbe\xef"  # SPI no SA has
    frames = [enc[0], enc[1], bytes(tampered), bytes(other), enc[4], enc[4], enc[5]]
    (tmp_path / "x.pcap").write_bytes(pcap_file([Rec(f) for f in frames]))
    s = decrypt_file(tmp_path / "x.pcap", tmp_path / "o.pcap", sas)
    st = s.per_sa[0]
    assert (st.packets, st.count("AUTH_FAILED"), st.count("REPLAYED")) == (4, 1, 1), s.format()
    assert s.unknown_spi == {0xDEADBEEF: 1} and s.exit_code == 1
    assert s.written == 5  # 4 decrypted + the unknown SPI passed through
    s = decrypt_file(tmp_path / "x.pcap", tmp_path / "o.pcap", sas, drop_unknown=True, replay_window=0)
    assert s.written == 5 and s.policy_dropped == 1 and s.per_sa[0].packets == 5
    # only the unknown SPI: a policy outcome, exit code 0
    (tmp_path / "u.pcap").write_bytes(pcap_file([Rec(bytes(other))]))
    assert decrypt_file(tmp_path / "u.pcap", None, sas).exit_code == 0


def test_sa_match_needs_addresses_too(tmp_path):
    sas = entries(sa_toml())
    enc = _esp_capture(tmp_path, sas, plaintext_packets(3))
    wrong = entries(sa_toml(src="192.0.2.9"))
    (tmp_path / "e2.pcap").write_bytes(pcap_file([Rec(e) for e, _ in enc]))
    s = decrypt_file(tmp_path / "e2.pcap", None, wrong)
    assert s.per_sa[0].packets == 0 and s.unknown_spi == {0x1001: 3}
    wild = entries(sa_toml(src="192.0.2.*", dst="*"))
    assert decrypt_file(tmp_path / "e2.pcap", None, wild).per_sa[0].packets == 3


def test_wireshark_table_without_mode_decrypts_tunnel_and_transport(tmp_path):
    from esp.pcap.sa_files import dump_wireshark, parse_wireshark
    tun = entries(sa_toml(spi=0x3001))
    tra = entries(sa_toml(spi=0x3002, mode="transport", src="10.1.0.1", dst="10.2.0.2"))
    e1 = _esp_capture(tmp_path, tun, plaintext_packets(4))
    e2 = _esp_capture(tmp_path, tra, plaintext_packets(4))
    (tmp_path / "both.pcap").write_bytes(pcap_file([Rec(e) for e, _ in e1 + e2]))
    ws = parse_wireshark(dump_wireshark(tun + tra)).entries
    assert all(e.mode is None for e in ws)
    s = decrypt_file(tmp_path / "both.pcap", tmp_path / "o.pcap", ws)
    assert [x.packets for x in s.per_sa] == [4, 4] and s.exit_code == 0, s.format()
    out, _ = records(tmp_path / "o.pcap")
    assert [o for o, _ in out] == plaintext_packets(4) * 2


def test_fragments_snaplen_cuts_unknown_links_and_truncated_file(tmp_path):
    sas = entries(sa_toml())
    enc = [e for e, _ in _esp_capture(tmp_path, sas, plaintext_packets(4))]
    ip = enc[1][14:]
    frag = bytearray(ip)
    frag[6:8] = b"\x20\x00"  # MF set: the first fragment of an ESP packet
    frag[10:12] = b"\x00\x00"
    cut = enc[2][:60]
    data = (shb() + idb(1, snaplen=60) + idb(147)
            + epb(0, 1, enc[0]) + epb(0, 2, ether(bytes(frag))) + epb(0, 3, cut, origlen=len(enc[2]))
            + epb(1, 4, b"\x01\x02\x03") + epb(0, 5, enc[3]))
    (tmp_path / "bad.pcapng").write_bytes(data[:-6])  # and the last record truncated
    s = decrypt_file(tmp_path / "bad.pcapng", tmp_path / "o.pcapng", sas, frames=True)
    assert (s.per_sa[0].packets, s.fragments, s.truncated, s.unknown_link) == (1, 1, 1, 1), s.format()
    assert len(s.capture_problems) == 1 and "truncated" in s.capture_problems[0]
    assert s.records == 4 and s.exit_code == 1
    out, lts = records(tmp_path / "o.pcapng")
    assert len(out) == 4 and lts == [1, 147]  # the fragment, the cut packet and the unknown record pass through


def test_ipv6_inner_over_ipv4_fixes_the_ethertype(tmp_path):
    sas = entries(sa_toml())
    pk = plaintext_packets(3, v6=True)
    src = tmp_path / "p.pcap"
    make_capture(src, pk, 1)
    encrypt_file(src, tmp_path / "e.pcap", sas)
    enc, _ = records(tmp_path / "e.pcap")
    assert all(e[12:14] == b"\x08\x00" for e, _ in enc)
    decrypt_file(tmp_path / "e.pcap", tmp_path / "d.pcap", sas, frames=True)
    assert records(tmp_path / "d.pcap")[0] == records(src)[0]


def test_vlan_tags_survive(tmp_path):
    sas = entries(sa_toml())
    pk = plaintext_packets(5)
    src = tmp_path / "p.pcap"
    make_capture(src, pk, 1, framer=lambda ip: ether(ip, vlans=(10, 20), outer_tpid=0x88A8))
    encrypt_file(src, tmp_path / "e.pcap", sas)
    enc, _ = records(tmp_path / "e.pcap")
    assert all(e[12:14] == b"\x88\xa8" and e[16:18] == b"\x81\x00" and e[22 + 9] == 50 for e, _ in enc)
    decrypt_file(tmp_path / "e.pcap", tmp_path / "d.pcap", sas, frames=True)
    assert records(tmp_path / "d.pcap")[0] == records(src)[0]


# -- replay ---------------------------------------------------------------------------------------------------------

def rfc4303_receiver(seqs, window):
    """RFC 4303 3.4.3 with the window of Appendix A: right edge T, W-bit window; returns accept/reject."""
    top, seen, out = 0, set(), []
    for s in seqs:
        if s > top:
            out.append(True)
            top = s
            seen.add(s)
        elif s + window <= top or s in seen:
            out.append(False)
        else:
            out.append(True)
            seen.add(s)
    return out


@pytest.mark.parametrize("window", [32, 64])
def test_replay_scripted_reorder_matches_rfc4303(tmp_path, window):
    n = 200
    src = tmp_path / "p.pcap"
    make_capture(src, plaintext_packets(n), 101)
    # in order, a gap, late arrivals inside and outside the window, duplicates, a jump
    order = (list(range(1, 50)) + [52, 51, 50] + [55, 53, 53, 54] + list(range(56, 131)) + list(range(132, 150))
             + [60, 120, 149, 149] + [200, 150, 151, 199, 137, 136, 168, 169, 131])
    pattern = ReplayPattern(order=tuple(order))
    sa = entries(sa_toml(extra=f"replay_window = {window}\n"))[0]
    res = replay_file(src, sa, pattern=pattern, record=True, chunk_records=33)
    expect = rfc4303_receiver(order, window)
    assert [v == "OK" for _, _, v in res.verdicts] == expect
    assert [num for num, _, _ in res.verdicts] == order and [seq for _, seq, _ in res.verdicts] == order
    assert res.sent == n and res.delivered == len(order) and res.accepted == sum(expect)
    assert res.duplicates + res.too_old == len(order) - sum(expect)
    accepted_before = set()
    dups = 0
    for num, ok in zip(order, expect):
        dups += (not ok) and num in accepted_before
        if ok:
            accepted_before.add(num)
    assert res.duplicates == dups and res.too_old == len(order) - sum(expect) - dups and res.exit_code == 0
    assert res.too_old > 0 and res.duplicates > 0


def test_replay_random_pattern_is_deterministic_and_consistent(tmp_path):
    src = tmp_path / "p.pcap"
    make_capture(src, plaintext_packets(300), 1)
    sa = entries(sa_toml(extra="replay_window = 32\n"))[0]
    pat = ReplayPattern(loss=0.05, dup=0.05, reorder=0.2, depth=40, seed=7)
    a = replay_file(src, sa, pattern=pat, record=True, out_path=tmp_path / "acc.pcap")
    b = replay_file(src, sa, pattern=pat, record=True)
    assert a.verdicts == b.verdicts
    seqs = [seq for _, seq, _ in a.verdicts]
    assert [v == "OK" for _, _, v in a.verdicts] == rfc4303_receiver(seqs, 32)
    assert a.too_old > 0 and a.duplicates > 0 and a.delivered > a.accepted
    acc, lts = records(tmp_path / "acc.pcap")
    assert len(acc) == a.accepted and lts == [101]
    pk = plaintext_packets(300)
    assert [x for x, _ in acc] == [pk[num - 1] for num, _, v in a.verdicts if v == "OK"]


def test_parse_order():
    assert ReplayPattern.parse_order("1-3, 5,4,4") == (1, 2, 3, 5, 4, 4)
    for bad in ("", "0", "3-1", "a"):
        with pytest.raises(ValueError):
            ReplayPattern.parse_order(bad)


# -- command line ---------------------------------------------------------------------------------------------------

def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "esp", "pcap", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_round_trip_and_exit_codes(tmp_path):
    keys = tmp_path / "sa.toml"
    keys.write_text(sa_toml())
    keys.chmod(0o600)
    keys.chmod(0o600)
    src = tmp_path / "p.pcapng"
    make_capture(src, plaintext_packets(20), 1, "pcapng-le")
    r = run_cli("encrypt", src, tmp_path / "e.pcapng", "--sa", keys, "--first-seq", 7)
    assert r.returncode == 0 and "20" in r.stderr, r.stderr
    r = run_cli("decrypt", tmp_path / "e.pcapng", tmp_path / "d.pcap", "--sa", keys, "--frames", "--format", "pcap",
                "--progress")
    assert r.returncode == 0, r.stderr
    assert "decrypt [" in r.stderr  # the progress bar, forced on
    assert [x for x, _ in records(tmp_path / "d.pcap")[0]] == [x for x, _ in records(src)[0]]
    # a wrong key: every packet fails authentication -> exit 1
    bad = tmp_path / "bad.toml"
    bad.write_text(sa_toml(enc_key="0x" + "00" * 36))
    bad.chmod(0o600)
    bad.chmod(0o600)
    r = run_cli("decrypt", tmp_path / "e.pcapng", tmp_path / "x.pcap", "--sa", bad)
    assert r.returncode == 1 and "20" in r.stderr
    r = run_cli("replay", src, "--sa", keys, "--order", "1-5,3,2,9", "-v")
    assert r.returncode == 0 and r.stdout.splitlines()[5] == "3\tseq 3\tREPLAYED", r.stdout
    import json
    r = run_cli("decrypt", tmp_path / "e.pcapng", tmp_path / "j.pcap", "--sa", bad, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["per_sa"][0]["verdicts"] == {"AUTH_FAILED": 20} and doc["exit_code"] == 1


@pytest.mark.parametrize("args,needle", [
    (["decrypt", "{tmp}/nope.pcap", "{tmp}/o.pcap", "--sa", "{keys}"], "cannot open"),
    (["decrypt", "{tmp}/junk.pcap", "{tmp}/o.pcap", "--sa", "{keys}"], "not a pcap or pcapng file"),
    (["decrypt", "{tmp}/p.pcap", "{tmp}/o.pcap", "--sa", "{tmp}/broken.toml"], "broken.toml:4: [[sa]] #1: enc_key"),
    (["decrypt", "{tmp}/p.pcap", "{tmp}/o.pcap", "--sa", "{tmp}/missing"], "cannot read"),
    (["encrypt", "{tmp}/p.pcap", "{tmp}/o.pcap", "--sa", "{tmp}/wild.toml"], "needs one outer src and dst"),
    (["encrypt", "{tmp}/p.pcap", "{tmp}/o.pcap", "--sa", "{keys}", "--first-seq", "0"], "--first-seq"),
    (["replay", "{tmp}/p.pcap", "--sa", "{keys}", "--order", "3-1"], "order"),
    (["decrypt", "{tmp}/p.pcap", "--sa", "{keys}"], "required"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, needle):
    keys = tmp_path / "sa.toml"
    keys.write_text(sa_toml())
    keys.chmod(0o600)
    (tmp_path / "broken.toml").write_text(sa_toml(enc_key="0x1234"))
    (tmp_path / "broken.toml").chmod(0o600)
    (tmp_path / "wild.toml").write_text(sa_toml(dst="192.0.2.*"))
    (tmp_path / "wild.toml").chmod(0o600)
    (tmp_path / "junk.pcap").write_bytes(b"hello, not a capture at all")
    make_capture(tmp_path / "p.pcap", plaintext_packets(2), 1)
    r = run_cli(*[a.format(tmp=tmp_path, keys=keys) for a in args])
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if "warning" not in l]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_wildcard_spi_like_wireshark(tmp_path):
    from esp.pcap.sa_files import dump_wireshark, parse_wireshark
    a = entries(sa_toml(spi=0x7001))
    b = entries(sa_toml(spi=0x7002))
    e1 = _esp_capture(tmp_path, a, plaintext_packets(3))
    e2 = _esp_capture(tmp_path, b, plaintext_packets(4))
    (tmp_path / "w.pcap").write_bytes(pcap_file([Rec(e) for e, _ in e1 + e2]))
    line = dump_wireshark(a).splitlines()[1].replace('"0x00007001"', '"*"')
    ws = parse_wireshark(line).entries
    assert ws[0].spi is None
    s = decrypt_file(tmp_path / "w.pcap", tmp_path / "o.pcap", ws)
    assert sorted(x.packets for x in s.per_sa) == [3, 4] and s.exit_code == 0, s.format()
    assert "0x00007002" in s.format()


def test_pcapng_several_interfaces_round_trip(tmp_path):
    pk = plaintext_packets(30)
    frames = [(0, ether(p)) if i % 3 == 0 else (1, p) if i % 3 == 1 else (2, FRAMERS[276](p)) for i, p in enumerate(pk)]
    src = tmp_path / "multi.pcapng"
    src.write_bytes(shb() + idb(1, tsresol=9) + idb(101) + idb(276, tsresol=3) + b"".join(
        epb(k, 1_700_000_000_000 + i * 17, f) for i, (k, f) in enumerate(frames)))
    sas = entries(sa_toml(spi=0x9001, suite="aes128-sha256", enc_key=KEY16, integ_key=H32,
                          extra="encap = { sport = 4501, dport = 4600 }\n"))
    assert encrypt_file(src, tmp_path / "e.pcapng", sas, chunk_records=7).per_sa[0].packets == 30
    enc, lts = records(tmp_path / "e.pcapng")
    assert lts == [1, 101, 276]
    s = decrypt_file(tmp_path / "e.pcapng", tmp_path / "d.pcapng", sas, frames=True, chunk_records=4)
    assert s.per_sa[0].packets == 30, s.format()
    assert records(tmp_path / "d.pcapng") == records(src)


def test_fuzz_damaged_esp_captures_only_counted(tmp_path):
    """Flip bytes of an encrypted capture anywhere (headers included): decrypt counts, never crashes."""
    import random

    from esp.pcap import CaptureError
    sas = entries(sa_toml(extra="encap = true\n"), sa_toml(spi=0x1002, mode="transport", src="10.1.0.1",
                                                             dst="10.2.0.2"))
    src = tmp_path / "p.pcapng"
    make_capture(src, plaintext_packets(12) + plaintext_packets(3, v6=True), 1, "pcapng-le")
    encrypt_file(src, tmp_path / "e.pcapng", sas)
    good = (tmp_path / "e.pcapng").read_bytes()
    rng = random.Random(5)
    for trial in range(60):
        blob = bytearray(good)
        for _ in range(rng.choice([1, 3, 20])):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if trial % 7 == 0:
            blob = blob[: rng.randrange(len(blob))]
        (tmp_path / "f.pcapng").write_bytes(bytes(blob))
        try:
            s = decrypt_file(tmp_path / "f.pcapng", tmp_path / "o.pcapng", sas, frames=bool(trial % 2),
                             chunk_records=rng.choice([1, 4, 100]))
        except CaptureError:
            continue
        assert s.records <= 15 and s.written <= s.records


def test_esn_across_the_32_bit_wrap(tmp_path):
    """ESN (RFC 4303 2.2.1): encrypt from just below 2**32, decrypt and replay across the wrap."""
    src = tmp_path / "p.pcap"
    make_capture(src, plaintext_packets(40), 1)
    sa = entries(sa_toml(extra=f"esn = true\ninitial_seq = {2**32 - 20}\nreplay_window = 32\n"))[0]
    assert encrypt_file(src, tmp_path / "e.pcap", [sa]).per_sa[0].packets == 40
    enc, _ = records(tmp_path / "e.pcap")
    assert [struct.unpack("!I", e[38:42])[0] for e, _ in enc[18:22]] == [2**32 - 1, 0, 1, 2]
    s = decrypt_file(tmp_path / "e.pcap", tmp_path / "d.pcap", [sa], frames=True)
    assert s.per_sa[0].packets == 40 and s.exit_code == 0, s.format()
    assert records(tmp_path / "d.pcap") == records(src)
    order = tuple(range(1, 25)) + (22, 30, 26, 27, 28, 29, 25, 40)
    r = replay_file(src, sa, pattern=ReplayPattern(order=order), record=True)
    assert [v for _, _, v in r.verdicts].count("REPLAYED") == 1 and r.accepted == len(order) - 1
