"""``python -m ike demo``: the whole stack on loopback, without root, in a few seconds.

What it shows, step by step, and checks (a failed check is reported and the exit status is 1):

1. a CA is created (``pki.ca``, RSA so SCEP can carry keys) with its CRL and OCSP URLs on the CA service;
2. the CA service (``pki.service``: SCEP, CRL, OCSP) listens on 127.0.0.1;
3. two gateways enroll over SCEP exactly as a router does (``pki.store``: ca-profile, ``ca-certificate enroll``,
   ``generate-key-pair``, ``local-certificate enroll`` with the challenge password);
4. two IKE daemons (``ike.daemon``, the real core and the real ESP data plane) are configured from TOML that
   names those store entries, and gateway A initiates: certificate authentication, the peer's certificate
   checked against the CA including a CRL fetched from the CA service;
5. traffic goes through the negotiated ESP SAs both ways (ESP in UDP on the NAT-T sockets), in windows, each
   packet compared byte for byte with what was sent; halfway through A rekeys the CHILD_SA (make-before-break:
   no packet may be lost);
6. the SAs are printed as ``swanctl --list-sas`` would, with the throughput; A then deletes the IKE_SA.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import struct
import sys
import tempfile
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
certificate = "{name}"
ca_profiles = ["demo-ca"]
remote_id = "{peer}.demo"
ike_proposals = ["{ike}"]
encap = true

[peers.{peer}.children.lan]
local_ts = ["{local}"]
remote_ts = ["{remote}"]
esp_proposals = ["{esp}"]
"""

NETS = {"gw-a": ("10.10.1.0/24", "10.10.1.1"), "gw-b": ("10.10.2.0/24", "10.10.2.1")}


async def _run(work: Path, args: argparse.Namespace, out: TextIO, result: DemoResult) -> None:
    from ike.aio import open_udp_socket
    from ike.config import parse_config
    from ike.daemon import Daemon

    from .__main__ import format_sas

    ca, svc = _make_ca(work, out)
    daemons: dict[str, Daemon] = {}
    try:
        _say(out, "[3/6] enrolling the two gateways")
        stores = {n: await asyncio.to_thread(_enroll, work, n, svc.url, out) for n in ("gw-a", "gw-b")}
        socks = {n: (open_udp_socket("127.0.0.1", 0), open_udp_socket("127.0.0.1", 0)) for n in stores}
        ports = {n: (s[0].getsockname()[1], s[1].getsockname()[1]) for n, s in socks.items()}
        received: dict[str, list[bytes]] = {n: [] for n in stores}
        arrived: dict[str, asyncio.Event] = {n: asyncio.Event() for n in stores}
        for name, peer in (("gw-a", "gw-b"), ("gw-b", "gw-a")):
            text = _TOML.format(port=ports[name][0], nat_port=ports[name][1], sock=work / name / "ike.sock",
                                store=stores[name], peer=peer, remote_port=ports[peer][0], name=name,
                                ike=args.ike_proposal, esp=args.esp_proposal, local=NETS[name][0],
                                remote=NETS[peer][0])
            (work / name / "ike.toml").write_text(text)
            cfg = parse_config(text, base=work / name)

            def deliver(pk: list[bytes], ch: Any, n: str = name) -> None:
                received[n].extend(pk)
                arrived[n].set()

            daemons[name] = Daemon(cfg, on_packets=deliver)
            await daemons[name].start(sockets=list(socks[name]), control=True)
        _say(out, "[4/6] IKE daemons: " + ", ".join(
            f"{n} on 127.0.0.1[{p[0]}] + NAT-T [{p[1]}]" for n, p in ports.items()))

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
        _say(out, f"[5/6] tunnel up in {result.ike_ms:.0f} ms: IKE_SA {sa['proposal']}, "
                  f"{sa.get('auth', '')} certificates; CHILD_SA {up.get('child')} "
                  f"{up.get('spi_in')}_i {up.get('spi_out')}_o, ESP {args.esp_proposal} in UDP")
        fetched = sum(getattr(getattr(getattr(d.config.core.peers[0].validator, "validator", None),
                                      "crl_source", None), "fetches", 0) for d in daemons.values())
        _say(out, f"      each peer's certificate verified up to {ca.certificate.subject.rfc4514_string()}, "
                  f"revocation checked with the CA's CRL ({fetched} download(s) from {svc.url}/crl)")

        first_spi = next(iter(a.children))
        half = args.packets // 2
        plan = [("gw-a", "gw-b", args.packets), ("gw-b", "gw-a", args.packets)]
        _say(out, f"[6/6] traffic: {args.packets} packets of {args.size} bytes each way, windows of {WINDOW}"
                  + (", CHILD_SA rekey halfway" if args.rekey else ""))
        for src_name, dst_name, count in plan:
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
            verdict = "all intact" if not (d.lost or d.altered) else f"{d.lost} LOST, {d.altered} ALTERED"
            _say(out, f"{d.name}: {d.packets} packets, {d.bytes} bytes in {d.seconds:.2f} s: "
                      f"{d.mbit_s:.1f} Mbit/s, {d.kpps:.1f} kpps, {verdict}")
        result.ok = all(not (d.lost or d.altered) and d.packets == args.packets for d in result.directions)
        if not result.ok:
            result.error = "traffic check failed: packets lost or altered"
        elif args.rekey and first_spi in a.children:
            result.ok, result.error = False, f"the CHILD_SA {first_spi:08x} was not replaced by the rekey"
        await a.stop(delete=True)
        await b.stop(delete=False)
        _say(out, "gw-a deleted the IKE_SA; daemons stopped")
    finally:
        for daemon in daemons.values():
            if daemon._stopped is None or not daemon._stopped.is_set():
                await daemon.stop(delete=False)
        svc.stop()


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> DemoResult:
    """Run the whole demo; never raises for a failed step (the result says what failed)."""
    result = DemoResult(ok=False)
    # absolute at once: the generated TOML names the stores, and a relative name would be resolved again
    # against the TOML's own directory
    work = Path(args.workdir).expanduser().absolute() if args.workdir else \
        Path(tempfile.mkdtemp(prefix="espresso-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    _say(out, f"espresso demo: CA + SCEP + IKEv2 + ESP on loopback (work directory {work})")
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
    p.add_argument("--ike-proposal", default="aes128gcm16-prfsha256-ecp256",
                   help="IKE proposal, strongSwan syntax (default aes128gcm16-prfsha256-ecp256)")
    p.add_argument("--esp-proposal", default="aes128gcm16", help="ESP proposal, strongSwan syntax (default aes128gcm16)")
    p.add_argument("--no-rekey", dest="rekey", action="store_false", help="skip the CHILD_SA rekey under traffic")
    p.add_argument("--workdir", help="keep everything in this new (or empty) directory, relative paths allowed "
                                     "(default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up (and say so) when the whole demo takes longer than this many seconds (default 300)")


def check_args(args: argparse.Namespace) -> str | None:
    """Everything that can be refused before the CA and enrollment steps run: the one-line reason, or None."""
    from ike.constants import ProtocolId
    from ike.errors import ConfigError
    from ike.proposal import parse_proposal

    if args.packets < 1:
        return "--packets must be >= 1"
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        return f"--size must be within {MIN_SIZE}..{MAX_SIZE}"
    if not args.timeout > 0:
        return "--timeout must be > 0 seconds"
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
