"""The SAs of a key file as the capture tools use them: one compiled SA per direction and mode, counted."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from esp.pcap.capture_suites import SoftSuite
from esp.pcap.output import SaStats, Summary, _stats_for
from esp.pcap.sa_files import SaEntry, Selector
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




@dataclass
class OutboundSa:
    """An SA that encrypts what its selector takes (``pcap encrypt`` and ``pcap send`` build them the same way),
    with the SA file's entry it came from and its counts."""

    entry: SaEntry
    sa: Sa | SoftSa
    selector: Selector
    stats: SaStats


def outbound_sas(entries: Sequence[SaEntry], *, mode: str | None = None, first_seq: int | None = None,
                 backend: str | None = None) -> list[OutboundSa]:
    """The outbound SAs of ``entries`` in file order (first match wins, :func:`esp.pcap.classify.first_match`).

    ``mode`` is for entries whose file does not say (Wireshark's table; default tunnel). Sequence numbers start
    at ``first_seq`` (default: each entry's ``initial_seq + 1``). An entry that cannot encrypt (SPI ``*``, a
    tunnel without one outer address each way) is a ValueError naming it."""
    out = []
    for e in entries:
        eff_mode = e.mode or mode or "tunnel"
        if eff_mode == "tunnel" and not (e.src.is_host and e.dst.is_host):
            raise ValueError(f"{e.origin or e.label}: a tunnel needs one outer src and dst address to "
                             f"encrypt, not {e.src} -> {e.dst}")
        if e.spi is None:
            raise ValueError(f"{e.origin or e.label}: SPI '*' cannot encrypt; give the SA's SPI")
        start = (first_seq - 1) if first_seq is not None else e.initial_seq
        if start < 0:
            raise ValueError("the first sequence number is at least 1")
        sa = _make_sa(e, Direction.OUT, eff_mode, backend, None, initial_seq=start)
        e = dataclasses.replace(e, mode=eff_mode)
        out.append(OutboundSa(e, sa, e.effective_selector(), _stats_for(e, "out")))
    return out
