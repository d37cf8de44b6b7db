"""One core for the daemon that answers both IKE versions on the same sockets.

Why: a responder answers IKEv1 and IKEv2 on the same UDP ports (500 and 4500), as charon does; the ISAKMP
header's version byte (offset 17: 0x10 IKEv1, 0x20 IKEv2) says which core a datagram is for. This class has the
driver interface of ike.dispatcher.Dispatcher (what ike.aio.IkeEndpoint drives and the daemon commands), routes
datagrams by that byte, commands by the ike_id or SPI they name (one ike_id space for both), and initiates a
peer with the version its configuration names.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..connection import Datagram
from ..core_config import CoreConfig
from ..dispatcher import Dispatcher, SaInfo
from ..events import IkeEvent
from .manager import V1Manager

__all__ = ["VERSION_OFFSET", "VersionDispatcher"]

#: where the ISAKMP/IKE header keeps its version (major << 4 | minor)
VERSION_OFFSET = 17


class VersionDispatcher:
    """IKEv2's Dispatcher and the IKEv1 manager behind one driver interface."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.v2 = Dispatcher(config)
        self.v1 = V1Manager(config, self._new_id)
        self._own: Counter[str] = Counter()

    def _new_id(self) -> int:
        """ike_ids come from the IKEv2 dispatcher's counter, so that both versions share one space."""
        ike_id = self.v2._next_id
        self.v2._next_id += 1
        return ike_id

    @property
    def stats(self) -> Counter[str]:
        return self.v2.stats + self.v1.stats + self._own

    # -- drivers ------------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int],
                         now: float) -> None:
        major = data[VERSION_OFFSET] >> 4 if len(data) > VERSION_OFFSET else 0
        if major == 1:
            self.v1.receive_datagram(data, addr, local_addr, now)
        elif major == 2 or len(data) <= VERSION_OFFSET:
            self.v2.receive_datagram(data, addr, local_addr, now)  # counts short and malformed ones
        else:
            self._own["dropped_unknown_version"] += 1

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return self.v2.datagrams_to_send(now) + self.v1.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        times = [t for t in (self.v2.get_timer(), self.v1.get_timer()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.v2.handle_timer(now)
        self.v1.handle_timer(now)

    def next_event(self) -> IkeEvent | None:
        ev = self.v2.next_event()
        return ev if ev is not None else self.v1.next_event()

    # -- commands ------------------------------------------------------------------------------------------
    def initiate(self, peer: str, now: float, child: str | None = None, **kw: Any) -> int:
        if self.config.peer(peer).version == 1:
            return self.v1.initiate(peer, now, child)
        return self.v2.initiate(peer, now, child, **kw)

    def _by_id(self, ike_id: int) -> Any:
        return self.v1 if self.v1.owns(ike_id) else self.v2

    def _by_child(self, spi: int) -> Any:
        return self.v1 if self.v1.owns_child(spi) else self.v2

    def terminate(self, ike_id: int, now: float) -> None:
        self._by_id(ike_id).terminate(ike_id, now)

    def rekey_ike(self, ike_id: int, now: float) -> None:
        self._by_id(ike_id).rekey_ike(ike_id, now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        self._by_child(spi_in).rekey_child(spi_in, now)

    def delete_child(self, spi_in: int, now: float) -> None:
        self._by_child(spi_in).delete_child(spi_in, now)

    def child_sa_soft_expired(self, spi: int, now: float) -> None:
        self._by_child(spi).child_sa_soft_expired(spi, now)

    def list_sas(self) -> list[SaInfo]:
        return sorted(self.v2.list_sas() + self.v1.list_sas(), key=lambda i: i.ike_id)

    def half_open(self) -> int:
        return self.v2.half_open()

    def connection(self, ike_id: int) -> Any:
        return self.v2.connection(ike_id)
