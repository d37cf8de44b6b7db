"""Capture tools: reading and writing pcap/pcapng, and decrypting, encrypting and replaying captures through
the ESP core, with the SA files (Wireshark's esp_sa table, TOML) they take.

A package beside the core so that what reads captures grows without the data plane importing any of it.
Modules: formats (constants, link types, records), reader, writer, layers (link-layer and IP fields of whole
chunks), classify (ESP, SPIs, selectors), output (summaries and output records), sas, decrypt, encrypt,
replay, many (many captures on a process pool or a Dask cluster), sa_files (esp_sa and TOML SA files),
capture_suites (every esp_sa row Wireshark offers) and soft (the rows the core has no suite for, per packet);
compiled per-record kernels in ``esp.pcap._pcapio``. The public names are re-exported here.
"""

from esp.pcap.decrypt import decrypt_file
from esp.pcap.encrypt import encrypt_file
from esp.pcap.formats import ETHERTYPE_IPV4, ETHERTYPE_IPV6, CaptureError, Chunk, Interface, LinkType
from esp.pcap.layers import L3Info, gather_segments, parse_l3
from esp.pcap.many import ManySummary, run_many
from esp.pcap.output import ESP_OVERHEAD_MAX, NAT_T_PORT, Progress, SaStats, Summary
from esp.pcap.reader import CaptureReader, open_capture
from esp.pcap.replay import ReplayPattern, ReplaySummary, replay_file
from esp.pcap.sa_files import KeyFile, KeyFileError, SaEntry, load_keyfile, load_keyfiles
from esp.pcap.writer import CaptureWriter

__all__ = [
    "CaptureError", "LinkType", "Interface", "Chunk", "CaptureReader", "CaptureWriter", "open_capture",
    "L3Info", "parse_l3", "gather_segments", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6",
    "SaStats", "Summary", "ReplaySummary", "decrypt_file", "encrypt_file", "replay_file",
    "ReplayPattern", "Progress", "ESP_OVERHEAD_MAX", "NAT_T_PORT",
    "KeyFile", "KeyFileError", "SaEntry", "load_keyfile", "load_keyfiles", "ManySummary", "run_many",
]
