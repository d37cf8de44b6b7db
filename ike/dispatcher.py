"""Routes datagrams to IKE_SAs by SPI, creates responder IKE_SAs, and protects the responder's state.

As aioquic's server runs its stateless retry check before allocating a connection, the dispatcher answers an
IKE_SA_INIT with a COOKIE (RFC 7296 2.6) once half-open IKE_SAs pass ``CoreConfig.cookie_threshold`` and
keeps no state for it; above ``CoreConfig.half_open_limit`` new IKE_SA_INIT requests are dropped.
"""
from __future__ import annotations

from typing import Any

from .connection import Datagram, IkeConnection
from .core_config import CoreConfig
from .events import IkeEvent

__all__ = ["Dispatcher", "SaInfo"]


class Dispatcher:
    """All IKE_SAs of one daemon. Same drivers as :class:`IkeConnection`, plus routing."""

    def __init__(self, config: CoreConfig) -> None:
        raise NotImplementedError

    # -- drivers ---------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_addr: tuple[str, int],
                         now: float) -> None:
        """One UDP payload (non-ESP marker already stripped) from ``addr`` to ``local_addr``. Never raises for
        bad input: malformed datagrams are counted (``stats``) and dropped."""
        raise NotImplementedError

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        raise NotImplementedError

    def get_timer(self) -> float | None:
        """The earliest deadline (monotonic seconds) at which ``handle_timer`` must be called, or None."""
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        raise NotImplementedError

    def next_event(self) -> IkeEvent | None:
        raise NotImplementedError

    # -- commands --------------------------------------------------------------------------------------
    def initiate(self, peer: str, now: float, child: str | None = None) -> int:
        """Start an IKE_SA to ``peer`` (CoreConfig peer name) with its ``start`` children (or only ``child``).
        Returns the ike_id. If an IKE_SA to the peer is up and ``child`` is given, creates that CHILD_SA in it."""
        raise NotImplementedError

    def rekey_child(self, spi_in: int, now: float) -> None:
        raise NotImplementedError

    def rekey_ike(self, ike_id: int, now: float) -> None:
        raise NotImplementedError

    def delete_child(self, spi_in: int, now: float) -> None:
        raise NotImplementedError

    def terminate(self, ike_id: int, now: float) -> None:
        """Send a DELETE for the IKE_SA (the peer's answer, or the retransmit give-up, ends it)."""
        raise NotImplementedError

    def child_sa_soft_expired(self, spi_in: int, now: float) -> None:
        """esp reports a soft byte/packet limit on the inbound or outbound SA: start a rekey."""
        raise NotImplementedError

    def list_sas(self) -> list[Any]:
        """Snapshot of IKE_SAs and CHILD_SAs for ``python -m ike list``: SaInfo objects."""
        raise NotImplementedError
