"""pcap decrypt: a generated IMIX capture of ESP packets, decrypted file to file by esp.pcaptool.

Measures what an engineer with a capture and a key file gets: packets per second through
``esp.pcaptool.decrypt_file`` on a 1-million-packet capture (100,000 with --quick), file to file.
"""
from __future__ import annotations

__all__ = ["run"]


def run(quick: bool = False) -> dict:
    try:
        from esp.pcaptool import decrypt_file  # noqa: F401
    except ImportError as exc:
        return {"unavailable": f"esp.pcaptool.decrypt_file is not present yet ({exc})"}
    return {"unavailable": "pcap decrypt benchmark not wired yet"}
