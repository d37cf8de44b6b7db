"""The SAs of a key file as the capture tools use them: one compiled SA per direction and mode, counted."""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from esp.pcap.capture_suites import SoftSuite
from esp.pcap.output import SaStats, Summary, _stats_for
from esp.pcap.sa_files import SaEntry
from esp.pcap.soft import SoftSa
from esp.sa import Direction, Sa
from esp.suites import Integ

# -- SA sets --------------------------------------------------------------------------------------------------------

def _make_sa(entry: SaEntry, direction: Direction, mode: str | None, backend: str | None,
             window: int | None, initial_seq: int = 0) -> Sa | SoftSa:
    """The compiled core's SA, or for a row it has no suite for, the per-packet one (esp.pcap.soft)."""
    e = entry
    if mode is not None and e.mode is None:
        e = dataclasses.replace(e, mode=mode)
    if window is not None:
        e = dataclasses.replace(e, replay_window=window)
    if isinstance(e.suite, SoftSuite):
        return SoftSa(e, outbound=direction is Direction.OUT, mode=e.effective_mode, window=e.replay_window,
                      initial_seq=initial_seq)
    if not e.suite.aead and e.suite.icv_len != _STANDARD_ICV[e.suite.integ]:
        backend = "openssl"  # ipsec-mb computes each HMAC at its standard truncation only (HMAC-SHA-256-96 is not)
    p = e.sa_params(direction, backend=backend)
    return Sa(p, initial_seq=initial_seq)


_STANDARD_ICV = {Integ.NONE: 0, Integ.HMAC_SHA1_96: 12, Integ.HMAC_SHA256_128: 16, Integ.HMAC_SHA384_192: 24,
                 Integ.HMAC_SHA512_256: 32}


#: SAs one wildcard-SPI entry (Wireshark's SPI "*") may create, one per SPI seen; past this, unknown SPI.
MAX_WILDCARD_SAS = 4096


class _Inbound:
    """The inbound SA(s) of one key file entry: one per SPI, made when the SPI is first seen for SPI ``*``."""

    def __init__(self, entry: SaEntry, mode: str | None, backend: str | None, window: int | None,
                 summary: Summary) -> None:
        self.entry = entry
        self.mode, self.backend, self.window = mode, backend, window
        self.summary = summary
        self.by_spi: dict[int, tuple[Sa, Sa | None, SaStats]] = {}
        if entry.spi is not None:
            self.get(entry.spi)

    def get(self, spi: int) -> tuple[Sa, Sa | None, SaStats] | None:
        got = self.by_spi.get(spi)
        if got is not None:
            return got
        if len(self.by_spi) >= MAX_WILDCARD_SAS:
            return None
        e = self.entry if self.entry.spi is not None else dataclasses.replace(self.entry, spi=spi)
        # The receiver starts where the sender does (initial_seq): with ESN that fixes the high half it infers.
        primary = _make_sa(e, Direction.IN, self.mode or "tunnel", self.backend, self.window, e.initial_seq)
        fallback = None
        if e.mode is None and self.mode is None:
            fallback = _make_sa(e, Direction.IN, "transport", self.backend, self.window, e.initial_seq)
        st = _stats_for(e, "in")
        if self.entry.spi is None:
            st.label = f"SPI 0x{spi:08x} (*: {self.entry.origin or self.entry.label})"
        self.summary.per_sa.append(st)
        got = (primary, fallback, st)
        self.by_spi[spi] = got
        return got


def _entries(sas: "Sequence[SaEntry] | str | os.PathLike[str]") -> Sequence[SaEntry]:
    if isinstance(sas, (str, os.PathLike)):
        from esp.pcap.sa_files import load_keyfile
        return load_keyfile(sas).entries
    return sas


