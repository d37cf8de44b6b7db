"""Capture tools: pcap/pcapng reading and writing (:mod:`esp.pcap.capture`), decrypting, encrypting and replaying
captures through the ESP core (:mod:`esp.pcap.tool`), with compiled per-record kernels in ``esp.pcap._pcapio``.

A package beside the core so that what reads captures grows without the data plane importing any of it.
"""

from esp.pcap.capture import (ETHERTYPE_IPV4, ETHERTYPE_IPV6, CaptureError, CaptureReader, CaptureWriter, Chunk,
                              Interface, L3Info, LinkType, gather_segments, open_capture, parse_l3)
from esp.pcap.tool import (ESP_OVERHEAD_MAX, NAT_T_PORT, Progress, ReplayPattern, ReplaySummary, SaStats, Summary,
                           decrypt_file, encrypt_file, replay_file)

__all__ = [
    "CaptureError", "LinkType", "Interface", "Chunk", "CaptureReader", "CaptureWriter", "open_capture",
    "L3Info", "parse_l3", "gather_segments", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6",
    "SaStats", "Summary", "ReplaySummary", "decrypt_file", "encrypt_file", "replay_file",
    "ReplayPattern", "Progress", "ESP_OVERHEAD_MAX", "NAT_T_PORT",
]
