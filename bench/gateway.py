"""Tunnel throughput against the path: espresso's gateway with and without offloads, wireguard-go, strongSwan.

Every contender runs in the same topology: two network namespaces joined by a veth pair, an inner address on
each side's ``lo``, iperf3 between the inner addresses (the outer ones for ``veth``). The contenders:

* ``veth``: no tunnel, iperf3 straight over the veth pair: the ceiling of the path (64 KB TSO super-packets);
* ``espresso``: ``python -m esp gateway`` on both sides (static SAs, aes128gcm16 in UDP 4500), offloads on;
* ``espresso_no_offload``: the same with ``--no-offload`` (one packet per TUN read/write and per datagram);
* ``espresso_pyloop``: offloads on, but the Python data loops (``--loop python``: one Dataplane call and a
  few numpy operations per batch, the GIL taken per batch) instead of the compiled ones;
* ``wireguard_go``: wireguard-go from Debian 12 (0.0.20220316, before upstream's offload work);
* ``strongswan``: charon with kernel-libipsec (its userspace ESP), aes128gcm16 in UDP 4500, certificates.

Workloads: one TCP stream, four TCP streams, UDP with 1,400-byte and 64-byte payloads (iperf3 ``-b 0``: as
fast as the sender can; the rate is what arrived). Contenders are alternated round by round in one run so a
phase of a shared machine hits each alike; each round sets every contender up, runs every workload, tears it
down. Reported per contender and workload: the median Gbit/s, its ratio to ``veth`` in the same run, the CPU
seconds per gigabit of the tunnel's processes (utime + stime from /proc, all threads) and of the iperf3
endpoints (iperf3's own accounting), and the load average around each round.

Needs root, iproute2, iperf3 (`.ci/install-system`); strongSwan and wireguard-go where installed (a missing
one is reported as unavailable, not an error). Run from the repository root::

    python -m bench.gateway                                  # everything, 3 rounds of 5 s
    python -m bench.gateway --secs 10 --rounds 5 --contenders veth espresso wireguard_go --json out.json

It is not part of ``python -m bench``: it needs root and takes minutes. The lead records results in
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CONTENDERS", "WORKLOADS", "Measurement", "Summary", "run", "summarize"]

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "tcp1": ["-P", "1"],
    "tcp4": ["-P", "4"],
    "udp1400": ["-u", "-b", "0", "-l", "1400"],
    "udp64": ["-u", "-b", "0", "-l", "64"],
}
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    """One iperf3 run of one contender and workload."""

    contender: str
    workload: str
    round: int
    gbit_s: float
    tunnel_cpu_s: float  # CPU seconds of the tunnel's processes during the run
    endpoint_cpu_s: float  # CPU seconds of iperf3 client + server (iperf3's accounting)
    lost_percent: float = 0.0  # UDP only
    error: str = ""


@dataclass
class Summary:
    contender: str
    workload: str
    median_gbit_s: float
    runs: list[float]
    ratio_to_veth: float | None
    tunnel_cpu_s_per_gbit: float | None
    endpoint_cpu_s_per_gbit: float | None
    errors: list[str] = field(default_factory=list)


@dataclass
class Tunnel:
    """A contender set up between two sites: where iperf3 connects, and the processes whose CPU counts."""

    client_ns: str
    server_ns: str
    client_addr: str
    server_addr: str
    pids: list[int]


def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    return total / _TICK


def iperf(t: Tunnel, workload: str, secs: float) -> tuple[float, float, float]:
    """(Gbit/s arrived, endpoint CPU seconds, UDP loss percent) of one iperf3 run through ``t``."""
    srv = subprocess.Popen(["ip", "netns", "exec", t.server_ns, "iperf3", "-s", "-1", "-B", t.server_addr],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cmd = ["ip", "netns", "exec", t.client_ns, "iperf3", "-c", t.server_addr, "-B", t.client_addr, "-t",
               str(secs), "-J", "--connect-timeout", "3000", *WORKLOADS[workload]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 40)
        j = json.loads(r.stdout or "{}")
        if "error" in j or "end" not in j:
            raise RuntimeError(j.get("error") or r.stderr.strip() or "iperf3 gave no result")
        end = j["end"]
        cpu = end.get("cpu_utilization_percent", {})
        endpoint = (cpu.get("host_total", 0.0) + cpu.get("remote_total", 0.0)) / 100 * secs
        if "sum_received" in end:  # TCP
            return end["sum_received"]["bits_per_second"] / 1e9, endpoint, 0.0
        s = end["sum"]  # UDP: what the sender sent, less what the receiver reported lost
        lost = float(s.get("lost_percent", 0.0))
        return s["bits_per_second"] * (1 - lost / 100) / 1e9, endpoint, lost
    finally:
        srv.kill()
        srv.wait()


# ---------------------------------------------------------------------------------------------- contenders
@contextlib.contextmanager
def veth(lab, work: Path) -> Iterator[Tunnel]:
    a, b = lab.pair()
    yield Tunnel(a.netns.name, b.netns.name, a.outer, b.outer, [])


def _espresso(args: tuple[str, ...]) -> Callable:
    @contextlib.contextmanager
    def contender(lab, work: Path) -> Iterator[Tunnel]:
        from tests.interop.test_gateway import GatewayProcess, static_configs, unique

        a, b = lab.pair()
        ca, cb = static_configs()
        for cfg, site, peer in ((ca, a, b), (cb, b, a)):
            g = cfg["gateway"]
            g.update(local_addr=site.outer, routes=[f"{peer.inner}/32"], tun_name=unique("ebt"))
            g.pop("mtu", None)  # the path MTU decides
            cfg["policies"][0].update(src=f"{site.inner}/32", dst=f"{peer.inner}/32")
            for sa in cfg["sas"]:
                sa["src"], sa["dst"] = (site.outer, peer.outer) if sa["direction"] == "out" else (peer.outer, site.outer)
        ga = GatewayProcess(a.netns.name, ca, work, "ga", args)
        try:
            gb = GatewayProcess(b.netns.name, cb, work, "gb", args)
            try:
                yield Tunnel(a.netns.name, b.netns.name, a.inner, b.inner, [ga.proc.pid, gb.proc.pid])
            finally:
                gb.stop()
        finally:
            ga.stop()

    return contender


@contextlib.contextmanager
def wireguard_go(lab, work: Path) -> Iterator[Tunnel]:
    from tests.interop.test_gateway import unique

    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (apt-get install --no-install-recommends wireguard-go "
                              f"wireguard-tools)")
    a, b = lab.pair()
    keys = {}
    for n in ("a", "b"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True).stdout.strip()
        path = work / f"wg-{n}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(priv + "\n")
        keys[n] = (path, pub)
    procs = []
    try:
        for n, site, peer, other in (("a", a, b, "b"), ("b", b, a, "a")):
            dev = unique("wgb")
            env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
            p = subprocess.Popen(["ip", "netns", "exec", site.netns.name, "wireguard-go", "-f", dev], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            deadline = time.monotonic() + 5
            while site.netns.run(["ip", "link", "show", dev], check=False).returncode != 0:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"wireguard-go did not create {dev}")
                time.sleep(0.05)
            site.netns.run(["wg", "set", dev, "private-key", str(keys[n][0]), "listen-port", "51820", "peer",
                            keys[other][1], "endpoint", f"{peer.outer}:51820", "allowed-ips", f"{peer.inner}/32"])
            site.netns.run(["ip", "link", "set", dev, "mtu", "1420", "up"])
            site.netns.run(["ip", "route", "add", f"{peer.inner}/32", "dev", dev, "src", site.inner])
        yield Tunnel(a.netns.name, b.netns.name, a.inner, b.inner, [p.pid for p in procs])
    finally:
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()
                p.wait()


@contextlib.contextmanager
def strongswan(lab, work: Path) -> Iterator[Tunnel]:
    from tests.interop import strongswan as ss

    ok, why = ss.charon_available()
    if not ok:
        raise Unavailable(why)
    a, b = lab.pair()
    pki = ss.LabPki()
    creds = {n: pki.issue(n, f"{n}.espresso.test") for n in ("a", "b")}
    chs = {}
    for n, site, peer in (("a", a, b), ("b", b, a)):
        ch = lab.charon(site, n)
        ch.add_ca(pki.ca)
        cert = ch.add_credential(creds[n])
        other = "b" if n == "a" else "a"
        ch.connections.append(ss.Connection("t", site.outer, peer.outer, f"{n}.espresso.test",
                                            f"{other}.espresso.test", cert,
                                            [ss.Child("c", f"{site.inner}/32", f"{peer.inner}/32")]))
        ch.start()
        chs[n] = ch
    r = chs["a"].initiate("c", ike="t")
    if r.returncode != 0:
        raise RuntimeError(f"strongSwan did not establish: {r.stdout[-500:]} {r.stderr[-500:]}")
    time.sleep(0.5)
    yield Tunnel(a.netns.name, b.netns.name, a.inner, b.inner, [chs["a"].proc.pid, chs["b"].proc.pid])


class Unavailable(Exception):
    """A contender cannot run on this machine (a tool is missing); the reason is reported."""


CONTENDERS: dict[str, Callable] = {
    "veth": veth,
    "espresso": _espresso(()),
    "espresso_no_offload": _espresso(("--no-offload",)),
    "espresso_pyloop": _espresso(("--loop", "python")),
    "wireguard_go": wireguard_go,
    "strongswan": strongswan,
}


# ------------------------------------------------------------------------------------------------- the run
def run(contenders: list[str], workloads: list[str], rounds: int, secs: float,
        progress: Callable[[str], None] = lambda s: None) -> tuple[list[Measurement], dict]:
    """All contenders, alternated round by round; returns the measurements and the machine's state."""
    from tests.interop import strongswan as ss

    out: list[Measurement] = []
    unavailable: dict[str, str] = {}
    loads = []
    for rnd in range(1, rounds + 1):
        loads.append(os.getloadavg())
        for name in contenders:
            if name in unavailable:
                continue
            work = Path(tempfile.mkdtemp(prefix=f"espresso-bench-gw-{name}-"))
            try:
                with ss.Lab(work) as lab, CONTENDERS[name](lab, work) as t:
                    for w in workloads:
                        c0 = _cpu(t.pids)
                        try:
                            gbit, endpoint, lost = iperf(t, w, secs)
                            m = Measurement(name, w, rnd, gbit, _cpu(t.pids) - c0, endpoint, lost)
                        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                            m = Measurement(name, w, rnd, 0.0, 0.0, 0.0, error=str(exc)[:300])
                        out.append(m)
                        progress(f"round {rnd} {name:20s} {w:8s} {m.gbit_s:7.3f} Gbit/s"
                                 + (f"  ERROR {m.error}" if m.error else ""))
            except Unavailable as exc:
                unavailable[name] = str(exc)
                progress(f"{name}: unavailable: {exc}")
            except Exception as exc:  # a contender that fails to set up is reported, the others carry on
                for w in workloads:
                    out.append(Measurement(name, w, rnd, 0.0, 0.0, 0.0, error=f"setup: {exc}"[:300]))
                progress(f"round {rnd} {name}: setup failed: {exc}")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        loads.append(os.getloadavg())
    machine = {"loadavg_per_round": loads, "cpus": os.cpu_count(), "kernel": os.uname().release,
               "unavailable": unavailable, "secs": secs, "rounds": rounds}
    return out, machine


def summarize(ms: list[Measurement], secs: float) -> list[Summary]:
    """Medians per contender and workload, the ratio to veth's median, and CPU seconds per gigabit moved
    (a run moves gbit_s * secs gigabits)."""
    keys = list(dict.fromkeys((m.contender, m.workload) for m in ms))
    veth_median = {}
    out = []
    for c, w in keys:
        runs = [m for m in ms if m.contender == c and m.workload == w]
        good = [m for m in runs if not m.error]
        med = statistics.median([m.gbit_s for m in good]) if good else 0.0
        if c == "veth":
            veth_median[w] = med
        gbits = sum(m.gbit_s for m in good) * secs
        out.append(Summary(c, w, med, [m.gbit_s for m in runs], None,
                           (sum(m.tunnel_cpu_s for m in good) / gbits) if gbits else None,
                           (sum(m.endpoint_cpu_s for m in good) / gbits) if gbits else None,
                           [m.error for m in runs if m.error]))
    for s in out:
        v = veth_median.get(s.workload)
        s.ratio_to_veth = s.median_gbit_s / v if v else None
    return out


def _per_gbit(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Needs root (network namespaces). Prints a table; --json writes every run.")
    p.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS),
                   metavar="NAME", help=f"which to run, in this order each round (default: all: {', '.join(CONTENDERS)})")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS), metavar="NAME",
                   help=f"which iperf3 workloads (default: all: {', '.join(WORKLOADS)})")
    p.add_argument("--rounds", type=int, default=3, help="rounds; contenders alternate within each (default 3)")
    p.add_argument("--secs", type=float, default=5.0, help="seconds per iperf3 run (default 5)")
    p.add_argument("--json", metavar="FILE", help="write measurements, summary and machine state as JSON")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.secs <= 0:
        p.error("--rounds must be >= 1 and --secs > 0")
    if os.geteuid() != 0:
        print("bench.gateway: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3"):
        if shutil.which(tool) is None:
            print(f"bench.gateway: {tool} is not installed (.ci/install-system)", file=sys.stderr)
            return 2
    sys.path.insert(0, str(ROOT))  # the contenders use the interop harness of the test suite
    ms, machine = run(args.contenders, args.workloads, args.rounds, args.secs,
                      progress=lambda s: print(s, file=sys.stderr, flush=True))
    summary = summarize(ms, args.secs)
    print(f"# bench.gateway: {args.rounds} rounds x {args.secs:g} s, alternated; kernel {machine['kernel']}, "
          f"{machine['cpus']} CPUs; load average (1/5/15 min) per round boundary: "
          + ", ".join("/".join(f"{x:.1f}" for x in la) for la in machine["loadavg_per_round"]))
    print("| contender | workload | Gbit/s (median) | runs | ratio to veth | tunnel CPU s/Gbit | iperf3 CPU s/Gbit |")
    print("|---|---|---|---|---|---|---|")
    for s in summary:
        ratio = "-" if s.ratio_to_veth is None else f"{s.ratio_to_veth:.3f}"
        runs = " ".join(f"{x:.2f}" for x in s.runs)
        print(f"| {s.contender} | {s.workload} | {s.median_gbit_s:.3f} | {runs} | {ratio} | "
              f"{_per_gbit(s.tunnel_cpu_s_per_gbit)} | {_per_gbit(s.endpoint_cpu_s_per_gbit)} |"
              + (f" errors: {'; '.join(s.errors)[:200]}" if s.errors else ""))
    for name, why in machine["unavailable"].items():
        print(f"{name}: unavailable: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "measurements": [asdict(m) for m in ms],
                                               "summary": [asdict(s) for s in summary]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
