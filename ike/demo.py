"""``python -m ike demo``: the whole stack on loopback, without root, in a few seconds.

What it shows, step by step, and checks (a failed check is reported and the exit status is 1):

1. a CA is created (``pki.ca``, RSA so SCEP can carry keys) with its CRL and OCSP URLs on the CA service;
2. the CA service (``pki.service``: SCEP, CRL, OCSP) listens on 127.0.0.1;
3. two gateways enroll over SCEP exactly as a router does (``pki.store``: ca-profile, ``ca-certificate enroll``,
   ``generate-key-pair``, ``local-certificate enroll`` with the challenge password);
4. two IKE daemons (``ike.daemon``, the real core and the real ESP data plane) are configured from TOML that
   names those store entries, and gateway A initiates: certificate authentication, the peer's certificate
   checked against the CA including a CRL fetched from the CA service;
5. traffic goes through the negotiated ESP SAs both ways; halfway through A rekeys the CHILD_SA
   (make-before-break: nothing may be lost);
6. the SAs are printed as ``swanctl --list-sas`` would, with the throughput; A then deletes the IKE_SA.

``--ikev1`` runs the same demo over IKEv1 (``version = 1``: main mode and quick mode with PFS, ESP in UDP by
NAT-T; the CHILD_SA rekey halfway is a new quick mode). It authenticates with a pre-shared key (a random one per
run, in the 0600 TOML), so the enrolled certificates are not used for it.

The traffic takes the path the product ships where it can (``--path gateway``; the default ``auto`` when run
as root with network namespaces and /dev/net/tun): each daemon runs in its own namespace with its
``[gateway]`` (esp.gateway: TUN device, ESP in UDP with the probed offloads) and a TCP transfer crosses the
tunnel each way, compared by SHA-256. Without root it says so and falls back to ``--path loopback``: both
daemons in this process on 127.0.0.1, inner packets handed to ``Daemon.send`` in windows and compared one by
one (the data plane without the gateway's I/O).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DemoError", "DemoResult", "add_arguments", "check_args", "run_demo", "run_from_args"]

CHALLENGE = "espresso-demo-challenge"
#: Packets in flight per window; the receiver confirms a window before the next is sent, so loopback
#: socket buffers never overflow and "every packet arrived" is a fair check.
WINDOW = 64
STEP_TIMEOUT = 20.0


class DemoError(Exception):
    """A demo step failed; the message says which and why."""


@dataclass
class Direction:
    name: str
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    lost: int = 0
    altered: int = 0

    @property
    def mbit_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def kpps(self) -> float:
        return self.packets / self.seconds / 1e3 if self.seconds else 0.0


@dataclass
class DemoResult:
    ok: bool
    setup_seconds: float = 0.0
    ike_ms: float = 0.0
    directions: list[Direction] = field(default_factory=list)
    rekeyed: bool = False
    sas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str = ""
    #: "gateway" (TUN + esp.gateway in namespaces, TCP) or "loopback" (Daemon.send, in process)
    path: str = ""
    #: why the loopback path was taken (empty on the gateway path)
    fallback_reason: str = ""
    #: the gateway path: each daemon's GatewayStats at the end (offloads in use, packet counts)
    gateway_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Inner packets


def _inner(src: str, dst: str, seq: int, size: int) -> bytes:
    """An IPv4/UDP packet whose payload is numbered and hashed, so loss, reordering and damage all show."""
    body_len = max(size - 28, 12)
    head = seq.to_bytes(4, "big")
    filler = hashlib.sha256(head).digest() * (body_len // 32 + 1)
    payload = head + filler[: body_len - 4]
    udp = struct.pack("!HHHH", 40000 + seq % 1000, 5001, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + udp


# --------------------------------------------------------------------------------------------------------
# Steps


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _make_ca(work: Path, out: TextIO) -> tuple[Any, Any]:
    try:
        from pki.ca import CertificateAuthority
        from pki.service import CaService
    except ImportError as exc:
        raise DemoError(f"the PKI is not available: {exc}") from None
    ca_dir = work / "ca"
    svc = CaService(ca_dir, host="127.0.0.1", port=0, challenge=CHALLENGE)
    try:
        ca = CertificateAuthority.init(ca_dir, "CN=espresso demo CA,O=espresso demo", key_type="rsa", key_size=2048,
                                       crl_url=f"{svc.url}/crl", ocsp_url=f"{svc.url}/ocsp")
        _say(out, f"[1/6] CA created: {ca.certificate.subject.rfc4514_string()} (RSA 2048), CRL at {svc.url}/crl")
        svc.start()
    except Exception as exc:
        svc.stop()
        raise DemoError(f"CA setup failed: {exc}") from None
    _say(out, f"[2/6] CA service (SCEP, CRL, OCSP) listening on {svc.url}")
    return ca, svc


def _enroll(work: Path, name: str, url: str, out: TextIO) -> Path:
    from pki.certs import SubjectAltNames
    from pki.profile import CaProfile, RevocationPolicy
    from pki.store import Store

    store_dir = work / name / "store"
    store = Store(store_dir)
    try:
        store.add_profile(CaProfile("demo-ca", enrollment_url=f"{url}/scep",
                                    revocation=RevocationPolicy(mode="crl")))
        store.enroll_ca_certificate("demo-ca")
        store.generate_key_pair(name, "rsa", 2048)
        cert = store.enroll_local_certificate(name, "demo-ca", f"CN={name}.demo,O=espresso demo",
                                              SubjectAltNames.build(dns=[f"{name}.demo"]), CHALLENGE)
    except Exception as exc:
        raise DemoError(f"SCEP enrollment of {name} failed: {exc}") from None
    _say(out, f"      {name} enrolled over SCEP: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
              f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return store_dir


# --------------------------------------------------------------------------------------------------------
# The gateway path: two network namespaces joined by a veth pair, one daemon + gateway in each

_CLONE_NEWNET = 0x40000000
#: Outer (veth) and inner (TUN) addresses of the gateway path; inside the demo's own namespaces only.
OUTER = {"gw-a": "192.0.2.1", "gw-b": "192.0.2.2"}
TCP_PORT = 5201
#: Bounds of one TCP transfer: connecting, and a stall (no byte moving) of this long fails the demo.
TCP_TIMEOUT = 20.0
_CHUNK = 1 << 18


def gateway_path_problem() -> str | None:
    """Why this host cannot run the gateway path, before trying (None: try it)."""
    if os.geteuid() != 0:
        return "not root (the gateways need a TUN device and network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    return None


def _ip(*cmd: str, ns: str | None = None) -> None:
    full = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *cmd]
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"{' '.join(full)}: {exc}") from None
    if r.returncode != 0:
        raise DemoError(f"{' '.join(full)}: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")


class NetLab:
    """The demo's two namespaces (names made unique with the pid), removed again by :meth:`close`."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:05d}"
        self.ns = {"gw-a": f"espdemo-a{tag}", "gw-b": f"espdemo-b{tag}"}
        self.made: list[str] = []
        try:
            for ns in self.ns.values():
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("link", "set", "lo", "up", ns=ns)
            va, vb = f"edva{tag}", f"edvb{tag}"
            _ip("link", "add", va, "netns", self.ns["gw-a"], "type", "veth", "peer", "name", vb,
                "netns", self.ns["gw-b"])
            for name, dev in (("gw-a", va), ("gw-b", vb)):
                _ip("addr", "add", f"{OUTER[name]}/24", "dev", dev, ns=self.ns[name])
                _ip("link", "set", dev, "up", ns=self.ns[name])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ns in self.made:
            with contextlib.suppress(DemoError):
                _ip("netns", "delete", ns)
        self.made = []

    def run_in(self, name: str, fn: Any) -> Any:
        """``fn()`` on a helper thread that entered namespace ``name``: ``setns`` switches only the calling
        thread, and what it creates (sockets, the TUN device, the gateway's threads) stays in that
        namespace."""
        out: dict[str, Any] = {}

        def enter() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.ns[name]}", "rb") as f:
                    if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns({self.ns[name]}) failed")
                out["value"] = fn()
            except BaseException as exc:  # handed to the caller
                out["error"] = exc

        t = threading.Thread(target=enter, name=f"netns-{name}", daemon=True)
        t.start()
        t.join(STEP_TIMEOUT)
        if t.is_alive():
            raise DemoError(f"{name}: setting up in its namespace took longer than {STEP_TIMEOUT:g} s")
        if "error" in out:
            raise out["error"]
        return out.get("value")


def _stream(nbytes: int) -> Any:
    """The bytes a transfer sends: pseudo-random chunks, each different, so reordering changes the hash."""
    seed = hashlib.sha256(b"espresso demo").digest()
    base = (seed * (_CHUNK // len(seed) + 1))[:_CHUNK]
    block = bytes(hashlib.shake_256(base).digest(_CHUNK))
    sent = 0
    i = 0
    while sent < nbytes:
        cut = (i * 7919) % _CHUNK
        chunk = (block[cut:] + block[:cut])[:nbytes - sent]
        yield chunk
        sent += len(chunk)
        i += 1


def tcp_transfer(lab: NetLab, src: str, dst: str, nbytes: int, half: threading.Event | None = None
                 ) -> tuple[str, str, int, float]:
    """Send ``nbytes`` over TCP from ``src``'s inner address to ``dst``'s, through both gateways.

    Returns (sha256 sent, sha256 received, bytes received, seconds from connect to the receiver's last byte).
    ``half`` is set once half the bytes are written (the demo rekeys then)."""
    src_ip, dst_ip = NETS[src][1], NETS[dst][1]

    def listen() -> socket.socket:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((dst_ip, TCP_PORT))
        ls.listen(1)
        ls.settimeout(TCP_TIMEOUT)
        return ls

    ls = lab.run_in(dst, listen)
    got: dict[str, Any] = {}

    def receive() -> None:
        h, n = hashlib.sha256(), 0
        try:
            conn, _ = ls.accept()
            with conn:
                conn.settimeout(TCP_TIMEOUT)
                while data := conn.recv(1 << 20):
                    h.update(data)
                    n += len(data)
                got["end"] = time.perf_counter()
                conn.sendall(b"done")
        except OSError as exc:
            got["error"] = exc
        finally:
            got["hash"], got["bytes"] = h.hexdigest(), n
            ls.close()

    rx = threading.Thread(target=receive, name="demo-tcp-rx", daemon=True)
    rx.start()
    try:
        conn = lab.run_in(src, lambda: socket.create_connection((dst_ip, TCP_PORT), TCP_TIMEOUT,
                                                                source_address=(src_ip, 0)))
        h = hashlib.sha256()
        t0 = time.perf_counter()
        with conn:
            conn.settimeout(TCP_TIMEOUT)
            sent = 0
            for chunk in _stream(nbytes):
                conn.sendall(chunk)
                h.update(chunk)
                sent += len(chunk)
                if half is not None and sent >= nbytes // 2:
                    half.set()
            conn.shutdown(socket.SHUT_WR)
            conn.recv(16)  # the receiver's "done": everything arrived (or it gave up)
    except OSError as exc:
        raise DemoError(f"TCP {src_ip} -> {dst_ip} through the tunnel failed: {exc}") from None
    finally:
        rx.join(TCP_TIMEOUT + 5)
        ls.close()
    if "error" in got:
        raise DemoError(f"TCP receiver at {dst_ip} failed: {got['error']}")
    return h.hexdigest(), got.get("hash", ""), got.get("bytes", 0), got.get("end", time.perf_counter()) - t0


_TOML = """
[daemon]
port = {port}
nat_port = {nat_port}
control_socket = "{sock}"

[pki]
store = "{store}"

[peers.{peer}]
local_addr = "127.0.0.1"
remote_addr = "127.0.0.1"
remote_port = {remote_port}
remote_nat_port = {remote_nat_port}
{auth}
ike_proposals = ["{ike}"]
encap = true

[peers.{peer}.children.lan]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["{esp}"]
"""

NETS = {"gw-a": ("10.10.1.0/24", "10.10.1.1"), "gw-b": ("10.10.2.0/24", "10.10.2.1")}


def _auth(args: argparse.Namespace, name: str, peer: str) -> str:
    """The peer's authentication keys: the enrolled certificate (IKEv2), or IKEv1 with the run's PSK."""
    if getattr(args, "ikev1", False):
        return (f'version = 1\nauth = "psk"\npsk = "{args.psk}"\nlocal_id = "{name}.demo"\n'
                f'remote_id = "{peer}.demo"')
    return f'certificate = "{name}"\nca_profiles = ["demo-ca"]\nremote_id = "{peer}.demo"'


def _write_private(path: Path, text: str) -> None:
    """The TOML holds the PSK under --ikev1: owner-only, like every key file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

_TOML_GATEWAY = """
[daemon]
addresses = ["{outer}"]
control_socket = "{sock}"

[pki]
store = "{store}"

[peers.{peer}]
local_addr = "{outer}"
remote_addr = "{peer_outer}"
{auth}
ike_proposals = ["{ike}"]
encap = true

[peers.{peer}.children.lan]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["{esp}"]

[gateway]
tun_name = "{tun}"
tun_addresses = ["{tun_addr}/32"]
offload = {offload}
"""


async def _start_loopback(work: Path, args: argparse.Namespace, stores: dict[str, Path],
                          daemons: dict[str, Any], received: dict[str, list[bytes]],
                          arrived: dict[str, asyncio.Event]) -> str:
    """Both daemons in this process on 127.0.0.1; inner packets reach ``received`` through on_packets."""
    from ike.aio import open_udp_socket
    from ike.config import parse_config
    from ike.daemon import Daemon

    socks = {n: (open_udp_socket("127.0.0.1", 0), open_udp_socket("127.0.0.1", 0)) for n in stores}
    ports = {n: (s[0].getsockname()[1], s[1].getsockname()[1]) for n, s in socks.items()}
    for name, peer in (("gw-a", "gw-b"), ("gw-b", "gw-a")):
        text = _TOML.format(port=ports[name][0], nat_port=ports[name][1], sock=work / name / "ike.sock",
                            store=stores[name], peer=peer, remote_port=ports[peer][0],
                            remote_nat_port=ports[peer][1], name=name, auth=_auth(args, name, peer),
                            ike=args.ike_proposal, esp=args.esp_proposal, local=NETS[name][0],
                            remote=NETS[peer][0])
        _write_private(work / name / "ike.toml", text)
        cfg = parse_config(text, base=work / name)

        def deliver(pk: list[bytes], ch: Any, n: str = name) -> None:
            received[n].extend(pk)
            arrived[n].set()

        daemons[name] = Daemon(cfg, on_packets=deliver)
        await daemons[name].start(sockets=list(socks[name]), control=True)
    return ", ".join(f"{n} on 127.0.0.1[{p[0]}] + NAT-T [{p[1]}]" for n, p in ports.items())


async def _start_gateways(work: Path, args: argparse.Namespace, stores: dict[str, Path],
                          daemons: dict[str, Any], lab: NetLab) -> str:
    """One daemon per namespace with its ``[gateway]``, built as ``python -m ike daemon`` builds it; the
    sockets and the TUN device are made in the namespace, the IKE side runs on this process's event loop."""
    from ike.aio import open_udp_socket
    from ike.config import parse_config
    from ike.daemon import Daemon, make_gateway

    said = []
    for name, peer in (("gw-a", "gw-b"), ("gw-b", "gw-a")):
        text = _TOML_GATEWAY.format(outer=OUTER[name], peer_outer=OUTER[peer], sock=work / name / "ike.sock",
                                    store=stores[name], peer=peer, name=name, auth=_auth(args, name, peer),
                                    ike=args.ike_proposal,
                                    esp=args.esp_proposal, local=NETS[name][0], remote=NETS[peer][0],
                                    tun=f"esp-{name}", tun_addr=NETS[name][1],
                                    offload=str(args.offload).lower())
        _write_private(work / name / "ike.toml", text)
        cfg = parse_config(text, base=work / name)
        gateway = make_gateway(cfg)

        def up(c: Any = cfg, g: Any = gateway) -> list[Any]:
            g.start()  # TUN device, NAT-T socket, data threads: in this namespace
            try:
                return [open_udp_socket(c.addresses[0], c.port), g.ike_socket]
            except BaseException:
                g.stop()
                raise

        socks = await asyncio.to_thread(lab.run_in, name, up)
        daemons[name] = Daemon(cfg, gateway=gateway)
        await daemons[name].start(sockets=socks, control=True)
        st = gateway.stats
        said.append(f"{name} in netns {lab.ns[name]} on {OUTER[name]}[500] + NAT-T [4500], gateway "
                    f"{gateway.tun.name if gateway.tun else '?'} (MTU {st.tun_mtu}, offloads: "
                    f"{', '.join(st.offloads) or 'none'})")
    return "\n      ".join(said)


async def _traffic_loopback(args: argparse.Namespace, daemons: dict[str, Any],
                            received: dict[str, list[bytes]], arrived: dict[str, asyncio.Event], first_spi: int,
                            result: DemoResult) -> None:
    half = args.packets // 2
    for src_name, dst_name, count in (("gw-a", "gw-b", args.packets), ("gw-b", "gw-a", args.packets)):
        d = Direction(f"{src_name} -> {dst_name}")
        src_ip, dst_ip = NETS[src_name][1], NETS[dst_name][1]
        sender, sink = daemons[src_name], received[dst_name]
        seq = 0
        busy = 0.0  # time in the tunnel only (encrypt, UDP, decrypt, deliver); packet making excluded
        while seq < count:
            if args.rekey and src_name == "gw-a" and seq >= half and not result.rekeyed:
                sender.rekey_child(first_spi)
                result.rekeyed = True
            n = min(WINDOW, count - seq)
            window = [_inner(src_ip, dst_ip, seq + i, args.size) for i in range(n)]
            sink.clear()
            arrived[dst_name].clear()
            t = time.perf_counter()
            sent = sender.send(window)
            deadline = t + 2.0
            while len(sink) < sent and time.perf_counter() < deadline:
                arrived[dst_name].clear()
                try:
                    await asyncio.wait_for(arrived[dst_name].wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            busy += time.perf_counter() - t
            got = list(sink)
            d.lost += n - len(got)
            d.altered += sum(1 for x, y in zip(window, got) if x != y)
            d.packets += len(got)
            d.bytes += sum(len(p) for p in got)
            seq += n
        d.seconds = busy
        result.directions.append(d)


async def _traffic_gateway(args: argparse.Namespace, daemons: dict[str, Any], lab: NetLab, first_spi: int,
                           result: DemoResult) -> None:
    """A TCP transfer each way between the inner addresses, through both TUN devices and gateways."""
    nbytes = args.megabytes << 20
    for src_name, dst_name in (("gw-a", "gw-b"), ("gw-b", "gw-a")):
        d = Direction(f"{src_name} -> {dst_name}")
        st = daemons[src_name].gateway.stats
        esp0 = st.esp_sent
        half = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(tcp_transfer, lab, src_name, dst_name, nbytes, half))
        while not job.done():  # the daemons run on this loop: keep it free while the bytes flow
            if args.rekey and src_name == "gw-a" and half.is_set() and not result.rekeyed:
                daemons[src_name].rekey_child(first_spi)
                result.rekeyed = True
            await asyncio.wait({job}, timeout=0.01)
        sent_hash, got_hash, got, d.seconds = job.result()
        d.bytes = got
        d.packets = st.esp_sent - esp0  # ESP packets the sender's gateway sent (TCP data; ACKs come back)
        d.lost = nbytes - got
        d.altered = int(sent_hash != got_hash)
        result.directions.append(d)


async def _run(work: Path, args: argparse.Namespace, out: TextIO, result: DemoResult) -> None:
    from .listing import format_sas

    ca, svc = _make_ca(work, out)
    daemons: dict[str, Any] = {}
    lab: NetLab | None = None
    try:
        _say(out, "[3/6] enrolling the two gateways")
        stores = {n: await asyncio.to_thread(_enroll, work, n, svc.url, out) for n in ("gw-a", "gw-b")}
        problem = "--path loopback" if args.path == "loopback" else gateway_path_problem()
        if problem is None:
            try:
                lab = await asyncio.to_thread(NetLab)
            except DemoError as exc:
                problem = f"no network namespaces here ({exc})"
        if problem is not None and args.path == "gateway":
            raise DemoError(f"--path gateway: {problem}")
        received: dict[str, list[bytes]] = {n: [] for n in stores}
        arrived: dict[str, asyncio.Event] = {n: asyncio.Event() for n in stores}
        if lab is not None:
            result.path = "gateway"
            where = await _start_gateways(work, args, stores, daemons, lab)
        else:
            result.path, result.fallback_reason = "loopback", problem or ""
            where = await _start_loopback(work, args, stores, daemons, received, arrived)
        _say(out, "[4/6] IKE daemons: " + where)

        a, b = daemons["gw-a"], daemons["gw-b"]
        t0 = time.perf_counter()
        try:
            up = await a.initiate_and_wait("gw-b", timeout=STEP_TIMEOUT)
        except Exception as exc:
            raise DemoError(f"the tunnel did not come up: {exc}") from None
        for _ in range(int(STEP_TIMEOUT / 0.01)):
            if any(c.state == "INSTALLED" for c in b.children.values()):
                break
            await asyncio.sleep(0.01)
        result.ike_ms = (time.perf_counter() - t0) * 1000
        (sa,) = a.list_sas()
        auth = "pre-shared key (IKEv1 main mode)" if args.ikev1 else f"{sa.get('auth', '')} certificates"
        _say(out, f"[5/6] tunnel up in {result.ike_ms:.0f} ms: IKEv{sa['version']} SA {sa['proposal']}, "
                  f"{auth}; CHILD_SA {up.get('child')} "
                  f"{up.get('spi_in')}_i {up.get('spi_out')}_o, ESP {args.esp_proposal} in UDP")
        if args.ikev1:
            _say(out, "      IKEv1: NAT-T floated the ISAKMP SA to the NAT-T ports (encap = true); the enrolled "
                      "certificates are not used (the IKEv1 core authenticates with PSKs so far)")
        else:
            fetched = sum(getattr(getattr(getattr(d.config.core.peers[0].validator, "validator", None),
                                          "crl_source", None), "fetches", 0) for d in daemons.values())
            _say(out, f"      each peer's certificate verified up to {ca.certificate.subject.rfc4514_string()}, "
                      f"revocation checked with the CA's CRL ({fetched} download(s) from {svc.url}/crl)")

        first_spi = next(iter(a.children))
        rekey = ", CHILD_SA rekey halfway" if args.rekey else ""
        if lab is not None:
            _say(out, f"[6/6] traffic: TCP, {args.megabytes} MiB each way between {NETS['gw-a'][1]} and "
                      f"{NETS['gw-b'][1]}, through both gateways (esp.gateway){rekey}")
            await _traffic_gateway(args, daemons, lab, first_spi, result)
        else:
            _say(out, f"[6/6] traffic: {args.packets} packets of {args.size} bytes each way, windows of "
                      f"{WINDOW}{rekey}; path: in-process data plane on loopback, not the gateway ({problem})")
            await _traffic_loopback(args, daemons, received, arrived, first_spi, result)
        if args.rekey:
            for _ in range(int(STEP_TIMEOUT / 0.01)):  # the old CHILD_SA is deleted after the rekey
                if len(a.children) == 1 and len(b.children) == 1:
                    break
                await asyncio.sleep(0.01)
        result.sas = {n: d.list_sas() for n, d in daemons.items()}
        for n in ("gw-a", "gw-b"):
            _say(out, f"\n--- {n}: list-sas ---\n" + format_sas(result.sas[n]))
        _say(out, "")
        for d in result.directions:
            if lab is not None:
                verdict = "SHA-256 match" if not (d.lost or d.altered) else \
                    f"{d.lost} bytes LOST" if d.lost else "SHA-256 MISMATCH"
                _say(out, f"{d.name}: {d.bytes} bytes over TCP in {d.seconds:.2f} s: {d.mbit_s:.1f} Mbit/s, "
                          f"{d.packets} ESP packets ({d.kpps:.1f} kpps), {verdict}")
            else:
                verdict = "all intact" if not (d.lost or d.altered) else f"{d.lost} LOST, {d.altered} ALTERED"
                _say(out, f"{d.name}: {d.packets} packets, {d.bytes} bytes in {d.seconds:.2f} s: "
                          f"{d.mbit_s:.1f} Mbit/s, {d.kpps:.1f} kpps, {verdict}")
        if lab is not None:
            result.gateway_stats = {n: {k: v for k, v in d.gateway.stats.as_dict().items() if k != "errors"}
                                    for n, d in daemons.items()}
            for n, st in result.gateway_stats.items():
                _say(out, f"{n} gateway: offloads {', '.join(st['offloads']) or 'none'}; "
                          f"{st['tun_read']} TUN reads, {st['esp_sent']} ESP sent ({st['gso_trains']} GSO "
                          f"trains), {st['esp_received']} ESP received ({st['gro_trains']} GRO trains), "
                          f"{st['tun_written']} TUN writes")
            result.ok = all(not (d.lost or d.altered) and d.bytes == args.megabytes << 20
                            for d in result.directions)
            if not result.ok:
                result.error = "traffic check failed: bytes lost or altered"
        else:
            result.ok = all(not (d.lost or d.altered) and d.packets == args.packets
                            for d in result.directions)
            if not result.ok:
                result.error = "traffic check failed: packets lost or altered"
        if result.ok and args.rekey and first_spi in a.children:
            result.ok, result.error = False, f"the CHILD_SA {first_spi:08x} was not replaced by the rekey"
        await a.stop(delete=True)
        await b.stop(delete=False)
        _say(out, "gw-a deleted the IKE_SA; daemons stopped")
    finally:
        for daemon in daemons.values():
            if daemon._stopped is None or not daemon._stopped.is_set():
                await daemon.stop(delete=False)
            elif daemon.gateway is not None:
                daemon.gateway.stop()
        svc.stop()
        if lab is not None:
            await asyncio.to_thread(lab.close)


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> DemoResult:
    """Run the whole demo; never raises for a failed step (the result says what failed)."""
    result = DemoResult(ok=False)
    _defaults(args)
    # absolute at once: the generated TOML names the stores, and a relative name would be resolved again
    # against the TOML's own directory
    work = Path(args.workdir).expanduser().absolute() if args.workdir else \
        Path(tempfile.mkdtemp(prefix="espresso-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    _say(out, f"espresso demo: CA + SCEP + IKEv{1 if args.ikev1 else 2} + ESP on loopback (work directory {work})")
    t0 = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(_run(work, args, out, result), args.timeout))
    except DemoError as exc:
        result.error = str(exc)
    except (asyncio.TimeoutError, TimeoutError):
        result.error = f"the demo did not finish within {args.timeout:g} s (--timeout)"
    except Exception as exc:  # report, do not trace back at the user
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.setup_seconds = time.perf_counter() - t0
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if result.ok:
        _say(out, f"demo OK in {result.setup_seconds:.1f} s")
    else:
        _say(out, f"demo FAILED: {result.error}")
    return result


MIN_SIZE, MAX_SIZE = 64, 1400


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packets", type=int, default=20000, help="packets each way, at least 1 (default 20000)")
    p.add_argument("--size", type=int, default=1000,
                   help=f"inner packet size in bytes, {MIN_SIZE}..{MAX_SIZE} (default 1000; the upper bound keeps "
                        "the ESP-in-UDP packet under a 1500-byte MTU)")
    p.add_argument("--ike-proposal", default=None,
                   help="IKE proposal, strongSwan syntax (default aes128gcm16-prfsha256-ecp256; with --ikev1 "
                        "aes128-sha256-modp2048)")
    p.add_argument("--esp-proposal", default=None,
                   help="ESP proposal, strongSwan syntax (default aes128gcm16; with --ikev1 aes128-sha256-modp2048, "
                        "the group being quick mode's PFS)")
    p.add_argument("--no-rekey", dest="rekey", action="store_false", help="skip the CHILD_SA rekey under traffic")
    p.add_argument("--ikev1", action="store_true",
                   help="run the demo over IKEv1 (version = 1: main mode with a pre-shared key, quick mode with "
                        "PFS, NAT-T, the CHILD_SA rekey as a new quick mode)")
    p.add_argument("--path", choices=("auto", "gateway", "loopback"), default="auto",
                   help="where the traffic goes: 'gateway' runs each daemon's [gateway] (TUN + esp.gateway) "
                        "in its own network namespace and sends TCP through them (root); 'loopback' hands "
                        "packets to the daemons' data planes in this process; 'auto' (default): gateway where "
                        "it can, else loopback, saying why")
    p.add_argument("--megabytes", type=int, default=128,
                   help="gateway path: MiB of TCP each way, 1..4096 (default 128); --packets/--size are the "
                        "loopback path's")
    p.add_argument("--no-offload", dest="offload", action="store_false",
                   help="gateway path: offload = false in the daemons' [gateway] (one packet per call)")
    p.add_argument("--workdir", help="keep everything in this new (or empty) directory, relative paths allowed "
                                     "(default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up (and say so) when the whole demo takes longer than this many seconds (default 300)")


def _defaults(args: argparse.Namespace) -> None:
    """What depends on --ikev1: the proposals' defaults and the run's pre-shared key."""
    ikev1 = args.ikev1 = getattr(args, "ikev1", False)
    if args.ike_proposal is None:
        args.ike_proposal = "aes128-sha256-modp2048" if ikev1 else "aes128gcm16-prfsha256-ecp256"
    if args.esp_proposal is None:
        args.esp_proposal = "aes128-sha256-modp2048" if ikev1 else "aes128gcm16"
    if ikev1:
        import secrets

        if not getattr(args, "psk", None):
            args.psk = secrets.token_hex(16)


def check_args(args: argparse.Namespace) -> str | None:
    """Everything that can be refused before the CA and enrollment steps run: the one-line reason, or None."""
    from ike.constants import ProtocolId
    from ike.errors import ConfigError
    from ike.proposal import parse_proposal

    if args.packets < 1:
        return "--packets must be >= 1"
    if not 1 <= args.megabytes <= 4096:
        return "--megabytes must be within 1..4096"
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        return f"--size must be within {MIN_SIZE}..{MAX_SIZE}"
    if not args.timeout > 0:
        return "--timeout must be > 0 seconds"
    _defaults(args)
    if args.ikev1:
        from ike.v1.profile import parse_v1_proposal
        for opt, text, esp in (("--ike-proposal", args.ike_proposal, False),
                               ("--esp-proposal", args.esp_proposal, True)):
            try:
                parse_v1_proposal(text, esp)
            except ValueError as exc:
                return f"{opt}: {exc}"
    for opt, text, proto in (("--ike-proposal", args.ike_proposal, ProtocolId.IKE),
                             ("--esp-proposal", args.esp_proposal, ProtocolId.ESP)):
        try:
            parse_proposal(text, proto)
            if proto == ProtocolId.ESP:
                from ike.core_config import ChildConfig
                ChildConfig("demo", (), (), esp_proposals=(text,))
        except ConfigError as exc:
            return f"{opt}: {exc}"
    if args.workdir:
        work = Path(args.workdir).expanduser().absolute()
        if work.exists():
            if not work.is_dir():
                return f"--workdir {work}: exists and is not a directory"
            if any(work.iterdir()):
                what = "a previous demo is there (remove it)" if (work / "ca").exists() else "it is not empty"
                return f"--workdir {work}: {what}; give a new or empty directory"
        else:
            try:
                work.mkdir(parents=True)
            except OSError as exc:
                return f"--workdir {work}: cannot create it: {exc.strerror or exc}"
        if not os.access(work, os.W_OK | os.X_OK):
            return f"--workdir {work}: not writable"
    return None


def run_from_args(args: argparse.Namespace) -> int:
    problem = check_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0 if run_demo(args).ok else 1
