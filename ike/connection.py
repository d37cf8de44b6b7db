"""The sans-I/O facade: one IKE_SA (and its successors after IKE rekeys) with one peer.

Three drivers, as in aioquic: API calls (``initiate``, ``rekey_child``, ``rekey_ike``, ``delete_child``,
``terminate``, ``child_sa_soft_expired``), datagrams (``receive_datagram``) and the timer (``get_timer`` /
``handle_timer``). Output: ``datagrams_to_send`` and ``next_event``. No socket, no clock, no randomness of its
own (``CoreConfig.random`` and ``CoreConfig.dh_factory`` are injectable).
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["Datagram", "IkeConnection"]


class Datagram(NamedTuple):
    """An IKE message to send. ``data`` never includes the 4-byte non-ESP marker: the adapter prepends it when
    ``marker`` is true (every port other than 500, RFC 3948/7296 2.23) and strips it on receive."""

    data: bytes
    addr: tuple[str, int]  # remote (host, port)
    local_port: int  # which of our sockets to send from (e.g. 500 or 4500)
    marker: bool



class IkeConnection:
    """One IKE_SA lineage with one peer (placeholder until the implementation lands)."""
