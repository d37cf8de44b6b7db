"""``python -m esp pcap send --topspeed`` against the UDP ceiling of the same path.

Two network namespaces joined by a veth pair (tests/interop/strongswan.py's Lab), a UDP sink on port 4500 at the
far end that never reads (so nothing answers with ICMP), and what arrived counted by the far end's kernel (UDP
datagrams delivered or dropped for a full buffer, /proc/net/snmp), whatever the sender claims. The modes, alternated round by round:

* ``iperf3_udp``: iperf3 ``-u -b 0`` with datagrams of the ESP datagrams' size: the kernel's UDP path, one
  ``sendto`` per datagram (iperf3's own count of what arrived);
* ``same_path``: ``pcap send`` of the encrypted capture taken as it is: the sendmmsg/UDP GSO path with no crypto,
  the ceiling of the sending path itself;
* ``pcap_send``: ``pcap send`` of the plaintext capture: encryption (aes128gcm16) and the same sending path;
* ``pcap_send_no_gso``: the same with ``--no-gso`` (one datagram per message in each sendmmsg).

Workloads: inner UDP payloads of 64 and 1,400 bytes. Needs root, iproute2 and iperf3::

    python -m bench.pcapsend                       # 2 rounds x 3 s
    python -m bench.pcapsend --rounds 3 --secs 5 --sizes 1400

Not part of ``python -m bench`` (it needs root); results go to bench/RESULTS.md by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("iperf3_udp", "same_path", "pcap_send", "pcap_send_no_gso")
PACKETS = 20000  # records in the capture that is looped
ESP_UDP_OVERHEAD = 20 + 8 + 8 + 8 + 16  # outer IPv4 + UDP + ESP header + GCM IV + ICV (+ inner and padding)


def _sh(*cmd: str, ns: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))


def _rx(ns: str) -> int:
    """UDP datagrams that reached a socket in ``ns`` (queued or dropped for a full buffer): counted after UDP GSO
    trains are split, unlike the veth's rx_packets, which counts a train once."""
    lines = [l.split() for l in _sh("cat", "/proc/net/snmp", ns=ns).stdout.splitlines() if l.startswith("Udp:")]
    row = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
    return row["InDatagrams"] + row["RcvbufErrors"]


def _files(work: Path, a, b, size: int) -> tuple[Path, Path, Path]:
    from tests.esp.pcap_builders import Rec, ipv4, pcap_file, udp

    plain = work / f"plain{size}.pcap"
    plain.write_bytes(pcap_file([Rec(ipv4(a.inner, b.inner, 17, udp(40000, 9, bytes([i % 251]) * size)))
                                 for i in range(PACKETS)], linktype=101))
    sa = work / "sa.toml"
    sa.write_text(f'[[sa]]\nspi = "0xbe000001"\nsuite = "aes128gcm16"\nenc_key = "0x{os.urandom(20).hex()}"\n'
                  f'src = "{a.outer}"\ndst = "{b.outer}"\nmode = "tunnel"\nencap = true\n')
    sa.chmod(0o600)
    esp = work / f"esp{size}.pcap"
    r = _sh(sys.executable, "-m", "esp", "pcap", "encrypt", str(plain), str(esp), "--sa", str(sa), "-q")
    if r.returncode != 0:
        raise RuntimeError(f"pcap encrypt: {r.stderr}")
    return plain, esp, sa


def measure(mode: str, size: int, secs: float) -> dict:
    """One run of one mode: packets and bytes per second that arrived, and what the sender reported."""
    from tests.interop import strongswan as ss

    work = Path(tempfile.mkdtemp(prefix="espresso-bench-send-"))
    try:
        with ss.Lab(work) as lab:
            a, b = lab.pair()
            plain, esp, sa = _files(work, a, b, size)
            sink = subprocess.Popen(["ip", "netns", "exec", b.netns.name, sys.executable, "-c",
                                     ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                      f"s.bind(('{b.outer}', 4500)); print('up', flush=True); time.sleep({secs + 60})")],
                                    stdout=subprocess.PIPE, text=True)
            try:
                sink.stdout.readline()
                p0 = _rx(b.netns.name)
                if mode == "iperf3_udp":
                    dgram = size + 28 + ESP_UDP_OVERHEAD - 28 + 4  # the ESP datagram's UDP payload, roughly
                    srv = subprocess.Popen(["ip", "netns", "exec", b.netns.name, "iperf3", "-s", "-1", "-B", b.outer,
                                            "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    try:
                        time.sleep(0.3)
                        r = _sh("iperf3", "-c", b.outer, "-B", a.outer, "-u", "-b", "0", "-l", str(dgram), "-t",
                                str(secs), "-J", ns=a.netns.name, timeout=secs + 40)
                    finally:
                        srv.kill()
                        srv.wait()
                    end = json.loads(r.stdout)["end"]["sum"]
                    got = end["packets"] - end["lost_packets"]
                    seconds = end["seconds"]
                    return {"mode": mode, "size": size, "pps": got / seconds,
                            "mbps": got * (dgram + 28) * 8 / seconds / 1e6, "sender_pps": end["packets"] / seconds}
                args = [str(esp), "--target", b.outer] if mode == "same_path" else [str(plain)]
                r = _sh(sys.executable, "-m", "esp", "pcap", "send", *args, "--sa", str(sa), "--topspeed",
                        "--loop", "0", "--duration", str(secs), "--json",
                        *(["--no-gso"] if mode == "pcap_send_no_gso" else []), ns=a.netns.name, timeout=secs + 60)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr.strip())
                s = json.loads(r.stdout)
                got = _rx(b.netns.name) - p0
                per = s["bytes"] / max(1, s["sent"])  # every datagram of a run has one size
                return {"mode": mode, "size": size, "pps": got / s["seconds"],
                        "mbps": got * per * 8 / s["seconds"] / 1e6, "sender_pps": s["pps"],
                        "gso_trains": s["gso_trains"], "offloads": s["offloads"]}
            finally:
                sink.kill()
                sink.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pcapsend", description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 1400], help="inner UDP payload bytes")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--secs", type=float, default=3.0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("bench.pcapsend: needs root and iperf3", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    runs, loads = [], [os.getloadavg()]
    for rnd in range(args.rounds):
        for size in args.sizes:
            for mode in args.modes:
                try:
                    m = measure(mode, size, args.secs)
                except Exception as exc:  # noqa: BLE001 - a failed mode is reported, the others carry on
                    m = {"mode": mode, "size": size, "pps": 0.0, "mbps": 0.0, "error": str(exc)[:300]}
                m["round"] = rnd + 1
                runs.append(m)
                print(f"round {rnd + 1} {mode:18s} {size:5d} B {m['pps']:12.0f} pps {m['mbps']:9.1f} Mbit/s"
                      + (f"  ERROR {m['error']}" if "error" in m else ""), file=sys.stderr, flush=True)
        loads.append(os.getloadavg())
    print(f"# bench.pcapsend: {args.rounds} rounds x {args.secs:g} s, alternated; kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs; load average (1/5/15 min) per round boundary: "
          + ", ".join("/".join(f"{x:.1f}" for x in la) for la in loads))
    print("| mode | inner payload B | arrived kpps (median) | arrived Mbit/s (median) | sender kpps | runs (kpps) "
          "| ratio to same_path |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        def median(mode: str, key: str, size: int = size) -> float | None:
            ms = [m for m in runs if m["mode"] == mode and m["size"] == size and "error" not in m]
            return statistics.median(m[key] for m in ms) if ms else None

        base = median("same_path", "pps")
        for mode in args.modes:
            ms = [m for m in runs if m["mode"] == mode and m["size"] == size and "error" not in m]
            if not ms:
                print(f"| {mode} | {size} | - | - | - | failed | - |")
                continue
            pps, mbps, spps = median(mode, "pps"), median(mode, "mbps"), median(mode, "sender_pps")
            ratio = f"{pps / base:.2f}" if base else "-"
            each = " ".join(f"{m['pps'] / 1e3:.0f}" for m in ms)
            print(f"| {mode} | {size} | {pps / 1e3:.1f} | {mbps:.0f} | {spps / 1e3:.1f} | {each} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"loadavg": loads, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
