"""NAT detection (RFC 7296 2.23): NAT_DETECTION_SOURCE_IP / _DESTINATION_IP hashes, and the move to NAT-T."""
from __future__ import annotations

import hashlib
import ipaddress

from ..constants import ExchangeType, NotifyType
from ..message import Message
from ..payloads import NotifyPayload
from .base import Task, TaskStatus

__all__ = ["Natd", "natd_hash"]


def natd_hash(spi_i: int, spi_r: int, addr: tuple[str, int]) -> bytes:
    try:
        ip = ipaddress.ip_address(addr[0]).packed
    except ValueError:
        ip = b""
    data = spi_i.to_bytes(8, "big") + spi_r.to_bytes(8, "big") + ip + addr[1].to_bytes(2, "big")
    return hashlib.sha1(data).digest()  # noqa: S324 - mandated by RFC 7296


class Natd(Task):
    EXCHANGE = ExchangeType.IKE_SA_INIT

    def build(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            return TaskStatus.SUCCESS
        sa = self.sa
        spi_r = msg.spi_r
        src = natd_hash(sa.spi_i, spi_r, sa.local_addr)
        if sa.peer.encap:  # pretend to be behind a NAT: a hash that cannot match
            src = hashlib.sha1(b"espresso-fake-nat" + sa.random(8)).digest()  # noqa: S324
        msg.add(NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, src),
                NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(sa.spi_i, spi_r, sa.remote_addr)))
        return TaskStatus.NEED_MORE if self.initiator else TaskStatus.SUCCESS

    def process(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            return TaskStatus.SUCCESS
        sa = self.sa
        srcs = msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)
        dst = msg.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if srcs and dst is not None:
            seen = natd_hash(msg.spi_i, msg.spi_r, sa.remote_addr)
            sa.nat_remote = all(n.data != seen for n in srcs)
            sa.nat_local = dst.data != natd_hash(msg.spi_i, msg.spi_r, sa.local_addr)
        if sa.peer.encap:
            sa.scratch["nat_fake"] = not sa.nat_local  # forced encapsulation, not a NAT we saw
            sa.nat_local = True
        if self.initiator and (sa.nat_local or sa.nat_remote) and srcs:
            sa.natt = True  # IKE_AUTH goes to the NAT-T port (RFC 7296 2.23)
            host, port = sa.remote_addr
            if port == sa.peer.remote_port:  # still the peer's IKE port: on to its NAT-T port
                sa.remote_addr = (host, sa.peer.peer_nat_port)
            lh, lp = sa.local_addr
            sa.local_addr = (lh, sa.peer.local_nat_port if lp == sa.peer.local_port else lp)
        return TaskStatus.SUCCESS
