"""pcap decrypt: a generated IMIX capture of ESP packets, decrypted file to file by esp.pcaptool.

What an engineer with a capture and the SA keys gets: packets per second through
``esp.pcaptool.decrypt_file`` from a 1-million-packet Ethernet pcap (50,000 with --quick) to a pcap of the
inner packets, anti-replay on. The capture is made here: the IMIX ring (bench.workloads) encrypted by an
espresso SA with consecutive sequence numbers, written as pcap records. Generation is not timed; the capture
and the output are deleted afterwards.
"""
from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path

__all__ = ["run", "write_esp_capture"]

ETH = bytes.fromhex("020000000002" "020000000001" "0800")  # dst, src, IPv4
SPI = 0x2000
SUITE = "aes128gcm16"


def write_esp_capture(path: Path, count: int, suite: str = SUITE) -> tuple[int, int]:
    """Write ``count`` ESP packets (IMIX inner sizes) as an Ethernet pcap; returns (records, inner bytes)."""
    import numpy as np

    from bench.workloads import key_material, make_workload
    from esp import Direction, Mode, PacketBatch, Sa, SaParams

    km = key_material(suite)
    sa = Sa(SaParams(spi=SPI, direction=Direction.OUT, suite=suite, enc_key=km.enc_key, integ_key=km.integ_key,
                     mode=Mode.TUNNEL, src="192.0.2.1", dst="192.0.2.2"))
    ring = make_workload("imix", count=4096)
    batches = [PacketBatch.from_packets(ring.packets[i:i + 1024]) for i in range(0, ring.count, 1024)]
    out = PacketBatch.empty(1024, 1664)
    written = inner_bytes = 0
    ts = 1_700_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        while written < count:
            for b in batches:
                n = min(b.count, count - written)
                if n <= 0:
                    break
                sel = None if n == b.count else np.arange(n, dtype=np.int32)
                ok = sa.encrypt_batch(b, out, sel)
                if ok != n:
                    raise RuntimeError(f"encrypt_batch: {ok} of {n} packets")
                recs = []
                for i in range(n):
                    pkt = out.packet(i)
                    usec = written + i
                    recs.append(struct.pack("<IIII", ts + usec // 1_000_000, usec % 1_000_000, len(pkt) + 14,
                                            len(pkt) + 14))
                    recs.append(ETH)
                    recs.append(pkt)
                f.write(b"".join(recs))
                inner_bytes += int(b.lengths[:n].sum())
                written += n
    return written, inner_bytes


def run(quick: bool = False, count: int | None = None) -> dict:
    try:
        from esp.keyfile import SaEntry
        from esp.pcaptool import decrypt_file
        from esp.suites import parse_suite
    except ImportError as exc:
        return {"unavailable": f"esp.pcaptool.decrypt_file is not importable ({exc})"}
    from bench.esp import core_available

    reason = core_available()
    if reason:
        return {"unavailable": reason}
    from bench.workloads import key_material

    n = count or (50_000 if quick else 1_000_000)
    km = key_material(SUITE)
    with tempfile.TemporaryDirectory(prefix="espresso-bench-pcap-") as tmp:
        src, dst = Path(tmp) / "esp.pcap", Path(tmp) / "clear.pcap"
        t0 = time.perf_counter()
        records, inner = write_esp_capture(src, n)
        gen = time.perf_counter() - t0
        size = src.stat().st_size
        entry = SaEntry(spi=SPI, suite=parse_suite(SUITE), enc_key=km.enc_key, integ_key=km.integ_key,
                        mode="tunnel", name="bench")
        t0, c0 = time.perf_counter(), time.process_time()
        summary = decrypt_file(src, dst, [entry], progress=False)
        el, cpu = time.perf_counter() - t0, time.process_time() - c0
        out_size = dst.stat().st_size if dst.exists() else 0
    if summary.failed or summary.processed != records:
        return {"unavailable": f"decrypt_file processed {summary.processed} of {records} packets, "
                               f"{summary.failed} failed: {summary.format()}"}
    pps = records / el
    return {"records": records, "suite": SUITE, "capture_bytes": size, "output_bytes": out_size,
            "seconds": el, "cpu_seconds": cpu, "generate_seconds": gen, "pps": pps, "inner_gbps": inner * 8 / el / 1e9,
            "file_mb_s": size / el / 1e6,
            "summary": f"{records:,} IMIX ESP packets ({size / 1e6:.0f} MB pcap, {SUITE}) decrypted file to file "
                       f"in {el:.2f} s: {pps / 1e6:.2f} Mpps, {size / el / 1e6:.0f} MB/s of capture, "
                       f"{inner * 8 / el / 1e9:.2f} Gbit/s of inner packets; process CPU time {cpu:.2f} s "
                       f"(one run; generating the capture, {gen:.1f} s, not counted)"}
