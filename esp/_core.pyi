"""Type stub of the compiled ESP core (esp/_core.pyx). Use it through esp.Sa and esp.PacketBatch."""
import builtins
from typing import Any, Optional

import numpy as np

VERDICTS: tuple[str, ...]
CIPHERS: dict[str, int]
INTEGS: dict[str, int]
HAVE_IPSECMB: bool
IPSECMB_VERSION: Optional[str]
IPSECMB_ARCH: Optional[str]
OPENSSL_VERSION: str
MAX_WINDOW: int
#: A capsule of esp/_saapi.h's table: one packet through an SA, for esp.pcap._pcapio.EspChunk.
SA_API: Any

def ipsecmb_supports(cipher: str, key_len: int, integ: str = ...) -> bool: ...

class BatchView:
    count: int
    def __init__(self, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, capacity: np.ndarray,
                 status: np.ndarray) -> None: ...

class SaContext:
    backend: int
    seq: int
    window: int
    soft_expired: bool
    hard_expired: bool
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
    # builtins.bytes: the attribute ``bytes`` above shadows the type inside the class
    def __init__(self, *, cipher: str, integ: str, outbound: bool, key: builtins.bytes, salt: builtins.bytes,
                 integ_key: builtins.bytes, iv_len: int, icv_len: int, align: int, spi: int, framing: str,
                 outer_src: builtins.bytes = ..., outer_dst: builtins.bytes = ..., sport: int = ..., dport: int = ...,
                 esn: bool = ..., window: int = ..., initial_seq: int = ..., tfc_pad: int = ..., backend: str = ...,
                 soft_bytes: int = ..., hard_bytes: int = ..., soft_packets: int = ...,
                 hard_packets: int = ...) -> None: ...
    @property
    def replay_state(self) -> tuple[int, int]: ...
    def process_into(self, src: BatchView, dst: BatchView, select: Optional[np.ndarray] = ...) -> int: ...
    def process_one(self, pkt: builtins.bytes) -> tuple[int, builtins.bytes]: ...
    def seal(self, payload: builtins.bytes, next_header: int) -> tuple[int, builtins.bytes]: ...
    def open(self, esp: builtins.bytes) -> tuple[int, builtins.bytes, int]: ...
    def force_iv(self, iv: builtins.bytes) -> None: ...
    def predictable_ivs_for_tests(self) -> None: ...
    def esp_overhead(self, payload_len: int) -> int: ...
