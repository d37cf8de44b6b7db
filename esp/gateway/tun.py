"""Linux TUN devices for the gateway: the plaintext side of a tunnel.

The device is opened with the TUNSETIFF ioctl (IFF_TUN | IFF_NO_PI: each read() is one bare IP packet) and
set non-blocking, because the gateway's compiled loop reads until EAGAIN to fill a batch. Addresses, MTU and
routes are set with iproute2 (`ip`), the tool a network engineer would use to check them afterwards.
Missing privilege, a missing /dev/net/tun or a missing `ip` give a :class:`TunError` that says what to do.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from esp.errors import EspError

__all__ = ["TUN_PATH", "Tun", "TunError", "interface_mtu", "open_tun"]

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
SIOCSIFMTU = 0x8922
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFNAMSIZ = 16


class TunError(EspError):
    """A TUN device could not be created or configured; the message says why and what to do."""


def _ip(*args: str, netns: str | None = None) -> str:
    exe = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    if exe is None:
        raise TunError("the `ip` command (iproute2) is needed to configure the TUN device; install iproute2")
    cmd = [exe, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise TunError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Tun:
    """An open TUN device. ``fd`` is non-blocking; close() (or a with block) deletes a non-persistent device."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def fileno(self) -> int:
        return self.fd

    def configure(self, *, addresses: Iterable[str] = (), routes: Iterable[str] = (), mtu: int | None = None,
                  up: bool = True) -> None:
        """Assign addresses (``10.0.0.1/24``), the MTU, bring the link up and route prefixes into it.

        A route is ``prefix`` or ``prefix via gateway`` text; the device is the TUN itself."""
        if mtu is not None:
            if not 576 <= mtu <= 65535:
                raise ValueError(f"MTU {mtu} outside 576..65535")
            _ip("link", "set", "dev", self.name, "mtu", str(mtu))
        for a in addresses:
            iface = ipaddress.ip_interface(a)
            _ip("-6" if iface.version == 6 else "-4", "addr", "add", str(iface), "dev", self.name)
        if up:
            _ip("link", "set", "dev", self.name, "up")
        for r in routes:
            parts = str(r).split()
            net = ipaddress.ip_network(parts[0], strict=False)
            _ip("-6" if net.version == 6 else "-4", "route", "replace", str(net), *parts[1:], "dev", self.name)

    def set_mtu(self, mtu: int) -> None:
        """Change the device's MTU in place (an ioctl, no subprocess: the data thread calls it when the SAs'
        overhead changes, see :mod:`esp.gateway.pmtu`)."""
        if not 576 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} outside 576..65535")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si20x", self.name.encode(), mtu))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Tun {self.name} fd={self.fd}>"


def open_tun(name: str = "esp%d", *, multi_queue: bool = False, addresses: Sequence[str] = (),
             routes: Sequence[str] = (), mtu: int | None = None, up: bool = True) -> Tun:
    """Create (or attach to) TUN device ``name`` (``%d`` picks a free number) and configure it."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b" " in raw:
        raise ValueError(f"interface name {name!r} must be 1-15 characters without '/' or spaces")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun) or, in a container, "
                       f"pass the device in (docker --device {TUN_PATH})") from None
    except PermissionError:
        raise TunError(f"no permission to open {TUN_PATH}: run as root or with CAP_NET_ADMIN") from None
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", raw, flags))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EPERM:
            raise TunError(f"creating TUN device {name!r} needs CAP_NET_ADMIN: run as root or grant the "
                           f"capability (setcap cap_net_admin+ep)") from None
        if exc.errno == errno.EBUSY:
            raise TunError(f"TUN device {name!r} is busy (another process has it open)") from None
        if exc.errno == errno.EINVAL:
            raise TunError(f"{name!r} exists and is not a TUN device with these flags") from None
        raise TunError(f"TUNSETIFF for {name!r} failed: {exc.strerror}") from None
    tun = Tun(fd, ifr[:IFNAMSIZ].rstrip(b"\0").decode())
    try:
        tun.configure(addresses=addresses, routes=routes, mtu=mtu, up=up)
    except BaseException:
        tun.close()
        raise
    return tun


def interface_mtu(addr: str) -> int | None:
    """The MTU of the interface that holds local address ``addr`` (what ESP leaves from), or None when no
    interface has it or iproute2 cannot say."""
    ip = ipaddress.ip_address(addr)
    try:
        out = _ip("-o", f"-{ip.version}", "addr", "show", "to", f"{ip}/{ip.max_prefixlen}")
    except (TunError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        dev = line.split()[1].split("@")[0] if len(line.split()) > 1 else ""
        try:
            return int(Path(f"/sys/class/net/{dev}/mtu").read_text())
        except (OSError, ValueError):
            continue
    return None
