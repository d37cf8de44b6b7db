"""Type stub for esp.gateway._io (batched UDP/raw/TUN I/O of the gateway)."""
from typing import Iterable

import numpy as np

SYNTH_NONE: int
SYNTH_UDP: int
SYNTH_ESP: int
COUNTERS: int
GRO_BUFFER: int
UDP_SEGMENT: int
UDP_GRO: int

def poll(fds: Iterable[int], timeout_ms: int) -> int: ...
def recv(fd: int, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, capacity: np.ndarray,
         max_count: int, synth: int = 0, local_addr: str | bytes | None = None, local_port: int = 0,
         gro_scratch: np.ndarray | None = None, counters: np.ndarray | None = None) -> int: ...
def send(fd: int, family: int, udp: bool, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
         select: np.ndarray, gso: bool = False, counters: np.ndarray | None = None) -> tuple[int, int]: ...
def tun_read(fd: int, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, capacity: np.ndarray,
             max_count: int) -> int: ...
def tun_write(fd: int, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
              select: np.ndarray) -> tuple[int, int]: ...
