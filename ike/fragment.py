"""IKE fragmentation (RFC 7383): splitting an encrypted message into SKF payloads and reassembling them.

Every fragment is protected on its own. Reassembly is bounded (``MAX_FRAGMENTS`` fragments, ``MAX_REASSEMBLY``
plaintext bytes) since a peer chooses how much it makes us hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .constants import HEADER_LEN, PayloadType
from .errors import ParseError, TooLargeError
from .message import Header, Message, push_chain, push_header
from .protect import Protector, skf_generic_header

__all__ = ["fragment_message", "Reassembly", "MAX_FRAGMENTS", "MAX_REASSEMBLY", "UDP_IP_OVERHEAD", "datagram_overhead"]

MAX_FRAGMENTS = 64
MAX_REASSEMBLY = 64 * 1024
UDP_IP_OVERHEAD = 28  # IPv4 + UDP
NON_ESP_MARKER_LEN = 4


def datagram_overhead(remote_host: str) -> int:
    """What an IP datagram adds around an IKE message towards ``remote_host``: the IP header (20 bytes for IPv4,
    40 for IPv6), UDP's 8 and the non-ESP marker's 4 (counted always, so a move to the NAT-T port never makes a
    fragment too large). strongSwan's fragment_size is the whole datagram, so ours is too."""
    return (48 if ":" in remote_host else UDP_IP_OVERHEAD) + NON_ESP_MARKER_LEN


def fragment_message(msg: Message, protector: Protector, max_size: int,
                     overhead: int = UDP_IP_OVERHEAD + NON_ESP_MARKER_LEN) -> list[bytes]:
    """SKF fragments of ``msg`` so that each makes an IP datagram of at most ``max_size`` bytes, ``overhead``
    of which are IP, UDP and marker (:func:`datagram_overhead`)."""
    first, chain = push_chain(msg.payloads)
    room = max_size - overhead - HEADER_LEN - 8 - protector.overhead
    if room < 64:
        raise ValueError(f"fragment size {max_size} leaves no room for data")
    pieces = [chain[i:i + room] for i in range(0, len(chain), room)] or [b""]
    if len(pieces) > MAX_FRAGMENTS:
        raise TooLargeError(f"message needs {len(pieces)} fragments")
    total = len(pieces)
    out = []
    for n, piece in enumerate(pieces, 1):
        nxt = first if n == 1 else 0

        def header(payload_len: int, _n: int = n) -> bytes:
            return push_header(Header(msg.spi_i, msg.spi_r, PayloadType.SKF, msg.exchange, msg.flags,
                                      msg.message_id, HEADER_LEN + payload_len))

        def skf_header(body_len: int, _n: int = n, _x: int = nxt) -> bytes:
            return skf_generic_header(_x, _n, total, body_len)

        out.append(protector.seal(header, skf_header, piece))
    return out


@dataclass
class Reassembly:
    """Fragments of one message (one message ID) being collected."""

    message_id: int
    total: int
    first_inner: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    first_raw: bytes = b""

    def add(self, number: int, total: int, plaintext: bytes, first_inner: int) -> bool:
        """True once complete. Inconsistent totals or too much data raise."""
        if total != self.total:
            raise ParseError("fragments disagree on the total")
        if total > MAX_FRAGMENTS:
            raise TooLargeError(f"{total} fragments")
        if number in self.parts:
            return False
        self.size += len(plaintext)
        if self.size > MAX_REASSEMBLY:
            raise TooLargeError("reassembled message too large")
        self.parts[number] = plaintext
        if number == 1:
            self.first_inner = first_inner
        return len(self.parts) == self.total

    def data(self) -> bytes:
        return b"".join(self.parts[i] for i in range(1, self.total + 1))
