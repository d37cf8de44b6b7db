"""scapy's ESP (an independent implementation) as the oracle: it decrypts what espresso encrypts, and the
reverse, for every suite both implement, tunnel and transport, IPv4 and IPv6, with and without ESN."""
from __future__ import annotations

import pytest

from tests.support import require_module
from tests.esp.helpers import ipv4, ipv6, sa_pair, udp

from esp import parse_suite

# espresso suite -> (scapy crypt algo, scapy auth algo)
PAIRS = {
    "aes128gcm16": ("AES-GCM", None), "aes192gcm16": ("AES-GCM", None), "aes256gcm16": ("AES-GCM", None),
    "aes128ccm16": ("AES-CCM", None), "aes256ccm16": ("AES-CCM", None),
    "aes128gmac": ("AES-NULL-GMAC", None), "aes256gmac": ("AES-NULL-GMAC", None),
    "chacha20poly1305": ("CHACHA20-POLY1305", None),
    "aes128-sha1": ("AES-CBC", "HMAC-SHA1-96"), "aes256-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes192-sha384": ("AES-CBC", "SHA2-384-192"), "aes128-sha512": ("AES-CBC", "SHA2-512-256"),
    "aes128ctr-sha256": ("AES-CTR", "SHA2-256-128"), "aes256ctr-sha1": ("AES-CTR", "HMAC-SHA1-96"),
    "null-sha256": ("NULL", "SHA2-256-128"),
    "3des-sha1": ("3DES", "HMAC-SHA1-96"), "3des-sha256": ("3DES", "SHA2-256-128"),
}
CASES = [(s, mode, v6, esn) for s in PAIRS for mode in ("tunnel", "transport") for v6 in (False, True)
         for esn in (False, True)]


def scapy_sa(suite: str, out, mode: str, v6: bool, esn: bool, seq_base: int):
    ipsec = require_module("scapy.layers.ipsec")
    inet = require_module("scapy.layers.inet")
    inet6 = require_module("scapy.layers.inet6")
    crypt, auth = PAIRS[suite]
    p = out.params
    tunnel = None
    if mode == "tunnel":
        tunnel = inet6.IPv6(src=p.src, dst=p.dst) if v6 else inet.IP(src=p.src, dst=p.dst)
    kw = {}
    if esn:
        kw = dict(esn_en=True, esn=seq_base >> 32)
    return ipsec.SecurityAssociation(ipsec.ESP, spi=p.spi, crypt_algo=crypt, crypt_key=p.enc_key,
                                     auth_algo=auth, auth_key=p.integ_key or None, tunnel_header=tunnel, **kw)


def parse(pkt: bytes, v6: bool):
    inet = require_module("scapy.layers.inet")
    inet6 = require_module("scapy.layers.inet6")
    return inet6.IPv6(pkt) if v6 else inet.IP(pkt)


@pytest.mark.parametrize("suite,mode,v6,esn", CASES)
def test_scapy_decrypts_espresso(suite: str, mode: str, v6: bool, esn: bool) -> None:
    base = (7 << 32) + 100 if esn else 100
    out, _ = sa_pair(suite, mode=mode, v6=v6, esn=esn, initial_seq=base, backend="openssl")
    sa = scapy_sa(suite, out, mode, v6, esn, base)
    for size in (0, 33, 700):
        inner = ipv6(udp(bytes(range(size % 251)) * (size // 251 + 1))[:size + 8]) if v6 else ipv4(udp(b"s" * size))
        wire = out.encrypt(inner)
        plain = sa.decrypt(parse(wire, v6))
        assert bytes(plain) == inner


@pytest.mark.parametrize("suite,mode,v6,esn", CASES)
def test_espresso_decrypts_scapy(suite: str, mode: str, v6: bool, esn: bool) -> None:
    base = (7 << 32) + 100 if esn else 100
    out, inb = sa_pair(suite, mode=mode, v6=v6, esn=esn, initial_seq=base)
    sa = scapy_sa(suite, out, mode, v6, esn, base)
    for i, size in enumerate((0, 33, 700)):
        inner = ipv6(udp(b"v" * size)) if v6 else ipv4(udp(b"v" * size))
        wire = bytes(sa.encrypt(parse(inner, v6), seq_num=(base + 1 + i) & 0xFFFFFFFF))
        assert inb.decrypt(wire) == inner
    assert inb.counters.packets == 3


def test_suite_table_covers_scapy_key_sizes() -> None:
    for s in PAIRS:
        assert parse_suite(s).enc_keymat_len > 0 or s.startswith("null")
