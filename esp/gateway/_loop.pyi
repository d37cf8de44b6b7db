"""Type stub for esp.gateway._loop (the compiled transmit loop: TUN -> segment -> classify -> encrypt -> UDP)."""
from typing import Any

import numpy as np

from esp.batch import PacketBatch

COUNTERS: int
C_TUN_READ: int
C_TSO_SUPER: int
C_TSO_SEGMENTS: int
C_TUN_BAD: int
C_ESP_SENT: int
C_SEND_DROPPED: int
C_NOT_SENT: int
C_BATCHES: int
C_GSO_TRAINS: int
C_GSO_DATAGRAMS: int
C_GSO_REFUSED: int
C_LEFT_DROPPED: int
C_VERDICTS: int
STOP: int
IDLE: int
CYCLES_DONE: int
LEFTOVER: int
GSO_REFUSED: int
RESYNC: int
C_ESP_RECEIVED: int
C_GRO_TRAINS: int
C_GRO_DATAGRAMS: int
C_TUN_WRITTEN: int
C_TUN_WRITE_DROPPED: int
C_TUN_GRO_PACKETS: int
C_NOT_DELIVERED: int
C_BYTES_IN: int

class TxLoop:
    gso: bool
    inner_mtu: int
    nleft: int
    def __init__(self, api: Any, tun_fd: int, wake_fd: int, resync_fd: int, udp_fd: int, family: int, vnet: bool,
                 gso: bool, src: PacketBatch, out: PacketBatch, sup: PacketBatch | None, left: PacketBatch,
                 counters: np.ndarray, raw_fd: int = -1) -> None: ...
    def publish(self, table: np.ndarray, contexts: list[Any], inner_mtu: int) -> None: ...
    def run(self, cycles: int, poll_ms: int, budget_ms: int = 10) -> int: ...

class RxLoop:
    nleft: int
    def __init__(self, api: Any, udp_fd: int, wake_fd: int, resync_fd: int, tun_fd: int, vnet: bool, uso: bool,
                 local_addr: bytes, local_port: int, src: PacketBatch, out: PacketBatch, coal: PacketBatch | None,
                 left: PacketBatch, scratch: np.ndarray | None, counters: np.ndarray, raw_fd: int = -1) -> None: ...
    def publish(self, sas: list[tuple[int, Any, np.ndarray | None]]) -> None: ...
    def run(self, cycles: int, poll_ms: int, budget_ms: int = 10) -> int: ...
