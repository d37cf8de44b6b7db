"""Two espresso gateways with static SAs (no IKE) carry real traffic between two inner networks.

Topology, four network namespaces made by the test (names unique per run, removed whatever happens)::

    hostA 10.98.1.2 --veth-- 10.98.1.1 gwA 10.97.0.1 ==veth (ESP in UDP 4500)== 10.97.0.2 gwB 10.98.2.1 --veth-- 10.98.2.2 hostB
                                      [TUN: 10.98.2.0/24]                [TUN: 10.98.1.0/24]

Each gateway is a separate process (``esp.gateway.run_static``) in its namespace, as a router would run it.
Evidence: ping both ways, a TCP bulk transfer whose SHA-256 matches at the far end, ESP on the wire (the
plaintext never crosses the outer link: tshark/tcpdump is not needed, the gateways' counters and a capture
with Python's raw socket would do; we check the counters), and the gateways' own counters.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import require, require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.interop

_seq = [0]


def unique(prefix: str) -> str:
    _seq[0] += 1
    return f"{prefix}{os.getpid() % 100000:05d}{_seq[0] % 100:02d}"


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stdout}{r.stderr}")
    return r


@dataclass
class Topology:
    host_a: str
    gw_a: str
    gw_b: str
    host_b: str
    namespaces: list[str]

    def close(self) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(Exception):
                for pid in sh("ip", "netns", "pids", ns, check=False, timeout=5).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(Exception):
                sh("ip", "netns", "delete", ns, check=False, timeout=10)


def veth(ns1: str, addrs1: tuple[str, ...], ns2: str, addrs2: tuple[str, ...], mtu: int = 1500) -> None:
    a, b = unique("vga"), unique("vgb")
    sh("ip", "link", "add", a, "netns", ns1, "mtu", str(mtu), "type", "veth", "peer", "name", b, "netns", ns2,
       "mtu", str(mtu))
    for ns, ifname, addrs in ((ns1, a, addrs1), (ns2, b, addrs2)):
        for addr in addrs:
            sh("ip", "addr", "add", addr, "dev", ifname, *(["nodad"] if ":" in addr else []), ns=ns)
        sh("ip", "link", "set", ifname, "up", ns=ns)


def build_topology() -> Topology:
    names = [unique(p) for p in ("eha", "ega", "egb", "ehb")]
    topo = Topology(*names, namespaces=[])
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            topo.namespaces.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        # IPv4 and IPv6 on every link (inner networks and the outer one)
        veth(topo.host_a, ("10.98.1.2/24", "fd98:1::2/64"), topo.gw_a, ("10.98.1.1/24", "fd98:1::1/64"))
        veth(topo.gw_a, ("10.97.0.1/24", "fd97::1/64"), topo.gw_b, ("10.97.0.2/24", "fd97::2/64"))
        veth(topo.gw_b, ("10.98.2.1/24", "fd98:2::1/64"), topo.host_b, ("10.98.2.2/24", "fd98:2::2/64"))
        sh("ip", "route", "add", "default", "via", "10.98.1.1", ns=topo.host_a)
        sh("ip", "route", "add", "default", "via", "10.98.2.1", ns=topo.host_b)
        sh("ip", "-6", "route", "add", "default", "via", "fd98:1::1", ns=topo.host_a)
        sh("ip", "-6", "route", "add", "default", "via", "fd98:2::1", ns=topo.host_b)
        for ns in (topo.gw_a, topo.gw_b):
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
    except BaseException:
        topo.close()
        raise
    return topo


class GatewayProcess:
    """``python -m esp gateway CONFIG [args]`` in a namespace; ``stop()`` returns its final counters."""

    def __init__(self, ns: str, config: dict, workdir: Path, name: str, args: tuple[str, ...] = ()) -> None:
        self.path = path = workdir / f"{name}.json"
        self._write(config)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "esp", "gateway", str(path),
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        line = self._readline(15)
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"gateway {name} did not start: {line!r} {self.proc.stderr.read()[-2000:]}")

    def _write(self, config: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)

    def reload(self, config: dict) -> str:
        """Rewrite the static configuration and SIGHUP the gateway; returns its RELOADED line."""
        self._write(config)
        self.proc.send_signal(signal.SIGHUP)
        line = self._readline(10)
        assert line.startswith("RELOADED"), line
        return line.strip()

    def _readline(self, timeout: float) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if r else ""

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"no counters from gateway: {out[-1000:]} {err[-2000:]}")


def static_configs(suite: str = "aes128gcm16", raw_esp: bool = False, spi_ab: int = 0xA0001,
                   spi_ba: int = 0xB0001, outer6: bool = False, loop: str = "compiled") -> tuple[dict, dict]:
    """Static configurations for gwA and gwB: policy "site" (inner IPv4) and, with ``outer6``, policy "site6"
    (inner IPv6) too, both over IPv6 outer addresses; one SA pair per policy. ``loop``: the transmit loop."""
    from esp import parse_suite

    s = parse_suite(suite)
    encap = {"encap": None} if raw_esp else {}
    keys = {d: (os.urandom(s.enc_keymat_len).hex(), os.urandom(s.integ_key_len).hex()) for d in ("ab", "ba")}

    def sas(policy: str, local: str, remote: str, out_dir: str, in_dir: str, spi_out: int, spi_in: int):
        return [
            {"policy": policy, "spi": spi_out, "direction": "out", "suite": suite, "enc_key": keys[out_dir][0],
             "integ_key": keys[out_dir][1], "src": local, "dst": remote, **encap},
            {"policy": policy, "spi": spi_in, "direction": "in", "suite": suite, "enc_key": keys[in_dir][0],
             "integ_key": keys[in_dir][1], "src": remote, "dst": local, **encap},
        ]

    def side(local: str, remote: str, lnet: str, rnet: str, out_dir: str, in_dir: str, spi_out: int, spi_in: int,
             lnet6: str, rnet6: str):
        cfg = {
            "gateway": {"local_addr": local, "tun_name": unique("etun"), "routes": [rnet], "mtu": 1400,
                        "raw_esp": raw_esp, "loop": loop},
            "policies": [{"name": "site", "src": lnet, "dst": rnet}],
            "sas": sas("site", local, remote, out_dir, in_dir, spi_out, spi_in),
        }
        if outer6:
            cfg["gateway"]["routes"].append(rnet6)
            cfg["policies"].append({"name": "site6", "src": lnet6, "dst": rnet6})
            cfg["sas"] += sas("site6", local, remote, out_dir, in_dir, spi_out + 0x100, spi_in + 0x100)
        return cfg

    la, lb = ("fd97::1", "fd97::2") if outer6 else ("10.97.0.1", "10.97.0.2")
    a = side(la, lb, "10.98.1.0/24", "10.98.2.0/24", "ab", "ba", spi_ab, spi_ba, "fd98:1::/64", "fd98:2::/64")
    b = side(lb, la, "10.98.2.0/24", "10.98.1.0/24", "ba", "ab", spi_ba, spi_ab, "fd98:2::/64", "fd98:1::/64")
    return a, b


RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys
    addr = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 5001)); s.listen(1); s.settimeout(30)
    print("LISTENING", flush=True)
    c, _ = s.accept(); c.settimeout(30)
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        h.update(d); n += len(d)
    print(n, h.hexdigest(), flush=True)
""")

SENDER = textwrap.dedent("""
    import hashlib, random, socket, sys, time
    total, seed = int(sys.argv[1]), int(sys.argv[2])
    rate = float(sys.argv[3])  # bytes/s ceiling, 0 = as fast as possible
    dst, src = sys.argv[4], sys.argv[5]
    rng = random.Random(seed)
    s = socket.create_connection((dst, 5001), timeout=30, source_address=(src, 0) if src != "-" else None)
    h, left = hashlib.sha256(), total
    t0 = time.monotonic()
    while left:
        chunk = rng.randbytes(min(left, 1 << 18))
        s.sendall(chunk); h.update(chunk); left -= len(chunk)
        if rate:
            ahead = (total - left) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    s.recv(1)
    print(total, h.hexdigest(), time.monotonic() - t0, flush=True)
""")


def bulk_transfer(topo: Topology, nbytes: int, seed: int = 7, timeout: float = 60,
                  rate: float = 0.0) -> tuple[str, str, float]:
    """Send ``nbytes`` hostA -> hostB over TCP; returns (sent digest line, received digest line, seconds)."""
    return bulk_between(topo.host_a, topo.host_b, "10.98.2.2", nbytes, seed=seed, timeout=timeout, rate=rate)


def bulk_between(src_ns: str, dst_ns: str, dst: str, nbytes: int, *, src: str = "-", seed: int = 7,
                 timeout: float = 60, rate: float = 0.0) -> tuple[str, str, float]:
    """TCP transfer of ``nbytes`` pseudo-random bytes from ``src_ns`` (bound to ``src``) to ``dst`` in
    ``dst_ns``; returns (sent "count sha256", received "count sha256", seconds)."""
    rx = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", RECEIVER, dst],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([rx.stdout], [], [], 10)
        assert r and rx.stdout.readline().strip() == "LISTENING"
        tx = sh(sys.executable, "-c", SENDER, str(nbytes), str(seed), str(rate), dst, src, ns=src_ns,
                timeout=timeout)
        out, err = rx.communicate(timeout=timeout)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.communicate(timeout=5)
    sent = tx.stdout.split()
    return " ".join(sent[:2]), out.strip(), float(sent[2])


UDP_RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys
    addr, want = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, 5003)); s.settimeout(3)
    print("LISTENING", flush=True)
    good = bad = dup = 0
    seen = set()
    try:
        while good + bad + dup < want:
            d = s.recv(65535)
            seq = int.from_bytes(d[:4], "big")
            body = hashlib.shake_128(d[:4]).digest(len(d) - 4)
            if d[4:] != body:
                bad += 1
            elif seq in seen:
                dup += 1
            else:
                good += 1; seen.add(seq)
    except socket.timeout:
        pass
    print(good, bad, dup, flush=True)
""")

UDP_SENDER = textwrap.dedent("""
    import hashlib, socket, sys, time
    dst, count, size, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    for seq in range(count):
        head = seq.to_bytes(4, "big")
        s.sendto(head + hashlib.shake_128(head).digest(size - 4), (dst, 5003))
        ahead = (seq + 1) * size / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
""")


def udp_bulk(src_ns: str, dst_ns: str, dst: str, count: int, size: int = 1200,
             rate: float = 20e6) -> tuple[int, int, int]:
    """``count`` UDP datagrams whose content is a hash of their sequence number, paced at ``rate`` bytes/s;
    returns (intact, corrupted, duplicated) as the receiver counted them."""
    rx = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", UDP_RECEIVER, dst, str(count)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([rx.stdout], [], [], 10)
        assert r and rx.stdout.readline().strip() == "LISTENING"
        sh(sys.executable, "-c", UDP_SENDER, dst, str(count), str(size), str(rate), ns=src_ns, timeout=60)
        out, err = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.communicate(timeout=5)
    good, bad, dup = map(int, out.split())
    return good, bad, dup


def ping(ns: str, dst: str, count: int = 3) -> subprocess.CompletedProcess:
    return sh("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", "-w", "10", dst, ns=ns, check=False,
              timeout=20)


@pytest.fixture
def topo():
    require_root()
    require_tool("ip")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    t = build_topology()
    try:
        yield t
    finally:
        t.close()


@pytest.mark.parametrize("suite,raw_esp,nbytes,outer6,offload,loop", [
    # ESP in UDP 4500 (RFC 3948), what strongSwan's libipsec speaks; the compiled transmit loop (the default)
    ("aes128gcm16", False, 16 << 20, False, True, "compiled"),
    ("aes128gcm16", False, 16 << 20, False, False, "compiled"),  # --no-offload: one datagram per message
    ("aes128gcm16", False, 16 << 20, False, True, "python"),     # the Python loop (Dataplane.outbound per batch)
    ("aes128gcm16", False, 16 << 20, False, False, "python"),
    ("aes256-sha256", True, 4 << 20, False, True, "compiled"),   # raw ESP, IP protocol 50, CBC + HMAC
    ("aes256-sha256", True, 4 << 20, False, True, "python"),
    ("aes128gcm16", True, 4 << 20, True, True, "compiled"),      # raw ESP over IPv6 (its header synthesized)
    ("chacha20poly1305", False, 4 << 20, True, True, "compiled"),  # IPv6 outside; IPv4 and IPv6 inside
    ("chacha20poly1305", False, 4 << 20, True, False, "compiled"),
    ("chacha20poly1305", False, 4 << 20, True, True, "python"),
], ids=["udp-gcm", "udp-gcm-no-offload", "udp-gcm-pyloop", "udp-gcm-no-offload-pyloop", "raw-cbc",
        "raw-cbc-pyloop", "raw6-gcm", "udp6-chacha",
        "udp6-chacha-no-offload", "udp6-chacha-pyloop"])
def test_static_gateway_pair_ping_and_bulk_transfer(topo, tmp_path, suite, raw_esp, nbytes, outer6, offload, loop):
    # the loop from the file's "loop" key, or (IPv4 outside) from the command line's --loop over the file's
    cli = loop == "python" and not outer6
    cfg_a, cfg_b = static_configs(suite, raw_esp, outer6=outer6, loop="compiled" if cli else loop)
    args = (() if offload else ("--no-offload",)) + (("--loop", loop) if cli else ())
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a", args)
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b", args)
        try:
            p = ping(topo.host_a, "10.98.2.2", count=5)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
            p = ping(topo.host_b, "10.98.1.2", count=3)
            assert p.returncode == 0, p.stdout + p.stderr
            if outer6:
                # First contact resolves IPv6 neighbours on the inner and outer links (packets may wait or be
                # lost there, as on any IPv6 network); the tunnel itself must then lose nothing.
                ping(topo.host_a, "fd98:2::2", count=1)
                p = ping(topo.host_a, "fd98:2::2", count=3)
                assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
            sent, got, secs = bulk_transfer(topo, nbytes)
            assert sent == got and got.startswith(str(nbytes)), (sent, got)
            if outer6:  # IPv6 inside too (over IPv6 outside)
                sent, got, secs = bulk_between(topo.host_a, topo.host_b, "fd98:2::2", nbytes)
                assert sent == got and got.startswith(str(nbytes)), (sent, got)
            for dst in ("10.98.2.2", "fd98:2::2") if outer6 else ("10.98.2.2",):
                good, bad, dup = udp_bulk(topo.host_a, topo.host_b, dst, 3000, rate=10e6)
                # UDP may lose datagrams on a loaded machine (socket buffers); none may arrive damaged or twice
                assert bad == dup == 0 and good >= 1500, (dst, good, bad, dup)
        finally:
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    # everything that crossed went through ESP: the gateways counted it, and nothing failed to decrypt
    assert stats_a["gateway"]["errors"] == [] and stats_b["gateway"]["errors"] == []
    assert stats_a["outbound"]["OK"] > nbytes // 1400 and stats_b["inbound"]["OK"] > nbytes // 1400
    assert stats_a["gateway"]["esp_send_dropped"] == 0 and stats_b["gateway"]["tun_write_dropped"] == 0
    for st in (stats_a, stats_b):
        for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "POLICY_MISMATCH", "NO_SA"):
            assert st["inbound"][bad] == 0, (bad, st)
    # the gateways say which offloads they used (this kernel has them all); trains and super-packets only
    # when they are on
    ga, gb = stats_a["gateway"], stats_b["gateway"]
    # the loop asked for ran (raw ESP too: queue 0 reads the raw socket, every queue sends on it), and it
    # counted what the data plane counts
    for g in (ga, gb):
        assert g["tx_loop"] == g["rx_loop"] == loop, g
        assert g["queues"] == (1 if loop == "python" else (os.cpu_count() or 1)) == len(g["per_queue"]), g
    assert ga["esp_sent"] == stats_a["outbound"]["OK"], ga
    assert gb["tun_gro_packets" if offload else "tun_written"] == stats_b["inbound"]["OK"], gb
    for g in (ga, gb):  # each queue's counts add up to the totals
        for name in ("esp_sent", "tun_read", "esp_received", "tun_written", "tx_bytes", "rx_bytes"):
            assert sum(q[name] for q in g["per_queue"]) == g[name], (name, g)
    if not offload:
        assert ga["offloads"] == gb["offloads"] == [] and ga["gso_trains"] == gb["gro_trains"] == 0
        assert ga["tso_segments"] == 0 and gb["tun_gro_packets"] == 0
    else:
        assert ga["tso_super_packets"] > 0 and ga["tso_segments"] > ga["tso_super_packets"], ga
        assert gb["tun_written"] < gb["tun_gro_packets"], gb  # decrypted segments left as fewer super-packets
        assert {"tun_csum", "tun_tso4", "tun_tso6"} <= set(ga["offloads"]), ga["offloads"]
        if not raw_esp:
            assert {"udp_gso", "udp_gro"} <= set(ga["offloads"]) & set(gb["offloads"]), (ga, gb)
            assert ga["gso_trains"] > 0 and ga["gso_datagrams"] > ga["gso_trains"] and ga["offload_fallback"] == ""
            assert gb["gro_datagrams"] >= gb["gro_trains"]


def test_gateway_start_errors_are_clear(tmp_path):
    from esp.gateway import Gateway, GatewayConfig, GatewayError, load_static

    cfg_a, _ = static_configs()
    path = tmp_path / "loose.json"
    path.write_text(json.dumps(cfg_a))
    path.chmod(0o644)
    with pytest.raises(GatewayError, match="chmod 600"):
        load_static(path)
    path.chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(GatewayError, match="not valid JSON"):
        load_static(path)
    path.write_text(json.dumps({"gateway": {"local_addr": "10.0.0.1"}, "sas": [{"spi": 5}]}))
    with pytest.raises(GatewayError, match="bad static configuration"):
        load_static(path)
    # an address this host does not have: a clear bind error, nothing left open
    with pytest.raises(GatewayError, match="cannot bind"):
        Gateway(GatewayConfig(local_addr="192.0.2.123", tun_name="x")).start()


def _sas(cfg: dict, direction: str) -> list[dict]:
    return [sa for sa in cfg["sas"] if sa["direction"] == direction]


@pytest.mark.parametrize("loop", ["compiled", "python"])
def test_static_rekey_in_the_middle_of_a_transfer_loses_nothing(topo, tmp_path, loop):
    """Roll both directions over to new SPIs and keys while 24 MB flow, make-before-break as IKE does it:
    each side accepts the new inbound SA before the other starts sending on it, old inbound SAs go last.
    No packet may meet an unknown SPI or fail authentication, and the transfer's hash must match."""
    import threading

    old_a, old_b = static_configs(loop=loop)
    new_a, new_b = static_configs(spi_ab=0xA0002, spi_ba=0xB0002, loop=loop)
    gw_a = GatewayProcess(topo.gw_a, old_a, tmp_path, "a")
    try:
        gw_b = GatewayProcess(topo.gw_b, old_b, tmp_path, "b")
        try:
            result: dict = {}
            # paced at 4 MB/s so the transfer spans every step (about 6 s), whatever the machine's speed
            t = threading.Thread(target=lambda: result.update(r=bulk_transfer(topo, 24 << 20, seed=3, rate=4e6)))
            t.start()
            time.sleep(0.5)
            steps = [
                # 1. A also accepts B's new outbound SA
                (gw_a, {**old_a, "sas": _sas(old_a, "out") + _sas(old_a, "in") + _sas(new_a, "in")}),
                # 2. B accepts A's new SA and moves its own outbound to the new SA
                (gw_b, {**old_b, "sas": _sas(new_b, "out") + _sas(old_b, "in") + _sas(new_b, "in")}),
                # 3. A moves its outbound and drops B's old SA
                (gw_a, {**old_a, "sas": _sas(new_a, "out") + _sas(new_a, "in")}),
                # 4. B drops A's old SA
                (gw_b, {**old_b, "sas": _sas(new_b, "out") + _sas(new_b, "in")}),
            ]
            lines = []
            for gw, cfg in steps:
                lines.append(gw.reload(cfg))
                time.sleep(0.3)
            assert t.is_alive(), "the transfer ended before the rekey was complete: not mid-transfer"
            t.join(90)
            assert not t.is_alive()
            sent, got, _ = result["r"]
            assert sent == got and got.startswith(str(24 << 20)), (sent, got)
            assert lines == ["RELOADED 1 0", "RELOADED 2 1", "RELOADED 1 2", "RELOADED 0 1"], lines
        finally:
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    for st in (stats_a, stats_b):
        assert st["gateway"]["errors"] == []
        for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "NO_SA"):
            assert st["inbound"][bad] == 0, (bad, st["inbound"])
        assert st["outbound"]["NO_SA"] == 0
        assert st["gateway"]["tx_loop"] == st["gateway"]["rx_loop"] == loop


@pytest.mark.parametrize("loop", ["compiled", "python"])
def test_inner_packets_outside_the_sa_selectors_are_counted_and_dropped(topo, tmp_path, loop):
    """RFC 4301 5.2: gwA (misconfigured) protects 10.98.1.0/24 -> 10.98.0.0/16 with the SA that gwB bound to
    10.98.1.0/24 <-> 10.98.2.0/24; what gwB decrypts for 10.98.3.x is dropped as POLICY_MISMATCH by either
    receive loop, while traffic inside the selectors still flows."""
    cfg_a, cfg_b = static_configs(loop=loop)
    cfg_a["policies"][0]["dst"] = "10.98.0.0/16"
    cfg_a["gateway"]["routes"] = ["10.98.2.0/24", "10.98.3.0/24"]
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a")
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b")
        try:
            p = ping(topo.host_a, "10.98.3.5", count=3)
            assert p.returncode != 0
            p = ping(topo.host_a, "10.98.2.2", count=3)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
        finally:
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    assert stats_b["gateway"]["rx_loop"] == loop
    # ping keeps sending to its deadline without replies: every one of them must be refused
    assert stats_b["inbound"]["POLICY_MISMATCH"] >= 3 and stats_b["inbound"]["OK"] >= 3, stats_b["inbound"]
    assert stats_b["inbound"]["POLICY_MISMATCH"] == stats_a["outbound"]["OK"] - stats_b["inbound"]["OK"]
    assert stats_b["gateway"]["not_delivered"] >= 3
    assert stats_a["outbound"]["OK"] >= 6


MULTI_RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys, threading
    n = int(sys.argv[1])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5002)); s.listen(n); s.settimeout(30)
    print("LISTENING", flush=True)
    out = []
    def drain(c):
        c.settimeout(30)
        h, k = hashlib.sha256(), 0
        seed = c.recv(4)
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            h.update(d); k += len(d)
        out.append((int.from_bytes(seed, "big"), k, h.hexdigest()))
        c.close()
    ts = []
    for _ in range(n):
        c, _ = s.accept()
        t = threading.Thread(target=drain, args=(c,)); t.start(); ts.append(t)
    for t in ts:
        t.join(60)
    for seed, k, d in sorted(out):
        print(seed, k, d, flush=True)
""")

MULTI_SENDER = textwrap.dedent("""
    import hashlib, random, socket, sys, threading
    dst, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = []
    def send(seed):
        rng = random.Random(seed)
        s = socket.create_connection((dst, 5002), timeout=30)
        s.sendall(seed.to_bytes(4, "big"))
        h, left = hashlib.sha256(), total
        while left:
            chunk = rng.randbytes(min(left, 1 << 17))
            s.sendall(chunk); h.update(chunk); left -= len(chunk)
        s.close()
        out.append((seed, total, h.hexdigest()))
    ts = [threading.Thread(target=send, args=(seed,)) for seed in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for seed, k, d in sorted(out):
        print(seed, k, d, flush=True)
""")


WIRE_ORDER = textwrap.dedent("""
    import signal, socket, struct, sys
    # every ESP-in-UDP datagram arriving here, in arrival order: per SPI, how many arrived and how many
    # carried a sequence number not above the highest before. The kernel may have merged a train into one
    # GRO packet: the virtio_net_hdr in front (PACKET_VNET_HDR) gives the size to split it at.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))  # Ethernet frames (veth)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
    s.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("CAPTURING", flush=True)
    top, seen, back = {}, {}, {}
    while not stop:
        try:
            d, (_, _, ptype, *_) = s.recvfrom(65535)
        except (socket.timeout, InterruptedError):
            continue
        gso_size = struct.unpack("<H", d[4:6])[0] if d[1] else 0
        d = d[10 + 14:]  # virtio_net_hdr, Ethernet header
        if ptype == socket.PACKET_OUTGOING or len(d) < 36 or d[9] != 17:
            continue
        hl = (d[0] & 15) * 4
        if struct.unpack("!H", d[hl + 2:hl + 4])[0] != 4500 or len(d) < hl + 16:
            continue
        step = gso_size or len(d)
        for at in range(hl + 8, len(d) - 8, step):
            spi, seq = struct.unpack("!II", d[at:at + 8])
            if spi == 0:
                break
            seen[spi] = seen.get(spi, 0) + 1
            if seq <= top.get(spi, 0):
                back[spi] = back.get(spi, 0) + 1
            top[spi] = max(top.get(spi, 0), seq)
    print(sum(seen.values()), sum(back.values()), flush=True)
""")


UDP_FLOWS_SENDER = textwrap.dedent("""
    import hashlib, socket, sys, time
    dst, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rate, flows = float(sys.argv[4]), int(sys.argv[5])
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]  # a source port each
    t0 = time.monotonic()
    for seq in range(count):
        head = seq.to_bytes(4, "big")
        socks[seq % flows].sendto(head + hashlib.shake_128(head).digest(size - 4), (dst, 5003))
        ahead = (seq + 1) * size / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
""")


def test_two_queues_carry_many_flows_with_one_sa_in_sequence_order(topo, tmp_path):
    """Queues (multi-queue TUN + SO_REUSEPORT sockets, a tx and an rx worker each) share one SA per direction:
    eight TCP flows spread over both of gwA's queues, and the SA's packets must still leave in sequence-number
    order (one writer at a time), so gwB's replay window rejects nothing and every flow's hash matches.
    The kernel steers a TCP flow to the TUN queue its replies were written on (all on one queue here: one
    peer, one receiving socket), so one-way UDP flows, which it spreads by hash, make sure both queues
    encrypt with the SA at once."""
    cfg_a, cfg_b = static_configs()
    for cfg in (cfg_a, cfg_b):
        cfg["gateway"]["queues"] = 2
        for sa in cfg["sas"]:
            sa["replay_window"] = 32  # a narrow window: reordering between the workers would show
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a")
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b")
        cap = subprocess.Popen(["ip", "netns", "exec", topo.gw_b, sys.executable, "-c", WIRE_ORDER],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            r, _, _ = select.select([cap.stdout], [], [], 10)
            assert r and cap.stdout.readline().strip() == "CAPTURING"
            rx = subprocess.Popen(["ip", "netns", "exec", topo.host_b, sys.executable, "-c", MULTI_RECEIVER, "8"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                r, _, _ = select.select([rx.stdout], [], [], 10)
                assert r and rx.stdout.readline().strip() == "LISTENING"
                tx = sh(sys.executable, "-c", MULTI_SENDER, "10.98.2.2", "8", str(3 << 20), ns=topo.host_a,
                        timeout=90)
                got, err = rx.communicate(timeout=90)
            finally:
                if rx.poll() is None:
                    rx.kill()
                    rx.communicate(timeout=5)
            assert tx.stdout.split("\n") == got.split("\n") and len(got.split()) == 24, (tx.stdout, got, err)
            urx = subprocess.Popen(["ip", "netns", "exec", topo.host_b, sys.executable, "-c", UDP_RECEIVER,
                                    "10.98.2.2", "20000"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                r, _, _ = select.select([urx.stdout], [], [], 10)
                assert r and urx.stdout.readline().strip() == "LISTENING"
                sh(sys.executable, "-c", UDP_FLOWS_SENDER, "10.98.2.2", "20000", "1200", "40e6", "16",
                   ns=topo.host_a, timeout=60)
                uout, _ = urx.communicate(timeout=30)
            finally:
                if urx.poll() is None:
                    urx.kill()
                    urx.communicate(timeout=5)
            good, bad, dup = map(int, uout.split())
            assert bad == dup == 0 and good >= 10000, (good, bad, dup)
            cap.send_signal(signal.SIGTERM)
            wire, cerr = cap.communicate(timeout=20)
        finally:
            if cap.poll() is None:
                cap.kill()
                cap.communicate(timeout=5)
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    ga, gb = stats_a["gateway"], stats_b["gateway"]
    assert ga["queues"] == gb["queues"] == 2 and ga["errors"] == gb["errors"] == []
    assert all(q["tun_read"] > 0 for q in ga["per_queue"]), ga["per_queue"]  # both workers encrypted
    assert sum(q["esp_sent"] for q in ga["per_queue"]) == ga["esp_sent"] == stats_a["outbound"]["OK"], ga
    for bad in ("REPLAYED", "AUTH_FAILED", "NO_SA", "MALFORMED"):
        assert stats_b["inbound"][bad] == 0 and stats_a["inbound"][bad] == 0, (bad, stats_b["inbound"])
    # on the wire: gwA's ESP arrived with sequence numbers only ever going up (the capture, in Python, may
    # miss some under load; what it saw must be in order)
    arrived, backwards = map(int, wire.split())
    assert arrived >= 5000 and backwards == 0, (arrived, backwards, cerr)


SPLIT_CHILD = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, {root!r})
    from esp.gateway import Gateway, GatewayConfig
    seen = []
    gw = Gateway(GatewayConfig(local_addr="127.0.0.1", tun_name="espsplit%d", ike_socket=True),
                 on_ike=lambda data, addr, local: seen.append(data))
    gw.start()
    try:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        for i in range(20):
            peer.sendto(b"\\0\\0\\0\\0" + b"IKE%02d" % i, ("127.0.0.1", 4500))      # IKE: non-ESP marker
            peer.sendto(b"\\x00\\x00\\x10\\x01" + b"\\0" * 40, ("127.0.0.1", 4500))  # ESP (unknown SPI)
        ike = []
        gw.ike_socket.settimeout(2)
        for _ in range(20):
            data, addr = gw.ike_socket.recvfrom(2000)
            ike.append(data)
        # the IKE socket answers from port 4500 too
        gw.ike_socket.sendto(b"\\0\\0\\0\\0reply", addr)
        peer.settimeout(2)
        reply, src = peer.recvfrom(100)
        deadline = time.monotonic() + 5
        while gw.dataplane.counters().inbound["NO_SA"] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        c = gw.dataplane.counters().inbound
        assert ike == [b"\\0\\0\\0\\0" + b"IKE%02d" % i for i in range(20)], ike[:3]
        assert src[1] == 4500 and reply.endswith(b"reply")
        assert c["NO_SA"] == 20 and c["BYPASSED"] == 0 and seen == [], (c, seen)
        # the data socket's own senders: an IKE message (marker added) and a NAT keepalive (no marker)
        gw.send_ike(b"hello", peer.getsockname())
        gw.send_keepalive(peer.getsockname())
        assert peer.recvfrom(100) == (b"\\0\\0\\0\\0hello", ("127.0.0.1", 4500))
        assert peer.recvfrom(100) == (b"\\xff", ("127.0.0.1", 4500))
        print("SPLIT-OK")
    finally:
        gw.stop()
""")


def test_nat_t_port_is_split_between_ike_and_esp_by_the_kernel():
    """With ike_socket=True, IKE (non-ESP marker) arrives only on Gateway.ike_socket and ESP only on the data
    thread's socket, so the IKE daemon can own its port-4500 socket unchanged."""
    require_root()
    require_tool("ip")
    ns = unique("espsp")
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "set", "lo", "up", ns=ns)
        r = sh(sys.executable, "-c", SPLIT_CHILD.format(root=str(ROOT)), ns=ns, check=False, timeout=60)
        assert r.returncode == 0 and "SPLIT-OK" in r.stdout, r.stdout + r.stderr[-3000:]
    finally:
        sh("ip", "netns", "delete", ns, check=False)


def test_apply_static_installs_new_sas_before_removing_old_and_refuses_rekeying_in_place():
    """The reload logic alone (no namespaces): make-before-break order, policy changes, keys changed in place."""
    from esp import Direction, Sa, SaParams
    from esp.dataplane import Dataplane
    from esp.gateway import GatewayError, apply_static
    from esp.spd import Policy, Selector

    def sa(spi: int, direction: str, key: bytes = b"k" * 20) -> Sa:
        return Sa(SaParams(spi=spi, direction=Direction(direction), suite="aes128gcm16", enc_key=key,
                           src="192.0.2.1", dst="192.0.2.2"))

    dp = Dataplane()
    site = Policy("site", Selector("10.1.0.0/16", "10.2.0.0/16"))
    assert apply_static(dp, [site], [(sa(0x100, "out"), "site"), (sa(0x200, "in"), "site")]) == (2, 0)
    # roll the outbound SA and add an inbound one: both new SAs go in, the dropped one goes
    assert apply_static(dp, [site], [(sa(0x101, "out"), "site"), (sa(0x200, "in"), "site"),
                                     (sa(0x201, "in"), "site")]) == (2, 1)
    snap = dp.sad.snapshot
    assert snap.outbound["site"].spi == 0x101 and set(snap.inbound_by_spi) == {0x200, 0x201}
    # the same SPI with other keys is refused: a new key needs a new SPI
    with pytest.raises(GatewayError, match="new SPI"):
        apply_static(dp, [site], [(sa(0x101, "out", b"x" * 20), "site")])
    # a policy that disappears takes its SAs with it; a changed one is replaced in place
    other = Policy("other", Selector(dst="10.3.0.0/16"), "discard")
    apply_static(dp, [other], [])
    assert [p.name for p in dp.spd.policies] == ["other"] and len(dp.sad) == 0
    apply_static(dp, [Policy("other", Selector(dst="10.4.0.0/16"), "bypass")], [])
    assert dp.spd.get("other").action.name == "BYPASS"
