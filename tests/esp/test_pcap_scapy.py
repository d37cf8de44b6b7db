"""``pcap decrypt`` of captures that scapy's ESP (an independent implementation) encrypted and wrote."""
from __future__ import annotations

import pytest

from esp.pcap.sa_files import AddressMatch, SaEntry, dump_wireshark, parse_wireshark
from esp.pcap import CaptureReader, decrypt_file
from esp.suites import parse_suite
from tests.esp.pcap_builders import ipv4, ipv6, udp
from tests.support import require_module

pytestmark = pytest.mark.interop

CASES = [  # espresso suite, scapy crypt, scapy auth
    ("aes128gcm16", "AES-GCM", None), ("aes256gcm16", "AES-GCM", None), ("aes128-sha1", "AES-CBC", "HMAC-SHA1-96"),
    ("aes256-sha256", "AES-CBC", "SHA2-256-128"), ("aes128ctr-sha512", "AES-CTR", "SHA2-512-256"),
    ("chacha20poly1305", "CHACHA20-POLY1305", None), ("aes128ccm16", "AES-CCM", None),
    ("null-sha384", "NULL", "SHA2-384-192"),
]


def _read(path) -> list[tuple[bytes, int]]:
    out = []
    with CaptureReader(path) as r:
        for c in r.chunks():
            for i in range(c.count):
                o = int(c.offsets[i])
                out.append((c.data[o:o + int(c.caplen[i])].tobytes(), int(c.ts[i])))
    return out


@pytest.mark.parametrize("suite,crypt,auth", CASES)
@pytest.mark.parametrize("mode,v6,natt", [("tunnel", False, False), ("transport", False, False),
                                          ("tunnel", True, False), ("tunnel", False, True)])
def test_decrypt_scapy_capture(tmp_path, suite, crypt, auth, mode, v6, natt):
    ipsec = require_module("scapy.layers.ipsec")
    require_module("scapy.all")
    from scapy.all import IP, UDP, Ether, IPv6, wrpcap

    s = parse_suite(suite)
    enc_key = bytes((i * 11 + 5) & 0xFF for i in range(s.enc_keymat_len))
    integ_key = bytes((i * 13 + 7) & 0xFF for i in range(s.integ_key_len))
    outer = ("2001:db8::a", "2001:db8::b") if v6 else ("192.0.2.10", "192.0.2.20")
    inner_addr = ("2001:db8:1::1", "2001:db8:2::2") if v6 else ("10.1.0.1", "10.2.0.2")
    tunnel = None
    if mode == "tunnel":
        tunnel = IPv6(src=outer[0], dst=outer[1]) if v6 else IP(src=outer[0], dst=outer[1])
    kw = {}
    if natt:
        kw["nat_t_header"] = UDP(sport=4500, dport=4500)
    sa = ipsec.SecurityAssociation(ipsec.ESP, spi=0x4242, crypt_algo=crypt, crypt_key=enc_key or None,
                                   auth_algo=auth, auth_key=integ_key or None, tunnel_header=tunnel, **kw)
    plain = []
    frames = []
    for i in range(6):
        payload = udp(20000 + i, 30000, bytes((i + k) & 0xFF for k in range(17 * i + 3)))
        raw = ipv6(*inner_addr, 17, payload) if v6 else ipv4(*inner_addr, 17, payload, ident=i)
        plain.append(raw)
        pkt = (IPv6 if v6 else IP)(raw)
        e = sa.encrypt(pkt)
        f = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / e
        f.time = 1_700_000_000 + i / 8
        frames.append(f)
    wrpcap(str(tmp_path / "scapy.pcap"), frames)

    src_a, dst_a = outer if mode == "tunnel" else inner_addr
    entry = SaEntry(spi=0x4242, suite=s, enc_key=enc_key, integ_key=integ_key, src=AddressMatch.parse(src_a),
                    dst=AddressMatch.parse(dst_a), mode=mode, encap=(4500, 4500) if natt else None)
    summary = decrypt_file(tmp_path / "scapy.pcap", tmp_path / "clear.pcap", [entry])
    assert summary.exit_code == 0 and summary.per_sa[0].packets == 6, summary.format()
    got = _read(tmp_path / "clear.pcap")
    assert [g for g, _ in got] == plain
    assert [t for _, t in got] == [t for _, t in _read(tmp_path / "scapy.pcap")]

    # the same through a Wireshark table (no mode given: tunnel, then transport, is tried)
    if s.cipher.value in ("aes-gcm", "aes-cbc", "aes-ctr", "null"):
        ws = parse_wireshark(dump_wireshark([entry])).entries
        again = decrypt_file(tmp_path / "scapy.pcap", None, ws)
        assert again.per_sa[0].packets == 6, again.format()
