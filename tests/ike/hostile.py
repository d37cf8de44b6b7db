"""Hostile input a real peer could send once keys exist: certificates edited at the DER level, and sealed
(encrypted, integrity-protected) IKE messages whose inner payloads were changed after decryption.

``hostile_certificates(der)`` returns (name, DER) pairs built from a real certificate by editing its TLV tree,
so every variant is exactly one defect in an otherwise well-formed certificate. ``intercept`` opens a datagram
with the receiver's keys, lets a callback change the inner payload chain, and seals it again with the sender's
keys (optionally as RFC 7383 fragments), which is how a peer holding the SK keys would send it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ike.constants import HEADER_LEN, PayloadType
from ike.dispatcher import Dispatcher
from ike.message import Header, pull_chain, pull_header, push_chain, push_header
from ike.payloads import SkfPayload, SkPayload
from ike.protect import sk_generic_header, skf_generic_header
from ike.sa import IkeSa


# -- a minimal DER TLV tree, enough to edit certificates ---------------------------------------------------
@dataclass
class Tlv:
    tag: int
    value: bytes = b""  # primitive content
    children: list["Tlv"] | None = None  # constructed content
    lie: int | None = None  # a length to write instead of the real one

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.children is not None else self.value
        n = len(body) if self.lie is None else self.lie
        return bytes([self.tag]) + _len(n) + body


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def parse_der(data: bytes) -> Tlv:
    tlv, end = _parse(data, 0)
    assert end == len(data)
    return tlv


def _parse(data: bytes, pos: int) -> tuple[Tlv, int]:
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    body = data[pos:pos + n]
    if tag & 0x20:  # constructed
        kids, p = [], 0
        while p < len(body):
            kid, p = _parse(body, p)
            kids.append(kid)
        return Tlv(tag, children=kids), pos + n
    return Tlv(tag, body), pos + n


_SAN_OID = bytes.fromhex("551d11")
_PSS_OID = bytes.fromhex("2a864886f70d01010a")


def _tbs(cert: Tlv) -> Tlv:
    assert cert.children is not None
    return cert.children[0]


def _field(tbs: Tlv, tag: int) -> Tlv:
    assert tbs.children is not None
    return next(c for c in tbs.children if c.tag == tag)


def _extensions(tbs: Tlv) -> Tlv:
    outer = _field(tbs, 0xA3)
    assert outer.children is not None
    return outer.children[0]


def _ext(tbs: Tlv, oid: bytes) -> Tlv:
    exts = _extensions(tbs).children
    assert exts is not None
    return next(e for e in exts if e.children and e.children[0].value == oid)


def hostile_certificates(der: bytes) -> list[tuple[str, bytes]]:
    """One-defect variants of ``der`` (a certificate with version 3, a subjectAltName and an EC or RSA key)."""
    out: list[tuple[str, bytes]] = []

    def variant(name: str, edit: Callable[[Tlv, Tlv], None]) -> None:
        cert = parse_der(der)
        edit(cert, _tbs(cert))
        out.append((name, cert.encode()))

    def san_lies(cert: Tlv, tbs: Tlv) -> None:
        octets = _ext(tbs, _SAN_OID).children[-1]  # type: ignore[index]
        names = parse_der(octets.value)
        names.children[0].lie = len(names.children[0].value) + 40  # type: ignore[index]
        octets.value = names.encode()

    def san_truncated(cert: Tlv, tbs: Tlv) -> None:
        octets = _ext(tbs, _SAN_OID).children[-1]  # type: ignore[index]
        octets.value = octets.value[:-3]

    def san_garbage(cert: Tlv, tbs: Tlv) -> None:
        _ext(tbs, _SAN_OID).children[-1].value = b"\xff\xff\xff\xff"  # type: ignore[index]

    def version(v: int) -> Callable[[Tlv, Tlv], None]:
        def edit(cert: Tlv, tbs: Tlv) -> None:
            _field(tbs, 0xA0).children[0].value = bytes([v])  # type: ignore[index]
        return edit

    def bad_key(cert: Tlv, tbs: Tlv) -> None:
        spki = tbs.children[6]  # type: ignore[index]
        bits = spki.children[1]  # type: ignore[index]
        bits.value = bits.value[:1] + b"\x07" + bits.value[2:-5]  # unknown point form, short

    def key_not_a_key(cert: Tlv, tbs: Tlv) -> None:
        spki = tbs.children[6]  # type: ignore[index]
        spki.children[0].children[0].value = bytes.fromhex("2b0601040182370101")  # type: ignore[index]

    def unknown_critical(cert: Tlv, tbs: Tlv) -> None:
        _extensions(tbs).children.append(Tlv(0x30, children=[  # type: ignore[union-attr]
            Tlv(0x06, bytes.fromhex("2b06010401838f4f01")), Tlv(0x01, b"\xff"), Tlv(0x04, b"\x05\x00")]))

    def duplicate_extension(cert: Tlv, tbs: Tlv) -> None:
        exts = _extensions(tbs).children
        exts.append(parse_der(_ext(tbs, _SAN_OID).encode()))  # type: ignore[union-attr]

    def bad_sig_params(cert: Tlv, tbs: Tlv) -> None:
        for alg in (tbs.children[2], cert.children[1]):  # type: ignore[index]
            alg.children = [Tlv(0x06, _PSS_OID), Tlv(0x02, b"\x01")]  # params: an INTEGER, not a SEQUENCE

    def unknown_sig_alg(cert: Tlv, tbs: Tlv) -> None:
        for alg in (tbs.children[2], cert.children[1]):  # type: ignore[index]
            alg.children = [Tlv(0x06, bytes.fromhex("2b06010401838f4f02"))]

    def huge_serial(cert: Tlv, tbs: Tlv) -> None:
        tbs.children[1].value = b"\x7f" + b"\xab" * 4000  # type: ignore[index]

    def negative_serial(cert: Tlv, tbs: Tlv) -> None:
        tbs.children[1].value = b"\x80\x01"  # type: ignore[index]

    def bad_time(cert: Tlv, tbs: Tlv) -> None:
        validity = tbs.children[4]  # type: ignore[index]
        validity.children[1].value = b"99999999999999Z"  # type: ignore[index]

    def bad_name(cert: Tlv, tbs: Tlv) -> None:
        subject = tbs.children[5]  # type: ignore[index]
        atv = subject.children[-1].children[0]  # type: ignore[index]
        atv.children[1].tag = 0x1F  # a string tag that does not exist

    def empty_extensions(cert: Tlv, tbs: Tlv) -> None:
        _extensions(tbs).children = []

    variant("san-inner-length-lies", san_lies)
    variant("san-truncated", san_truncated)
    variant("san-garbage", san_garbage)
    variant("version-3", version(3))
    variant("version-255", version(255))
    variant("bad-public-key", bad_key)
    variant("unknown-key-algorithm", key_not_a_key)
    variant("unknown-critical-extension", unknown_critical)
    variant("duplicate-extension", duplicate_extension)
    variant("bad-signature-algorithm-params", bad_sig_params)
    variant("unknown-signature-algorithm", unknown_sig_alg)
    variant("huge-serial", huge_serial)
    variant("negative-serial", negative_serial)
    variant("bad-validity-time", bad_time)
    variant("bad-name-string-tag", bad_name)
    variant("empty-extensions", empty_extensions)
    out.append(("truncated-der", der[: len(der) // 2]))
    out.append(("not-der", b"\x30\x82\xff\xff" + der[4:40]))
    return out


# -- resealing ------------------------------------------------------------------------------------------------
def sa_of(d: Dispatcher) -> IkeSa:
    """The current IKE_SA of the only IKE_SA lineage in ``d``."""
    conns = [c for c in d._conns.values() if not c.closed]
    assert len(conns) == 1, conns
    return conns[0].sa


#: payloads -> payloads, or the raw inner chain bytes
Mutator = Callable[[list], "list | bytes"]  # type: ignore[type-arg]


def reseal(data: bytes, opener: IkeSa, sealer: IkeSa, mutate: Mutator, fragments: int = 0,
           first_override: int | None = None) -> list[bytes]:
    """``data`` (an SK message, or the first SKF fragment of a one-fragment message) opened with ``opener``'s
    keys; ``mutate(payloads)`` returns new payloads or raw chain bytes; sealed again with ``sealer``'s keys
    under the same header, as one SK payload or ``fragments`` SKF fragments."""
    h = pull_header(data)
    outer, sk_at = pull_chain(h.next_payload, data, HEADER_LEN)
    sk = outer[0]
    assert opener.protector is not None and sealer.protector is not None
    plain = opener.protector.open(data, sk_at + (8 if isinstance(sk, SkfPayload) else 4))
    assert isinstance(sk, (SkPayload, SkfPayload))
    payloads, _ = pull_chain(sk.first_inner, plain)
    new = mutate(list(payloads))
    if isinstance(new, (bytes, bytearray)):
        first, chain = (first_override if first_override is not None else sk.first_inner), bytes(new)
    else:
        first, chain = push_chain(new)
        if first_override is not None:
            first = first_override
    if fragments <= 1:
        def header(n: int) -> bytes:
            return push_header(Header(h.spi_i, h.spi_r, PayloadType.SK, h.exchange, h.flags, h.message_id,
                                      HEADER_LEN + n))
        return [sealer.protector.seal(header, lambda n: sk_generic_header(first, n), chain)]
    size = max(1, -(-len(chain) // fragments))
    pieces = [chain[i:i + size] for i in range(0, len(chain), size)] or [b""]
    out = []
    for k, piece in enumerate(pieces, 1):
        def fheader(n: int) -> bytes:
            return push_header(Header(h.spi_i, h.spi_r, PayloadType.SKF, h.exchange, h.flags, h.message_id,
                                      HEADER_LEN + n))

        def skf(n: int, _k: int = k, _x: int = (first if k == 1 else 0), _t: int = len(pieces)) -> bytes:
            return skf_generic_header(_x, _k, _t, n)
        out.append(sealer.protector.seal(fheader, skf, piece))
    return out
