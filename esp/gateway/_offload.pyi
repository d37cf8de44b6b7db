"""Type stub for esp.gateway._offload (TUN TSO/USO segmentation and userspace GRO over virtio_net_hdr)."""
import enum

import numpy as np

VNET_HDR_SIZE: int
FLAG_NEEDS_CSUM: int
FLAG_DATA_VALID: int

class OffloadVerdict(enum.IntEnum):
    OK = 0
    SHORT = -1
    FLAGS = -2
    GSO_TYPE = -3
    GSO_SIZE = -4
    IP_VERSION = -5
    IP_HEADER = -6
    IP_LENGTH = -7
    IP_FRAGMENT = -8
    EXT_HEADER = -9
    PROTOCOL = -10
    TCP_HEADER = -11
    UDP_HEADER = -12
    HDR_LEN = -13
    CSUM = -14
    NO_SPACE = -15
    TOO_MANY = -16
    NO_MEMORY = -17
    BAD_SLOT = -18

class GsoType(enum.IntEnum):
    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5
    ECN = 0x80

def parse(data: bytes | bytearray | memoryview | np.ndarray) -> int: ...
def segment(data: bytes | bytearray | memoryview | np.ndarray, buf: np.ndarray, offsets: np.ndarray,
            lengths: np.ndarray, capacity: np.ndarray) -> int: ...
def coalesce(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, out: np.ndarray, out_offsets: np.ndarray,
             out_lengths: np.ndarray, select: np.ndarray | None = ..., udp: bool = ...) -> int: ...
