"""Security associations: the configuration (``SaParams``) and the live object (``Sa``).

``SaParams`` is what IKE negotiates or an operator configures; ``Sa`` owns the compiled context built from it
and is the only way packets reach the core. Keys never appear in a repr.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from esp import _core
from esp.batch import PacketBatch, Verdict
from esp.errors import BackendReason, BackendUnavailable, error_for_verdict
from esp.suites import Cipher, Suite, parse_suite

__all__ = ["Mode", "Direction", "Lifetime", "UdpEncap", "SaParams", "Counters", "Sa", "available_backends",
           "best_backend"]

#: Replay windows allowed: 0 (off) or 32 up to 2^20 packets.
MIN_WINDOW, MAX_WINDOW = 32, _core.MAX_WINDOW


class Mode(str, enum.Enum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class Direction(str, enum.Enum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class Lifetime:
    """Soft limits raise a rekey signal once; hard limits stop the SA. 0 means no limit."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0

    def __post_init__(self) -> None:
        for name in ("soft_bytes", "hard_bytes", "soft_packets", "hard_packets"):
            if getattr(self, name) < 0:
                raise ValueError(f"lifetime {name} must be >= 0")


@dataclass(frozen=True)
class UdpEncap:
    """RFC 3948 UDP encapsulation: the outer UDP ports (4500 on both sides by default)."""

    sport: int = 4500
    dport: int = 4500

    def __post_init__(self) -> None:
        if not (0 < self.sport < 65536 and 0 < self.dport < 65536):
            raise ValueError("UDP encapsulation ports must be 1..65535")


@dataclass(frozen=True)
class SaParams:
    """Everything that defines one SA in one direction.

    ``enc_key`` is the KEYMAT slice for the cipher, key then salt, as IKEv2 derives it (RFC 7296 2.17, RFC 4106
    8.1); ``integ_key`` is the HMAC key of non-AEAD suites. ``src``/``dst`` are the outer tunnel addresses.
    """

    spi: int
    direction: Direction
    suite: Suite
    enc_key: bytes = field(repr=False)
    integ_key: bytes = field(default=b"", repr=False)
    mode: Mode = Mode.TUNNEL
    src: Optional[str] = None
    dst: Optional[str] = None
    esn: bool = False
    replay_window: int = 64
    encap: Optional[UdpEncap] = None
    lifetime: Lifetime = Lifetime()
    tfc_pad: int = 0
    backend: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.spi, int) or isinstance(self.spi, bool):
            raise TypeError(f"spi must be an int, not {type(self.spi).__name__}")
        for name in ("enc_key", "integ_key"):
            if not isinstance(getattr(self, name), (bytes, bytearray, memoryview)):
                raise TypeError(f"{name} must be bytes, not {type(getattr(self, name)).__name__}")
        if self.encap is not None and not isinstance(self.encap, UdpEncap):
            raise TypeError("encap must be an esp.UdpEncap(sport, dport) or None")
        if not isinstance(self.lifetime, Lifetime):
            raise TypeError("lifetime must be an esp.Lifetime")
        object.__setattr__(self, "suite", parse_suite(self.suite))
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "enc_key", bytes(self.enc_key))
        object.__setattr__(self, "integ_key", bytes(self.integ_key))
        s = self.suite
        # SPIs 0..255 are reserved on the wire (RFC 4303 2.1) but appear in published test vectors and
        # captures; IKE never allocates them, and the SAD refuses to index SPI 0.
        if not 0 <= self.spi <= 0xFFFFFFFF:
            raise ValueError("SPI must fit 32 bits")
        if len(self.enc_key) != s.enc_keymat_len:
            raise ValueError(f"{s.name} needs {s.enc_keymat_len} bytes of cipher keying material "
                             f"({s.key_len} key + {s.salt_len} salt), got {len(self.enc_key)}")
        if len(self.integ_key) != s.integ_key_len:
            raise ValueError(f"{s.name} needs a {s.integ_key_len}-byte integrity key, got {len(self.integ_key)}")
        if self.replay_window != 0 and not MIN_WINDOW <= self.replay_window <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0 (off) or {MIN_WINDOW}..{MAX_WINDOW}")
        if not 0 <= self.tfc_pad <= 1500:
            raise ValueError("TFC padding target must be 0..1500 bytes")
        if self.mode is Mode.TUNNEL and self.direction is Direction.OUT:
            if self.src is None or self.dst is None:
                raise ValueError("an outbound tunnel-mode SA needs outer src and dst addresses")
            if ipaddress.ip_address(self.src).version != ipaddress.ip_address(self.dst).version:
                raise ValueError("outer src and dst must be of one address family")
        else:
            for a in (self.src, self.dst):
                if a is not None:
                    ipaddress.ip_address(a)
        if self.backend not in (None, "openssl", "ipsecmb"):
            raise ValueError(f"unknown backend {self.backend!r}; use 'openssl', 'ipsecmb' or None")


@dataclass(frozen=True)
class Counters:
    """A snapshot of an SA's counters. ``packets``/``bytes`` count payload that passed."""

    packets: int
    bytes: int
    auth_failed: int
    replayed: int
    malformed: int
    pad_errors: int
    dummy: int
    no_space: int
    expired: int
    seq_exhausted: int
    unsupported: int


def available_backends(suite: Suite | str) -> list[str]:
    """Backends that can run ``suite`` in this build, fastest first."""
    s = parse_suite(suite)
    out = []
    if _core.HAVE_IPSECMB and _core.ipsecmb_supports(s.cipher.value, s.key_len, s.integ.value):
        out.append("ipsecmb")
    out.append("openssl")
    return out


def best_backend(suite: Suite | str) -> str:
    return available_backends(suite)[0]


def _view(batch: PacketBatch) -> "_core.BatchView":
    try:
        return batch.view
    except AttributeError:
        raise TypeError(f"expected a PacketBatch, got {type(batch).__name__}") from None


def _pack_addr(a: Optional[str]) -> bytes:
    return ipaddress.ip_address(a).packed if a else b""


class Sa:
    """One SA in one direction, with its compiled context and counters."""

    def __init__(self, params: SaParams, *, initial_seq: int = 0, framing: Optional[str] = None) -> None:
        """``initial_seq``: outbound, the last sequence number already used (the next sent is one more);
        inbound, the highest already received. ``framing="raw"`` gives an ESP-only SA (seal/open)."""
        s = params.suite
        backend = params.backend or best_backend(s)
        if backend not in available_backends(s):
            reason = BackendReason.NOT_BUILT if not _core.HAVE_IPSECMB else BackendReason.SUITE
            raise BackendUnavailable(backend, reason)
        if not 0 <= initial_seq < (1 << 64 if params.esn else 1 << 32):
            raise ValueError("initial_seq out of range for the sequence number space")
        self.params = params
        self.backend = backend
        self._outbound = params.direction is Direction.OUT
        enc = params.encap
        self._ctx = _core.SaContext(
            cipher=s.cipher.value, integ=s.integ.value, outbound=params.direction is Direction.OUT,
            key=params.enc_key[:s.key_len], salt=params.enc_key[s.key_len:], integ_key=params.integ_key,
            iv_len=s.iv_len, icv_len=s.icv_len, align=s.align, spi=params.spi,
            framing=framing or params.mode.value,
            outer_src=_pack_addr(params.src) if params.mode is Mode.TUNNEL else b"",
            outer_dst=_pack_addr(params.dst) if params.mode is Mode.TUNNEL else b"",
            sport=enc.sport if enc else 0, dport=enc.dport if enc else 0, esn=params.esn,
            window=params.replay_window, initial_seq=initial_seq, tfc_pad=params.tfc_pad, backend=backend,
            soft_bytes=params.lifetime.soft_bytes, hard_bytes=params.lifetime.hard_bytes,
            soft_packets=params.lifetime.soft_packets, hard_packets=params.lifetime.hard_packets,
        )

    def __repr__(self) -> str:
        p = self.params
        return (f"<Sa spi=0x{p.spi:08x} {p.direction.value} {p.suite.name} {p.mode.value} "
                f"backend={self.backend} seq={self.seq}>")

    @property
    def spi(self) -> int:
        return self.params.spi

    @property
    def seq(self) -> int:
        return int(self._ctx.seq)

    @property
    def context(self) -> _core.SaContext:
        """The compiled context, for compiled code that drives the SA through ``esp._core.SA_API``
        (esp/_saapi.h: the gateway's data loop): it owns the sequence number, so every caller shares it."""
        return self._ctx

    @property
    def soft_expired(self) -> bool:
        return bool(self._ctx.soft_expired)

    @property
    def hard_expired(self) -> bool:
        return bool(self._ctx.hard_expired)

    @property
    def counters(self) -> Counters:
        c = self._ctx
        return Counters(c.packets, c.bytes, c.auth_failed, c.replayed, c.malformed, c.pad_errors, c.dummy,
                        c.no_space, c.expired, c.seq_exhausted, c.unsupported)

    def overhead(self, payload_len: int) -> int:
        """How many bytes an outbound packet of ``payload_len`` grows by."""
        return int(self._ctx.esp_overhead(payload_len))

    def set_next_iv(self, iv: bytes) -> None:
        """Use ``iv`` as the explicit IV of the next packet sealed: for known-answer tests only. An IV chosen
        by hand can repeat under one key, which breaks the AEADs; the SA's own IVs never do."""
        self._need(Direction.OUT)
        if len(iv) != self.params.suite.iv_len:
            raise ValueError(f"{self.params.suite.name} takes a {self.params.suite.iv_len}-byte IV")
        self._ctx.force_iv(iv)

    # -- single packets (people and tests) --------------------------------------------------------------
    def encrypt(self, packet: bytes) -> bytes:
        """One IP packet in, one ESP-protected IP packet out; raises a PacketError subclass on refusal."""
        self._need(Direction.OUT)
        verdict, out = self._ctx.process_one(packet)
        if verdict != Verdict.OK:
            raise error_for_verdict(verdict, self.spi)
        return out

    def decrypt(self, packet: bytes) -> bytes:
        """One ESP-carrying IP packet in, the inner (tunnel) or restored (transport) packet out."""
        self._need(Direction.IN)
        verdict, out = self._ctx.process_one(packet)
        if verdict != Verdict.OK:
            raise error_for_verdict(verdict, self.spi)
        return out

    def seal(self, payload: bytes, next_header: int) -> bytes:
        """ESP only: SPI | seq | IV | ciphertext | ICV for a payload and its next-header value."""
        self._need(Direction.OUT)
        verdict, out = self._ctx.seal(payload, next_header)
        if verdict != Verdict.OK:
            raise error_for_verdict(verdict, self.spi)
        return out

    def open(self, esp: bytes) -> tuple[bytes, int]:
        """ESP only: (payload, next header) from SPI..ICV."""
        self._need(Direction.IN)
        verdict, payload, nh = self._ctx.open(esp)
        if verdict != Verdict.OK:
            raise error_for_verdict(verdict, self.spi)
        return payload, nh

    # -- batches (the hot path) ---------------------------------------------------------------------------
    def encrypt_batch(self, src: PacketBatch, dst: PacketBatch, select: Optional[np.ndarray] = None) -> int:
        """Encrypt slots of ``src`` into the same slots of ``dst``; verdicts in ``dst.status``.

        ``dst`` may be ``src`` itself (in place, as a software router works), or any batch whose slots share no
        memory with another slot's; batches that overlap otherwise raise ValueError before any packet is
        touched. A slot outside its arena is MALFORMED."""
        if not self._outbound:
            self._need(Direction.OUT)
        if select is not None:
            select = np.ascontiguousarray(select, dtype=np.int32)
        return self._ctx.process_into(_view(src), _view(dst), select)

    def decrypt_batch(self, src: PacketBatch, dst: PacketBatch, select: Optional[np.ndarray] = None) -> int:
        """Verify and decrypt slots of ``src`` into ``dst``; verdicts in ``dst.status``. In place
        (``decrypt_batch(b, b)``) gives the bytes out of place gives, for every suite and backend; the rules
        on overlap are :meth:`encrypt_batch`'s."""
        if self._outbound:
            self._need(Direction.IN)
        if select is not None:
            select = np.ascontiguousarray(select, dtype=np.int32)
        return self._ctx.process_into(_view(src), _view(dst), select)

    def _need(self, direction: Direction) -> None:
        if self.params.direction is not direction:
            raise ValueError(f"SA 0x{self.spi:08x} is {self.params.direction.value}bound")
