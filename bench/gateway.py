"""Tunnel throughput: the espresso gateway pair against strongSwan's userspace ESP (kernel-libipsec).

Both run in the same topology, built by the interop harness of the test suite: two network namespaces joined by
a veth pair, inner addresses on each side, one iperf3 TCP stream through the tunnel, aes128gcm16 with ESP in UDP
4500 on both. Needs root, iproute2, iperf3 and strongSwan (`.ci/install-system`); run from the repository root::

    python -m bench.gateway                      # espresso_ike, espresso (static SAs), strongswan, alternated
    SECS=10 ROUNDS=5 python -m bench.gateway espresso strongswan

It is not part of ``python -m bench``: it needs root and takes a minute. Results go to bench/RESULTS.md.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.interop import strongswan as ss
from tests.interop.test_gateway import GatewayProcess, static_configs

SECS = int(os.environ.get("SECS", "5"))

def iperf(a, b, secs=SECS):
    srv = subprocess.Popen(["ip", "netns", "exec", b.netns.name, "iperf3", "-s", "-1", "-B", b.inner],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = a.netns.run(["iperf3", "-c", b.inner, "-B", a.inner, "-t", str(secs), "-J"], check=False, timeout=secs + 30)
        j = json.loads(r.stdout)
        if "error" in j:
            raise RuntimeError(j["error"])
        return j["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        srv.kill(); srv.wait()

def strongswan(work):
    with ss.Lab(work) as lab:
        a, b = lab.pair()
        pki = ss.LabPki()
        creds = {n: pki.issue(n, f"{n}.espresso.test") for n in ("a", "b")}
        chs = {}
        for n, site, peer in (("a", a, b), ("b", b, a)):
            ch = lab.charon(site, n)
            ch.add_ca(pki.ca)
            cert = ch.add_credential(creds[n])
            other = "b" if n == "a" else "a"
            ch.connections.append(ss.Connection("t", site.outer, peer.outer, f"{n}.espresso.test", f"{other}.espresso.test",
                                                cert, [ss.Child("c", f"{site.inner}/32", f"{peer.inner}/32")]))
            ch.start(); chs[n] = ch
        r = chs["a"].initiate("c", ike="t")
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(0.5)
        return iperf(a, b)

def espresso(work):
    with ss.Lab(work) as lab:
        a, b = lab.pair()
        ca, cb = static_configs()
        for cfg, site, peer in ((ca, a, b), (cb, b, a)):
            cfg["gateway"]["local_addr"] = site.outer
            cfg["gateway"]["routes"] = [f"{peer.inner}/32"]
            cfg["policies"][0].update(src=f"{site.inner}/32", dst=f"{peer.inner}/32")
            for sa in cfg["sas"]:
                sa["src"], sa["dst"] = (site.outer, peer.outer) if sa["direction"] == "out" else (peer.outer, site.outer)
        ga = GatewayProcess(a.netns.name, ca, work, "ga")
        gb = GatewayProcess(b.netns.name, cb, work, "gb")
        try:
            return iperf(a, b)
        finally:
            print("espresso gw A:", ga.stop()["gateway"], file=sys.stderr)
            gb.stop()

def espresso_ike(work):
    """The product path: python -m ike daemon with [gateway] on both sides, certificate auth, then iperf3."""
    from tests.interop.test_gateway_ike import CONF, IkeGateway, espresso_pki
    from tests.interop.test_gateway import unique
    work.mkdir(parents=True, exist_ok=True)
    espresso_pki(work, ["gwa", "gwb"])
    with ss.Lab(work / "lab") as lab:
        a, b = lab.pair()
        gws = {}
        for name, site, peer, pname in (("gwa", a, b, "gwb"), ("gwb", b, a, "gwa")):
            conf = CONF.format(local=site.outer, remote=peer.outer, name=name, peer=pname,
                               peer_id=f"{pname}.espresso.test", local_ts=f"{site.inner}/32",
                               remote_ts=f"{peer.inner}/32", esp="aes128gcm16", child_extra="", tun=unique("eik"))
            gws[name] = IkeGateway(site.netns.name, work, name, conf)
        try:
            r = gws["gwa"].control({"cmd": "initiate", "ike": "gwb", "timeout": 10})
            assert r["ok"], r
            return iperf(a, b)
        finally:
            for g in gws.values():
                g.stop()


def main(argv: list[str]) -> int:
    which = argv or ["espresso_ike", "espresso", "strongswan"]
    rounds = int(os.environ.get("ROUNDS", "3"))
    runs: dict[str, list[float]] = {w: [] for w in which}
    for r in range(rounds):
        for w in which:  # alternated, so a phase of the machine hits every contender alike
            mbit = globals()[w](Path(tempfile.mkdtemp(prefix="espresso-bench-gw-")))
            runs[w].append(mbit)
            print(f"round {r + 1} {w}: {mbit:.1f} Mbit/s", flush=True)
    for w, v in runs.items():
        print(f"{w}: median {statistics.median(v):.1f} Mbit/s (min {min(v):.1f}, max {max(v):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
