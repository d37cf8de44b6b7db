"""IKEv2 in captures: decrypt the IKE messages of a pcap/pcapng with Wireshark's ``ikev2_decryption_table`` (or the
daemon's key log directory) and print each exchange as charon's log does, or write the whole session (IKE and,
with an ``esp_sa`` table, ESP) decrypted into a new capture that any tool reads without keys.

Why here and not in Wireshark alone: a tunnel that fails in the field comes back as a capture and a key log, and
the question is "what did each side send?" in the words of the peer's own log (``parsed IKE_AUTH request 1 [ IDi
CERT AUTH SA TSi TSr ]``). The messages are decoded by the same payload codecs and protector the daemon uses, so
what this prints is what the daemon would have parsed; a message that does not decrypt or parse is reported on its
line, never raised. Captures are read with the data plane's reader (:mod:`esp.pcap`); this module is on the edge
of ``ike`` (it reads files) like the daemon.
"""
from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

import numpy as np
from cryptography import x509

from .constants import ExchangeType, PayloadType
from .errors import ProtocolError
from .exchange import decode_message
from .fragment import Reassembly
from .keylog import _IKE_ENCR, _IKE_INTEG, ESP_TABLE, IKEV2_TABLE
from .listing import charon_summary, swanctl_algorithms
from .message import HEADER_LEN, Message, pull_header
from .payloads.cert import CertPayload
from .payloads.ident import IdPayload, identity_from_wire
from .payloads.notify import NotifyPayload
from .payloads.sa import SaPayload
from .payloads.ts import TsPayload
from .proposal import proposal_name
from .protect import Protector

__all__ = ["CaptureKeyError", "IkeKeys", "IkePacket", "decrypt_session", "load_ike_keys", "show"]

IKE_PORTS = (500, 4500)
NON_ESP_MARKER = b"\0\0\0\0"
#: The largest key table read (each row is one IKE_SA; a million rows is far past any capture).
MAX_TABLE_BYTES = 64 << 20


class CaptureKeyError(ValueError):
    """A key table that cannot be used: the message names the file, line and field."""


@dataclass(frozen=True)
class IkeKeys:
    """One row of ``ikev2_decryption_table``: the SK_e/SK_a keys of one IKE_SA, by its SPIs."""

    spi_i: int
    spi_r: int
    encr: int
    key_bits: int
    integ: int
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)

    def protector(self, from_initiator: bool) -> Protector:
        """Keys that open a message sent by the initiator (``from_initiator``) or by the responder."""
        def never(_n: int) -> bytes:
            raise RuntimeError("a capture is only read")
        if from_initiator:
            return Protector(self.encr, self.key_bits, self.integ, self.sk_er, self.sk_ei, self.sk_ar, self.sk_ai,
                             never)
        return Protector(self.encr, self.key_bits, self.integ, self.sk_ei, self.sk_er, self.sk_ai, self.sk_ar, never)


def _wireshark_encr() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for encr, name in _IKE_ENCR.items():
        for bits in (128, 192, 256):
            out.setdefault(name.format(bits=bits), (encr, bits if "{bits}" in name else 0))
    return out


_ENCR_BY_NAME = _wireshark_encr()
_INTEG_BY_NAME = {name: integ for integ, name in _IKE_INTEG.items()}
#: What the IKE protector decrypts (ENCR id, key bits); Wireshark rows beyond these are refused by name.
_USABLE_ENCR = {(12, 128), (12, 192), (12, 256), (20, 128), (20, 192), (20, 256)}
_USABLE_INTEG = {0, 2, 12, 13, 14}


def _table_path(path: Path, table: str) -> Path | None:
    """A key-log directory holds both tables; a file is the table itself."""
    if path.is_dir():
        p = path / table
        return p if p.is_file() else None
    return path


def _hex(text: str, what: str, where: str) -> bytes:
    t = text.strip().strip('"')
    t = t[2:] if t.lower().startswith("0x") else t
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise CaptureKeyError(f"{where}: {what} is not hex") from None


def parse_ike_table(text: str, source: str = IKEV2_TABLE) -> tuple[dict[tuple[int, int], IkeKeys], list[str]]:
    """Rows of Wireshark's ``ikev2_decryption_table`` by (SPIi, SPIr), and a warning per row that espresso cannot
    use (an algorithm its IKE protector lacks). A malformed row raises :class:`CaptureKeyError`."""
    keys: dict[tuple[int, int], IkeKeys] = {}
    warnings: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        cols = [c.strip() for c in next(csv.reader([line], skipinitialspace=True))]
        if len(cols) != 8:
            raise CaptureKeyError(f"{where}: {len(cols)} fields, an ikev2_decryption_table row has 8")
        spi = [_hex(c, n, where) for c, n in ((cols[0], "SPIi"), (cols[1], "SPIr"))]
        if any(len(s) != 8 for s in spi):
            raise CaptureKeyError(f"{where}: SPIs are 8 bytes (16 hex digits)")
        enc_name, integ_name = cols[4].strip('"'), cols[7].strip('"')
        if enc_name not in _ENCR_BY_NAME:
            raise CaptureKeyError(f"{where}: unknown encryption {enc_name!r}")
        if integ_name not in _INTEG_BY_NAME:
            raise CaptureKeyError(f"{where}: unknown integrity {integ_name!r}")
        encr, bits = _ENCR_BY_NAME[enc_name]
        integ = _INTEG_BY_NAME[integ_name]
        if (encr, bits) not in _USABLE_ENCR or integ not in _USABLE_INTEG or (encr == 20) != (integ == 0):
            warnings.append(f"{where}: {enc_name} with {integ_name} is not decrypted by espresso's IKE; "
                            f"its messages are shown as encrypted")
            continue
        row = IkeKeys(int.from_bytes(spi[0], "big"), int.from_bytes(spi[1], "big"), encr, bits, integ,
                      _hex(cols[2], "SK_ei", where), _hex(cols[3], "SK_er", where),
                      _hex(cols[5], "SK_ai", where), _hex(cols[6], "SK_ar", where))
        want = bits // 8 + (4 if encr == 20 else 0)
        if len(row.sk_ei) != want or len(row.sk_er) != want:
            raise CaptureKeyError(f"{where}: {enc_name} needs {want}-byte SK_e keys")
        keys[(row.spi_i, row.spi_r)] = row
    return keys, warnings


def load_ike_keys(path: str | os.PathLike[str]) -> tuple[dict[tuple[int, int], IkeKeys], list[str]]:
    """Keys from an ``ikev2_decryption_table`` file or a key-log directory (Wireshark profile or the daemon's)."""
    p = Path(path)
    table = _table_path(p, IKEV2_TABLE)
    if table is None:
        raise CaptureKeyError(f"{p}: no {IKEV2_TABLE} in this directory")
    try:
        st = table.stat()
        if st.st_size > MAX_TABLE_BYTES:
            raise CaptureKeyError(f"{table}: larger than {MAX_TABLE_BYTES >> 20} MiB")
        text = table.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CaptureKeyError(f"{table}: {exc.strerror or exc}") from None
    return parse_ike_table(text, str(table))


@dataclass
class IkePacket:
    """One IKE datagram of a capture and what became of it."""

    index: int                  # record number in the capture, 1-based as Wireshark counts
    time: float                 # seconds since the epoch
    src: tuple[str, int]
    dst: tuple[str, int]
    size: int                   # IKE message bytes (after the non-ESP marker on 4500)
    message: Message | None = None
    note: str = ""              # why there is no message, or what is pending (fragments)
    plain: bytes = b""          # the decrypted message as an unencrypted IKE datagram (for decrypt_session)
    fragment: tuple[int, int] | None = None  # (number, total) of an SKF datagram
    exchange: str = ""          # from the header, also when the body does not decode
    response: bool = False
    message_id: int = 0

    def summary(self) -> str:
        """charon's ``parsed ...`` text of this datagram, or of the message it completes."""
        if self.message is not None:
            return charon_summary(self.exchange, self.response, self.message_id,
                                  [(p.payload_type, getattr(p, "type", None) if isinstance(p, NotifyPayload) else None)
                                   for p in self.message.payloads])
        return self.outer_summary()

    def outer_summary(self) -> str:
        """The datagram as charon parses it before decryption: ``[ EF(1/3) ]`` for a fragment, else ``[ E ]``."""
        body = f"EF({self.fragment[0]}/{self.fragment[1]})" if self.fragment is not None else "E"
        return f"{self.exchange} {'response' if self.response else 'request'} {self.message_id} [ {body} ]"


def _addr(hi: int, lo: int, version: int) -> str:
    a = ipaddress.IPv6Address((hi << 64) | lo)
    return str(a.ipv4_mapped) if version == 4 and a.ipv4_mapped else str(a)


def _ike_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, float, tuple[str, int], tuple[str, int],
                                                                  bytes]]:
    """(index, time, src, dst, IKE message) for each UDP 500/4500 datagram that carries IKE."""
    from esp.pcap import CaptureReader, parse_l3

    with CaptureReader(path) as reader:
        for chunk in reader.chunks():
            lts = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
            info = parse_l3(chunk, lts)
            for k in range(chunk.count):
                if info.proto[k] != 17 or info.l3[k] < 0 or info.frag[k]:
                    continue
                start = int(chunk.offsets[k])
                l4 = start + int(info.l4[k])
                end = min(start + int(chunk.caplen[k]), start + int(info.l3[k]) + int(info.ip_len[k]))
                if l4 + 8 > end:
                    continue
                udp = bytes(chunk.data[l4:l4 + 8])
                sport, dport, ulen = struct.unpack("!HHH", udp[:6])
                if sport not in IKE_PORTS and dport not in IKE_PORTS:
                    continue
                payload = bytes(chunk.data[l4 + 8:min(end, l4 + max(ulen, 8))])
                if 4500 in (sport, dport):
                    if payload[:4] != NON_ESP_MARKER:
                        continue  # ESP in UDP (or a keepalive)
                    payload = payload[4:]
                if len(payload) < HEADER_LEN:
                    continue
                iface = reader.interfaces[int(chunk.iface[k])]
                t = (int(chunk.ts[k]) + iface.tsoffset * iface.tsresol) / iface.tsresol
                v = int(info.version[k])
                yield (chunk.first_index + k + 1, t,
                       (_addr(int(info.src_hi[k]), int(info.src_lo[k]), v), sport),
                       (_addr(int(info.dst_hi[k]), int(info.dst_lo[k]), v), dport), payload)


def read_ike(path: str | os.PathLike[str], keys: dict[tuple[int, int], IkeKeys]) -> Iterator[IkePacket]:
    """Every IKE datagram of a capture, decoded (and decrypted where ``keys`` has its IKE_SA)."""
    reassembly: dict[tuple[int, int, bool], dict[int, Reassembly]] = {}
    for index, t, src, dst, data in _ike_records(path):
        pkt = IkePacket(index, t, src, dst, len(data))
        try:
            header = pull_header(data)
        except ProtocolError as exc:
            pkt.note = f"not an IKEv2 message: {exc}"
            yield pkt
            continue
        pkt.exchange, pkt.response, pkt.message_id = (_exchange_name(header.exchange), header.is_response,
                                                       header.message_id)
        if header.next_payload == PayloadType.SKF and len(data) >= HEADER_LEN + 8:
            pkt.fragment = struct.unpack_from("!HH", data, HEADER_LEN + 4)
        row = keys.get((header.spi_i, header.spi_r))
        sa = SimpleNamespace(protector=row.protector(header.from_initiator)) if row is not None else None
        frags = reassembly.setdefault((header.spi_i, header.spi_r, header.from_initiator), {})
        try:
            msg = decode_message(sa, data, header, frags)
        except ProtocolError as exc:
            encrypted = header.next_payload in (PayloadType.SK, PayloadType.SKF)
            pkt.note = ("encrypted, no keys for SPIs " f"{header.spi_i:016x}_i {header.spi_r:016x}_r"
                        if encrypted and row is None else f"does not decode: {exc}")
            yield pkt
            continue
        if msg is None:
            pkt.note = (f"received fragment #{pkt.fragment[0]} of {pkt.fragment[1]}, waiting for complete IKE message"
                        if pkt.fragment else "fragment")
            yield pkt
            continue
        pkt.message = msg
        if msg.encrypted:
            pkt.plain = msg.encode_plain()
        yield pkt


def _ts_text(ts: TsPayload) -> str:
    return " ".join(str(s) for s in ts.selectors)


def details(msg: Message) -> list[str]:
    """What charon logs about a parsed message beyond its payload list: proposals, IDs, certificates, selectors."""
    out: list[str] = []
    for p in msg.payloads:
        if isinstance(p, SaPayload):
            names = []
            for prop in p.proposals:
                proto = {1: "IKE", 2: "AH", 3: "ESP"}.get(prop.protocol, str(prop.protocol))
                try:
                    names.append(f"{proto}:{swanctl_algorithms(proposal_name(prop), ike=prop.protocol == 1)}")
                except (ProtocolError, ValueError, KeyError):  # a transform espresso does not name
                    names.append(f"{proto}:" + "/".join(f"{t.type}:{t.id}" for t in prop.transforms))
            out.append(("selected proposal: " if msg.response else "received proposals: ") + ", ".join(names))
        elif isinstance(p, IdPayload):
            try:
                ident = str(identity_from_wire(p.id_type, p.data))
            except (ProtocolError, ValueError):
                ident = f"type {p.id_type}, {len(p.data)} bytes"
            out.append(f"{'IDi' if p.initiator else 'IDr'} '{ident}'")
        elif isinstance(p, CertPayload):
            if p.encoding == 4:
                try:
                    cert = x509.load_der_x509_certificate(p.data)
                    out.append(f"certificate \"{cert.subject.rfc4514_string()}\" "
                               f"issued by \"{cert.issuer.rfc4514_string()}\"")
                except ValueError:
                    out.append("certificate that does not parse")
            else:
                out.append(f"certificate encoding {p.encoding}")
        elif isinstance(p, TsPayload):
            out.append(f"{'TSi' if p.initiator else 'TSr'} {_ts_text(p)}")
    return out


def _exchange_name(value: int) -> str:
    try:
        return ExchangeType(value).name
    except ValueError:
        return str(value)


def show(path: str | os.PathLike[str], keys: dict[tuple[int, int], IkeKeys], out: TextIO, *,
         verbose: bool = True) -> dict[str, int]:
    """Print the capture's IKE exchanges as charon's log would; returns counts (messages, decrypted, refused)."""
    counts = {"messages": 0, "decrypted": 0, "encrypted": 0, "undecodable": 0, "fragments": 0}
    for pkt in read_ike(path, keys):
        counts["messages"] += 1
        (sa_, sp), (da, dp) = pkt.src, pkt.dst
        out.write(f"#{pkt.index} received packet: from {sa_}[{sp}] to {da}[{dp}] ({pkt.size} bytes)\n")
        if pkt.fragment is not None:
            out.write(f"    parsed {pkt.outer_summary()}\n")
        if pkt.message is None:
            key = ("fragments" if pkt.note.startswith("received fragment") else
                   "encrypted" if pkt.note.startswith("encrypted") else "undecodable")
            counts[key] += 1
            out.write(f"    {pkt.note}\n")
            continue
        msg = pkt.message
        counts["decrypted"] += msg.encrypted
        if pkt.fragment is not None:
            out.write(f"    received fragment #{pkt.fragment[0]} of {pkt.fragment[1]}, reassembled fragmented IKE "
                      f"message\n")
        out.write(f"    parsed {pkt.summary()}\n")
        if verbose:
            out.write(f"    SPIs {msg.spi_i:016x}_i {msg.spi_r:016x}_r\n")
            for line in details(msg):
                out.write(f"    {line}\n")
    return counts


# -- the whole session into a capture ------------------------------------------------------------------------

def _ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet carrying ``payload`` in UDP (checksum computed, as IPv6 requires)."""
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    udp_len = 8 + len(payload)
    if a.version == 4:
        pseudo = a.packed + b.packed + struct.pack("!BBH", 0, 17, udp_len)
    else:
        pseudo = a.packed + b.packed + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    csum = _ip_checksum(pseudo + udp + (b"\0" if len(udp) % 2 else b"")) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if a.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, a.packed, b.packed)
        return hdr[:10] + struct.pack("!H", _ip_checksum(hdr)) + hdr[12:] + udp
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, a.packed, b.packed) + udp


def decrypt_session(capture: str | os.PathLike[str], out_path: str | os.PathLike[str],
                    keys_path: str | os.PathLike[str], *, esp_sa: str | os.PathLike[str] | None = None
                    ) -> dict[str, int]:
    """Write ``capture`` with its IKE messages decrypted (the SK payload replaced by the payloads it carried,
    fragments by the reassembled message) and, when an ``esp_sa`` table is at hand (``esp_sa`` or beside the
    IKE table in a key-log directory), its ESP decrypted by the data plane's capture tool. The output is raw IP
    (link type 101), one record per input record except IKE fragments, which become their reassembled message."""
    from esp.pcap import CaptureReader, CaptureWriter, Interface, decrypt_file, parse_l3

    keys, _warnings = load_ike_keys(keys_path)
    table = Path(esp_sa) if esp_sa is not None else _table_path(Path(keys_path), ESP_TABLE)
    counts = {"records": 0, "ike_decrypted": 0, "fragments_merged": 0, "esp_decrypted": 0}
    with tempfile.TemporaryDirectory(prefix="espresso-ike-") as tmp:
        src = Path(capture)
        if table is not None and table.is_file() and table.stat().st_size:
            staged = Path(tmp) / "esp.pcap"
            summary = decrypt_file(src, staged, table)
            counts["esp_decrypted"] = sum(s.packets for s in summary.per_sa)
            src = staged
        plain = {p.index: p for p in read_ike(src, keys)}
        with CaptureReader(src) as reader:
            writer = CaptureWriter(out_path, [Interface(101)], fmt="pcap")
            try:
                for chunk in reader.chunks():
                    lts = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
                    info = parse_l3(chunk, lts)
                    recs: list[bytes] = []
                    times: list[int] = []
                    for k in range(chunk.count):
                        index = chunk.first_index + k + 1
                        pkt = plain.get(index)
                        iface = reader.interfaces[int(chunk.iface[k])]
                        if pkt is not None and pkt.message is None and pkt.fragment is not None:
                            counts["fragments_merged"] += 1
                            continue
                        if pkt is not None and pkt.plain:
                            marker = NON_ESP_MARKER if 4500 in (pkt.src[1], pkt.dst[1]) else b""
                            rec = _udp_packet(pkt.src, pkt.dst, marker + pkt.plain)
                            counts["ike_decrypted"] += 1
                        elif info.l3[k] >= 0:
                            s = int(chunk.offsets[k]) + int(info.l3[k])
                            rec = bytes(chunk.data[s:int(chunk.offsets[k]) + int(chunk.caplen[k])])
                        else:
                            continue  # not IP: a raw-IP capture cannot hold it
                        recs.append(rec)
                        times.append((int(chunk.ts[k]) + iface.tsoffset * iface.tsresol) * 1_000_000
                                     // iface.tsresol)
                    if recs:
                        data = np.frombuffer(b"".join(recs), dtype=np.uint8).copy()
                        lengths = np.asarray([len(r) for r in recs], dtype=np.int64)
                        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
                        writer.write(data, offsets, lengths, np.asarray(times, dtype=np.int64),
                                     np.zeros(len(recs), dtype=np.int32), src_tsresol=[1_000_000])
                        counts["records"] += len(recs)
            finally:
                writer.close()
    return counts


# -- command line (python -m ike pcap ...) ---------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pcap_command", required=True)
    s = sub.add_parser("show", help="print each IKE message of a capture as charon logs it, decrypted with keys")
    s.add_argument("capture", help="pcap or pcapng")
    s.add_argument("--keys", "-k", help="ikev2_decryption_table file, or a key-log directory (Wireshark "
                                        "profile or the daemon's key_log)")
    s.add_argument("--brief", action="store_true", help="only the received/parsed lines")
    d = sub.add_parser("decrypt", help="write the capture with IKE (and ESP, given esp_sa) decrypted, raw IP")
    d.add_argument("capture")
    d.add_argument("output")
    d.add_argument("--keys", "-k", required=True, help="ikev2_decryption_table file or key-log directory")
    d.add_argument("--esp-sa", help="esp_sa table or espresso TOML SAs (default: esp_sa beside the IKE table)")


def run_from_args(args: argparse.Namespace) -> int:
    import sys

    from esp.pcap import CaptureError

    try:
        if args.pcap_command == "show":
            keys, warnings = load_ike_keys(args.keys) if args.keys else ({}, [])
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            counts = show(args.capture, keys, sys.stdout, verbose=not args.brief)
            print(f"{counts['messages']} IKE messages, {counts['decrypted']} decrypted, {counts['encrypted']} "
                  f"without keys, {counts['undecodable']} undecodable, {counts['fragments']} fragments",
                  file=sys.stderr)
            return 0
        counts = decrypt_session(args.capture, args.output, args.keys, esp_sa=args.esp_sa)
        print(f"{counts['records']} records written: {counts['ike_decrypted']} IKE messages and "
              f"{counts['esp_decrypted']} ESP packets decrypted, {counts['fragments_merged']} IKE fragments "
              f"merged into their message", file=sys.stderr)
        return 0
    except (CaptureKeyError, CaptureError, OSError, ValueError) as exc:
        print(f"python -m ike pcap: {exc}", file=sys.stderr)
        return 2
