"""Open a TUN device with virtio_net_hdr offloads, probing what this kernel accepts.

With ``IFF_VNET_HDR`` every read() and write() on the TUN carries a 10-byte ``virtio_net_hdr``, and
``TUNSETOFFLOAD`` tells the kernel which offloads the reader performs itself: with TSO4/TSO6 (and USO4/USO6
since Linux 6.2) the kernel stops segmenting and hands over super-packets of up to 64 KB, which
:mod:`esp.gateway._offload` segments. Kernels and devices differ, so the offloads are probed from the most to
the least capable set and the TUN falls back, in the end, to no header at all: the gateway then runs the
plain path (one packet per read). :class:`VnetTun` says what was granted, for the gateway's stats.
"""
from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from esp.gateway.tun import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, IFNAMSIZ, TUN_PATH, TUNSETIFF, TunError

__all__ = ["Offload", "VnetTun", "VNET_HDR_SIZE", "OFFLOADS_ALL", "open_vnet_tun", "set_offloads"]

TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_VNET_HDR = 0x4000
#: sizeof(struct virtio_net_hdr): no num_buffers (that is virtio_net_hdr_mrg_rxbuf, 12 bytes).
VNET_HDR_SIZE = 10


class Offload(enum.IntFlag):
    """``TUN_F_*`` bits of TUNSETOFFLOAD (include/uapi/linux/if_tun.h)."""

    NONE = 0
    CSUM = 0x01     # the reader completes checksums (NEEDS_CSUM); required by every other bit
    TSO4 = 0x02
    TSO6 = 0x04
    TSO_ECN = 0x08  # TCP super-packets carrying CWR (gso_type | ECN)
    USO4 = 0x20     # UDP segmentation (UDP_L4); the kernel takes USO4 and USO6 only together
    USO6 = 0x40


OFFLOADS_ALL = Offload.CSUM | Offload.TSO4 | Offload.TSO6 | Offload.TSO_ECN | Offload.USO4 | Offload.USO6
#: What is tried, in order, until the kernel accepts one: each step drops what older kernels refuse.
_FALLBACK = (
    OFFLOADS_ALL,
    Offload.CSUM | Offload.TSO4 | Offload.TSO6 | Offload.TSO_ECN,
    Offload.CSUM | Offload.TSO4 | Offload.TSO6,
    Offload.CSUM,
    Offload.NONE,
)


@dataclass(frozen=True)
class VnetTun:
    """An open, non-blocking TUN fd. ``vnet_hdr`` False: the kernel has no IFF_VNET_HDR (plain packets)."""

    fd: int
    name: str
    vnet_hdr: bool
    offloads: Offload

    @property
    def segmentation(self) -> bool:
        """Reads may return TCP super-packets (TSO): they must be segmented before the ESP core."""
        return bool(self.offloads & (Offload.TSO4 | Offload.TSO6))

    @property
    def uso(self) -> bool:
        """The kernel takes (and hands over) UDP super-packets: coalesce UDP towards it."""
        return bool(self.offloads & Offload.USO4)


def set_offloads(fd: int, want: Offload = OFFLOADS_ALL) -> Offload:
    """Enable the largest subset of ``want`` the kernel accepts, following :data:`_FALLBACK`; returns it.

    Older kernels answer EINVAL for bits they do not know (USO before 6.2), so each refusal is a step down,
    never an error; NONE always succeeds on a TUN opened with IFF_VNET_HDR.
    """
    for flags in _FALLBACK:
        flags &= want
        if flags and not flags & Offload.CSUM:
            continue
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, int(flags))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                continue
            raise TunError(f"TUNSETOFFLOAD failed: {exc.strerror}") from None
        return Offload(flags)
    return Offload.NONE


def _features(fd: int) -> int:
    try:
        return struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4))[0]
    except OSError:
        return 0


def open_vnet_tun(name: str = "esp%d", *, offloads: Offload = OFFLOADS_ALL, multi_queue: bool = False) -> VnetTun:
    """Create (or attach a queue to) TUN ``name`` with IFF_VNET_HDR where the kernel has it, and offloads.

    ``offloads=Offload.NONE`` (the gateway's ``--no-offload``) opens the device without the header at all, so
    reads and writes are bare IP packets exactly as before. Configure addresses and routes with iproute2.
    """
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b" " in raw:
        raise ValueError(f"interface name {name!r} must be 1-15 characters without '/' or spaces")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun)") from None
    except PermissionError:
        raise TunError(f"no permission to open {TUN_PATH}: run as root or with CAP_NET_ADMIN") from None
    try:
        vnet = bool(offloads) and bool(_features(fd) & IFF_VNET_HDR)
        flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0) | (IFF_VNET_HDR if vnet else 0)
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", raw, flags))
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise TunError(f"creating TUN device {name!r} needs CAP_NET_ADMIN") from None
            if exc.errno == errno.EBUSY:
                raise TunError(f"TUN device {name!r} is busy (another process has it open)") from None
            if exc.errno == errno.EINVAL:
                raise TunError(f"{name!r} exists and is not a TUN device with these flags") from None
            raise TunError(f"TUNSETIFF for {name!r} failed: {exc.strerror}") from None
        granted = Offload.NONE
        if vnet:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
            except OSError as exc:
                raise TunError(f"TUNSETVNETHDRSZ on {name!r} failed: {exc.strerror}") from None
            granted = set_offloads(fd, offloads)
        return VnetTun(fd, ifr[:IFNAMSIZ].rstrip(b"\0").decode(), vnet, granted)
    except BaseException:
        os.close(fd)
        raise
