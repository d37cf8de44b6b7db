"""The rows of Wireshark's esp_sa table the compiled core has no suite for, as values: one module that both the
row table (:mod:`esp.pcap.capture_suites`) and the per-packet path (:mod:`esp.pcap.soft`) import."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RowUnavailable", "SoftSuite"]


class RowUnavailable(NotImplementedError):
    """A Wireshark row this machine cannot compute (the message says why)."""


@dataclass(frozen=True)
class SoftSuite:
    """A Wireshark row the compiled core has no suite for: computed per packet by :mod:`esp.pcap.soft`.

    Quacks like :class:`esp.suites.Suite` where the key files and summaries look (name, lengths)."""

    name: str
    enc: str
    key_len: int
    salt_len: int
    iv_len: int
    align: int
    auth: str
    icv_len: int
    auth_key_len: int | None

    aead = False

    @property
    def enc_keymat_len(self) -> int:
        return self.key_len + self.salt_len

    @property
    def integ_key_len(self) -> int:
        return self.auth_key_len or 0

    def __str__(self) -> str:
        return self.name
