"""ESP onto the wire: a capture sent to a device under test through ESP SAs, paced like tcpreplay.

Why: people who benchmark or test IPsec devices replay captures the way tcpreplay and TRex replay plain traffic,
but an IPsec peer accepts only packets of an SA it negotiated, with sequence numbers that move on. So plaintext
packets are encrypted on the way out (every loop again, so sequence numbers continue, across 2**32 with ESN) and
ESP packets already in the capture go out as they are.

The path is the gateway's: packets are encrypted in batches by the compiled core into one arena, and
``esp.gateway._io.send`` (sendmmsg, UDP GSO trains where the kernel takes them) reads each packet's outer header
for its destination and sends what follows it, on a UDP socket (RFC 3948, port 4500) or a raw IP protocol 50
socket. Pacing is a schedule of due times (recorded, a multiple of it, packets or bits per second), so a late
wake-up is caught up by the next send and the rate over seconds is the asked one.

Bad input is a counted skip (a record without IP, a packet no SA selector takes, an IKE or keepalive datagram)
or one :class:`SendError` before anything is sent (no usable packet, unreachable target, unusable SA).
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esp.batch import PacketBatch, Verdict
from esp.errors import EspError
from esp.pcap.classify import classify_esp, first_match
from esp.pcap.formats import CaptureError
from esp.pcap.layers import parse_l3
from esp.pcap.output import ESP_OVERHEAD_MAX, NAT_T_PORT, SaStats
from esp.pcap.reader import CaptureReader
from esp.pcap.sa_files import KeyFileError, SaEntry, Selector, parse_toml
from esp.pcap.sas import OutboundSa, outbound_sas

__all__ = ["Pacing", "SendError", "SendSummary", "daemon_child_sas", "send_capture"]

#: Packets encrypted and handed to the kernel per call at top speed (the sendmmsg path's batch).
BATCH = 1024
#: Longest single sleep of the pacer, so a long gap in a recorded capture still notices a stop request.
MAX_SLEEP = 0.05
#: Byte size of a control-socket reply the daemon query accepts.
MAX_REPLY = 1 << 20
#: Socket send buffer asked for (the kernel caps it at net.core.wmem_max).
SNDBUF = 4 << 20

_PASS = -2  # kind of a captured ESP packet, sent as it is
_SKIP = -1


class SendError(EspError):
    """The capture cannot be sent at all (the message says why); nothing was sent."""


@dataclass(frozen=True)
class Pacing:
    """When packets leave. ``mode``: ``recorded`` (the capture's timestamps divided by ``value``, tcpreplay's
    ``--multiplier``), ``pps`` (``value`` packets per second), ``mbps`` (``value`` Mbit/s of ESP datagrams,
    outer IP header included) or ``top`` (as fast as the machine goes)."""

    mode: str = "recorded"
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("recorded", "pps", "mbps", "top"):
            raise ValueError(f"pacing {self.mode!r} is not recorded, pps, mbps or top")
        if self.mode != "top" and not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"{self.mode} needs a positive finite value, not {self.value!r}")

    def __str__(self) -> str:
        return {"recorded": f"recorded x{self.value:g}", "pps": f"{self.value:g} pps",
                "mbps": f"{self.value:g} Mbit/s", "top": "top speed"}[self.mode]


@dataclass
class SendSummary:
    """What went out: packets and bytes (ESP datagrams with their outer IP header), rate, per-SA counts, skips."""

    target: str = ""
    encap: str = "udp"
    pacing: str = ""
    records: int = 0
    loops: int = 0
    sent: int = 0
    bytes: int = 0
    seconds: float = 0.0
    passed_through: int = 0   # captured ESP packets sent as they are, per loop summed
    send_dropped: int = 0     # refused by the kernel (unreachable, no buffer after retries, wrong family)
    skipped: dict[str, int] = field(default_factory=dict)  # per capture record, once: non_ip, no_sa, ike, ...
    per_sa: list[SaStats] = field(default_factory=list)
    offloads: list[str] = field(default_factory=list)
    gso_trains: int = 0
    gso_datagrams: int = 0
    source: str = ""
    stopped: str = ""         # why sending ended before the loops were done (besides --duration/--limit)
    warnings: list[str] = field(default_factory=list)

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        return self.send_dropped + sum(st.failures for st in self.per_sa)

    @property
    def exit_code(self) -> int:
        """0: every packet meant to go out went; 1: some were refused or could not be encrypted."""
        return 1 if self.failed or self.stopped else 0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["per_sa"] = [dataclasses.asdict(s) for s in self.per_sa]
        d["pps"], d["mbps"] = round(self.pps, 1), round(self.mbps, 3)
        return d

    def format(self) -> str:
        lines = [(f"sent {self.sent} ESP packets ({self.bytes} bytes) in {self.seconds:.3f} s: {self.pps:.0f} pps, "
                  f"{self.mbps:.2f} Mbit/s to {self.target} ({self.encap}; {self.pacing}; {self.loops} loop(s) of "
                  f"{self.records} records)")]
        if self.source:
            lines.append(f"  from {self.source}" + (f"; offloads: {', '.join(self.offloads)}, {self.gso_trains} "
                                                    f"GSO trains of {self.gso_datagrams} datagrams"
                                                    if self.offloads else ""))
        for st in self.per_sa:
            bad = ", ".join(f"{k} {v}" for k, v in sorted(st.verdicts.items()) if k != "OK")
            lines.append(f"  {st.label} ({st.suite}): {st.packets} packets, {st.bytes} plaintext bytes"
                         + (f"; not sent: {bad}" if bad else ""))
        if self.passed_through:
            lines.append(f"  captured ESP sent as it is: {self.passed_through}")
        if self.send_dropped:
            lines.append(f"  refused by the kernel: {self.send_dropped}")
        if self.skipped:
            lines.append("  skipped records: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                           for k, v in sorted(self.skipped.items())))
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)


# -- the capture, loaded once ----------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """The capture's sendable packets in record order: plaintext IP packets (``kind`` the SA index) in ``inner``,
    and every packet's slot in ``wire``, where encryption writes and captured ESP already sits."""

    inner: np.ndarray
    inner_off: np.ndarray
    inner_len: np.ndarray
    wire: np.ndarray
    wire_off: np.ndarray
    wire_cap: np.ndarray
    wire_len: np.ndarray
    kind: np.ndarray   # int32: SA index, or _PASS
    ts: np.ndarray     # float64 seconds
    records: int
    skipped: dict[str, int]


def _outer_header(family: int, udp: bool, dst: bytes, payload_len: int) -> bytes:
    """The outer header ``esp.gateway._io.send`` reads a destination from (it sends only what follows)."""
    proto = 17 if udp else 50
    u = (NAT_T_PORT.to_bytes(2, "big") * 2 + (8 + payload_len).to_bytes(2, "big") + b"\0\0") if udp else b""
    if family == 4:
        total = 20 + len(u) + payload_len
        return bytes((0x45, 0)) + total.to_bytes(2, "big") + b"\0\0\x40\0\x40" + bytes((proto,)) + b"\0\0" \
            + b"\0" * 4 + dst + u
    return b"\x60\0\0\0" + (len(u) + payload_len).to_bytes(2, "big") + bytes((proto, 64)) + b"\0" * 16 + dst + u


def _load(path: str | os.PathLike[str], selectors: Sequence[Selector], encap_ports: Sequence[int], udp: bool,
          chunk_records: int) -> _Loaded:
    """Each record: captured ESP (:func:`classify_esp`, as ``pcap decrypt`` tells it), a plaintext IP packet
    for the first SA whose selector takes it (:func:`first_match`, as ``pcap encrypt`` maps it), or a counted
    skip."""
    try:
        reader = CaptureReader(path, chunk_records=chunk_records)
    except CaptureError as exc:
        raise SendError(str(exc)) from None
    skipped: dict[str, int] = {}

    def skip(name: str, n: int) -> None:
        if n:
            skipped[name] = skipped.get(name, 0) + n

    inner_parts: list[np.ndarray] = []
    pass_parts: list[bytes] = []
    kinds: list[np.ndarray] = []
    tss: list[np.ndarray] = []
    records = 0
    try:
        linktypes = None
        for c in reader.chunks():
            if linktypes is None or len(linktypes) != len(reader.interfaces):
                linktypes = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
                res = np.asarray([i.tsresol for i in reader.interfaces], dtype=np.float64)
                tsoff = np.asarray([i.tsoffset for i in reader.interfaces], dtype=np.float64)
            n = c.count
            records += n
            L = parse_l3(c, linktypes)
            E = classify_esp(c, L, encap_ports)
            ip = L.version > 0
            skip("unknown_link", int(L.unknown_link.sum()))
            skip("non_ip", int((~ip & ~L.unknown_link).sum()))
            skip("truncated", int((ip & (L.cut | E.cut)).sum()))
            skip("ike_or_keepalive", int((E.ike | E.keepalive).sum()))
            skip("esp_fragment", int(E.frag.sum()))
            plain = ip & ~L.cut & ~E.cut & ~E.esp & ~E.ike & ~E.keepalive & ~E.frag
            kind = first_match(c, L, selectors, among=plain)
            skip("no_sa", int((plain & (kind < 0)).sum()))
            kind[E.esp] = _PASS
            ip_hl = L.l4 - L.l3
            keep = np.flatnonzero(kind != _SKIP)
            ts = (c.ts.astype(np.float64) / res[c.iface]) + tsoff[c.iface]
            for i in keep.tolist():
                start = int(c.offsets[i] + L.l3[i])
                if kind[i] == _PASS:
                    esp_at = start + int(ip_hl[i]) + (8 if E.udp[i] else 0)
                    end = start + int(L.ip_len[i])
                    v = int(L.version[i])
                    d = start + (16 if v == 4 else 24)
                    dst = c.data[d:d + (4 if v == 4 else 16)].tobytes()
                    body = c.data[esp_at:end].tobytes()
                    pass_parts.append(_outer_header(v, udp, dst, len(body)) + body)
                    inner_parts.append(np.zeros(0, np.uint8))
                else:
                    pass_parts.append(b"")
                    inner_parts.append(c.data[start:start + int(L.ip_len[i])].copy())
            kinds.append(kind[keep])
            tss.append(ts[keep])
    except CaptureError as exc:
        if not kinds:
            raise SendError(str(exc)) from None
        skip("damaged_tail", 1)
    finally:
        reader.close()
    kind = np.concatenate(kinds) if kinds else np.zeros(0, np.int32)
    n = len(kind)
    inner_len = np.fromiter((len(p) for p in inner_parts), dtype=np.int32, count=n)
    inner_off = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(inner_len[:-1], out=inner_off[1:])
    inner = np.concatenate(inner_parts) if n else np.zeros(0, np.uint8)
    wire_len = np.fromiter((len(p) for p in pass_parts), dtype=np.int32, count=n)
    wire_cap = np.where(kind == _PASS, wire_len, inner_len + ESP_OVERHEAD_MAX).astype(np.int32)
    wire_off = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(wire_cap[:-1].astype(np.int64), out=wire_off[1:])
    wire = np.zeros(int(wire_cap.sum()) + 1, np.uint8)
    for i in np.flatnonzero(kind == _PASS).tolist():
        wire[wire_off[i]:wire_off[i] + wire_len[i]] = np.frombuffer(pass_parts[i], np.uint8)
    return _Loaded(np.ascontiguousarray(inner, dtype=np.uint8), inner_off, inner_len, wire, wire_off, wire_cap,
                   wire_len, kind, np.concatenate(tss) if tss else np.zeros(0), records, skipped)


# -- where the SAs come from ------------------------------------------------------------------------------------


def daemon_child_sas(control_socket: str | os.PathLike[str], child: str | None = None,
                     timeout: float = 10.0) -> list[SaEntry]:
    """The outbound SAs of the CHILD_SAs a running ``python -m ike daemon`` negotiated (its ``child-keys``
    control command), so the traffic goes out on keys a real peer holds. ``child``: a name or SPI in hex.

    The control protocol (one JSON object per line) is spoken here directly: esp does not import ike."""
    req: dict[str, Any] = {"cmd": "child-keys"}
    if child is not None:
        req["child"] = child
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    buf = b""
    try:
        s.connect(os.fspath(control_socket))
        s.sendall(json.dumps(req).encode() + b"\n")
        while not buf.endswith(b"\n") and len(buf) <= MAX_REPLY:
            got = s.recv(65536)
            if not got:
                break
            buf += got
    except (OSError, TimeoutError) as exc:
        raise SendError(f"cannot query the IKE daemon at {control_socket}: "
                        f"{getattr(exc, 'strerror', None) or exc or 'timed out'}") from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except (json.JSONDecodeError, RecursionError):
        raise SendError(f"the IKE daemon at {control_socket} did not answer with JSON") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error") if isinstance(reply, dict) else None
        raise SendError(f"the IKE daemon at {control_socket}: {err or 'refused the request'}")
    text = reply.get("sa_toml")
    if not isinstance(text, str):
        raise SendError(f"the IKE daemon at {control_socket} has no child-keys command (an older version?)")
    if not reply.get("children"):
        raise SendError(f"the IKE daemon at {control_socket} has no installed CHILD_SA"
                        + (f" {child!r}" if child else "") + " to send on")
    try:
        entries = parse_toml(text, f"daemon {control_socket}").entries
    except KeyFileError as exc:
        raise SendError(f"the IKE daemon at {control_socket} sent SAs that do not parse: {exc}") from None
    return entries


# -- sending ------------------------------------------------------------------------------------------------------


def _family_of(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def _open_socket(family: int, udp: bool, source: str | None, sport: int | None,
                 warnings: list[str]) -> tuple[socket.socket, str]:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        sock = socket.socket(af, socket.SOCK_DGRAM, 0) if udp else socket.socket(af, socket.SOCK_RAW, 50)
    except PermissionError:
        raise SendError("raw ESP (IP protocol 50) needs root or CAP_NET_RAW; use --encap udp") from None
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        except OSError:
            pass
        host = source or ("0.0.0.0" if family == 4 else "::")
        ports = [sport] if sport is not None else ([NAT_T_PORT, 0] if udp else [0])
        for port in ports:
            try:
                sock.bind((host, port) if udp else (host, 0))
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and port == NAT_T_PORT and sport is None:
                    warnings.append(f"UDP port {NAT_T_PORT} is in use here (an IKE daemon?): sending from another "
                                    f"port; a peer may see it as a NAT mapping change")
                    continue
                if exc.errno == errno.EADDRNOTAVAIL and source is not None:
                    raise SendError(f"source address {source} is not an address of this host") from None
                raise SendError(f"cannot bind {host} port {port}: {exc.strerror or exc}") from None
        name = sock.getsockname()
    except BaseException:
        sock.close()
        raise
    return sock, (f"{name[0]} port {name[1]}" if udp else f"{name[0]} (raw ESP)")


def _check_reachable(family: int, dst: bytes, port: int) -> None:
    """A connect() on a scratch UDP socket asks the routing table: no route is one clear error before sending."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    addr = socket.inet_ntop(af, dst)
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        try:
            s.connect((addr, port))
        except OSError as exc:
            raise SendError(f"cannot reach {addr}: {exc.strerror or exc}") from None


def send_capture(path: str | os.PathLike[str], sas: Sequence[SaEntry], *, encap: str = "udp",
                 target: str | None = None, port: int | None = None, source: str | None = None,
                 sport: int | None = None, pacing: Pacing = Pacing(), loops: int = 1,
                 duration: float | None = None, limit: int | None = None, first_seq: int | None = None,
                 mode: str | None = None, backend: str | None = None, gso: bool = True,
                 chunk_records: int = 65536, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> SendSummary:
    """Send the capture at ``path``: plaintext IP packets through the first SA whose selector takes them,
    captured ESP as it is, ``loops`` times (0: until ``duration`` or ``limit``), paced by ``pacing``.

    ``encap``: ``udp`` (ESP in UDP, RFC 3948, to ``port``, default the SA's or 4500) or ``esp`` (raw IP protocol
    50, needs root). ``target`` replaces the outer destination (default: each SA's peer, the captured one for ESP).
    Sequence numbers start after each SA's ``initial_seq`` (or at ``first_seq``) and continue across loops."""
    if encap not in ("udp", "esp"):
        raise ValueError("encap is udp or esp")
    if loops < 0:
        raise ValueError("loops must be >= 0 (0: until --duration or --limit)")
    if loops == 0 and duration is None and limit is None:
        raise ValueError("endless looping (loops 0) needs a duration or a limit")
    udp = encap == "udp"
    summary = SendSummary(encap="ESP in UDP" if udp else "raw ESP", pacing=str(pacing))
    # ESP in UDP from the SA's port (4500 if it names none) to --port or the SA's; raw ESP has no ports.
    entries = [dataclasses.replace(e, encap=((e.encap or (NAT_T_PORT, NAT_T_PORT))[0],
                                             port or (e.encap or (NAT_T_PORT, NAT_T_PORT))[1]) if udp else None)
               for e in sas]
    try:
        plan = outbound_sas(entries, mode=mode, first_seq=first_seq, backend=backend)
    except (ValueError, EspError) as exc:
        raise SendError(str(exc)) from None
    summary.per_sa = [o.stats for o in plan]
    encap_ports = sorted({NAT_T_PORT} | {p for e in sas if e.encap for p in e.encap})

    cap = _load(path, [o.selector for o in plan], encap_ports, udp, chunk_records)
    summary.records = cap.records
    summary.skipped = cap.skipped
    n = len(cap.kind)
    if n == 0:
        why = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(cap.skipped.items())) or "empty"
        raise SendError(f"nothing to send in {path}: no packet is captured ESP or taken by an SA's selector "
                        f"({cap.records} records: {why})")
    if (cap.kind == _PASS).any() and loops != 1:
        summary.warnings.append("captured ESP goes out as it is, with its recorded sequence numbers: looped, a "
                                "receiver's anti-replay check drops the repeats")

    # The wire slots: encrypted packets are written into them per loop; captured ESP is there already.
    wire = PacketBatch(cap.wire, cap.wire_off, cap.wire_len.copy(), cap.wire_cap)
    inner = PacketBatch(cap.inner, cap.inner_off, cap.inner_len, cap.inner_len)
    by_sa = [np.flatnonzero(cap.kind == k).astype(np.int32) for k in range(len(plan))]
    passed = np.flatnonzero(cap.kind == _PASS).astype(np.int32)

    # Where to: the first packet's outer header decides the family (and with a target, every packet's).
    first_dst = _first_destination(plan, cap, wire, udp)
    family = _family_of(target) if target else first_dst[0]
    tgt = ipaddress.ip_address(target).packed if target else None
    _check_reachable(family, tgt or first_dst[1], port or NAT_T_PORT)
    if source is None:
        srcs = {str(o.entry.src) for o in plan if o.entry.src.is_host and o.entry.effective_mode == "tunnel"}
        local = srcs.pop() if len(srcs) == 1 else None
        if local is not None and _family_of(local) == family and _is_local(local, family):
            source = local
    sock, summary.source = _open_socket(family, udp, source, sport, summary.warnings)
    summary.target = (f"{target or socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, first_dst[1])}"
                      + (f" port {port or _dport(plan) or NAT_T_PORT}" if udp else ""))
    from esp.gateway import _io  # late: the compiled I/O module is needed only to send

    ctr = np.zeros(_io.COUNTERS, np.int64)
    use_gso = gso and udp
    if use_gso:
        summary.offloads.append("udp_gso")

    span = float(cap.ts[-1] - cap.ts[0]) if n > 1 else 0.0
    loop_len = span + (span / (n - 1) if n > 1 else 0.0)  # the next loop starts one mean gap after the last packet
    rel = cap.ts - cap.ts[0]
    batch = BATCH if pacing.mode == "top" else max(1, min(BATCH, 256))
    bits_due = 0.0
    sent_total = 0
    t0 = clock()
    t_end = t0
    deadline = t0 + duration if duration is not None else math.inf
    stop = ""
    loop = 0
    g = 0  # packets scheduled so far, over all loops
    try:
        while (loops == 0 or loop < loops) and not stop and (limit is None or g < limit):
            summary.loops = loop + 1
            for a in range(0, n, batch):
                b = min(n, a + batch)
                if limit is not None and g >= limit:
                    stop = "limit"
                    break
                if limit is not None:
                    b = min(b, a + (limit - g))
                ok = _encrypt_range(plan, by_sa, passed, a, b, inner, wire, summary)
                if ok is None:  # an SA ran out of sequence numbers
                    stop = summary.stopped
                    ok = np.zeros(0, np.int32)
                if tgt is not None or port is not None:
                    _retarget(wire, ok, tgt, port if udp else None)
                lens = wire.lengths[ok].astype(np.int64)
                if pacing.mode == "recorded":
                    due = (rel[ok] + loop * loop_len) / pacing.value
                elif pacing.mode == "pps":
                    due = (g + np.arange(len(ok))) / pacing.value
                elif pacing.mode == "mbps":
                    before = np.cumsum(lens) - lens
                    due = (bits_due + before * 8.0) / (pacing.value * 1e6)
                    bits_due += float(lens.sum()) * 8.0
                else:
                    due = None
                g += b - a
                done = 0
                while done < len(ok):
                    now = clock()
                    if now >= deadline:
                        stop = "duration"
                        break
                    if due is None:
                        upto = len(ok)
                    else:
                        upto = int(np.searchsorted(due, now - t0, side="right"))
                        if upto <= done:
                            sleep(min(MAX_SLEEP, float(due[done]) - (now - t0), max(0.0, deadline - now)))
                            continue
                    sel = ok[done:upto]
                    trains, dgrams = int(ctr[0]), int(ctr[1])
                    s, dropped = _io.send(sock.fileno(), family, udp, wire.buf, wire.offsets, wire.lengths, sel,
                                          use_gso, ctr)
                    if s < 0:
                        raise SendError(f"sending failed: {os.strerror(-s)}")
                    t_end = clock()
                    summary.gso_trains += int(ctr[0]) - trains
                    summary.gso_datagrams += int(ctr[1]) - dgrams
                    if ctr[2]:  # the kernel refused a UDP_SEGMENT train: one datagram per message from now on
                        use_gso = False
                        ctr[2] = 0
                        summary.offloads.remove("udp_gso")
                        summary.warnings.append("the kernel refused UDP GSO on this path; sent datagram by datagram")
                    summary.send_dropped += int(dropped)
                    _account_sent(plan, cap.kind, cap.inner_len, sel)
                    summary.passed_through += int((cap.kind[sel] == _PASS).sum())
                    if s == len(sel):
                        summary.bytes += int(lens[done:upto].sum())
                    else:
                        summary.bytes += int(lens[done:upto].sum() * s // max(1, len(sel)))
                    sent_total += int(s)
                    done = upto
                if stop:
                    break
            loop += 1
    except KeyboardInterrupt:
        summary.stopped = "interrupted"
    finally:
        sock.close()
    summary.sent = sent_total
    summary.seconds = max(t_end - t0, 1e-9) if sent_total else 0.0
    return summary


def _dport(plan: list[OutboundSa]) -> int | None:
    for o in plan:
        if o.entry.encap is not None:
            return o.entry.encap[1]
    return None


def _is_local(addr: str, family: int) -> bool:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
            return True
        except OSError:
            return False


def _first_destination(plan: list[OutboundSa], cap: _Loaded, wire: PacketBatch,
                       udp: bool) -> tuple[int, bytes]:
    """(family, address) of the first packet's outer destination: the SA's peer, or the captured ESP's."""
    k = int(cap.kind[0])
    if k == _PASS:
        off = int(wire.offsets[0])
        v = int(wire.buf[off]) >> 4
        return v, wire.buf[off + (16 if v == 4 else 24):off + (20 if v == 4 else 40)].tobytes()
    e = plan[k].entry
    if e.effective_mode == "tunnel" and e.dst.is_host:
        a = ipaddress.ip_address(e.dst.address)
        return a.version, a.packed
    off = int(cap.inner_off[0])  # transport: the packet's own destination
    v = int(cap.inner[off]) >> 4
    return v, cap.inner[off + (16 if v == 4 else 24):off + (20 if v == 4 else 40)].tobytes()


def _encrypt_range(plan: list[OutboundSa], by_sa: list[np.ndarray], passed: np.ndarray, a: int, b: int,
                   inner: PacketBatch, wire: PacketBatch, summary: SendSummary) -> np.ndarray | None:
    """Encrypt the plaintext packets of slots [a, b) into their wire slots (the SAs' sequence numbers move on);
    the slots to send, in record order. None when an SA has run out of sequence numbers (summary.stopped)."""
    parts = []
    exhausted = False
    for o, idx in zip(plan, by_sa):
        sa, st = o.sa, o.stats
        sel = idx[np.searchsorted(idx, a):np.searchsorted(idx, b)]
        if not len(sel):
            continue
        sa.encrypt_batch(inner, wire, sel)
        status = wire.status[sel]
        good = status == Verdict.OK
        counts = np.bincount(status, minlength=len(Verdict)).tolist()
        for v, c in enumerate(counts):
            if c and v != Verdict.OK:  # the packets that go out are counted once sent (_account_sent)
                name = Verdict(v).name
                st.verdicts[name] = st.verdicts.get(name, 0) + c
        parts.append(sel[good])
        if counts[Verdict.SEQ_EXHAUSTED] or counts[Verdict.EXPIRED]:
            exhausted = True
            summary.stopped = (f"{st.label}: sequence numbers exhausted (an SA without ESN stops at 2**32 - 1; "
                               f"rekey it, or use ESN)" if counts[Verdict.SEQ_EXHAUSTED]
                               else f"{st.label}: lifetime expired")
    parts.append(passed[np.searchsorted(passed, a):np.searchsorted(passed, b)])
    ok = np.sort(np.concatenate(parts)).astype(np.int32) if parts else np.zeros(0, np.int32)
    return None if exhausted and not len(ok) else ok


def _account_sent(plan: list[OutboundSa], kind: np.ndarray, inner_len: np.ndarray, sel: np.ndarray) -> None:
    """Per-SA packets and plaintext bytes of slots handed to the kernel (what it refused is send_dropped)."""
    k = kind[sel]
    mine = k >= 0
    if not mine.any():
        return
    ks = k[mine]
    pk = np.bincount(ks, minlength=len(plan))
    by = np.bincount(ks, weights=inner_len[sel[mine]], minlength=len(plan))
    for o, n, b in zip(plan, pk.tolist(), by.tolist()):
        st = o.stats
        if n:
            st.packets += n
            st.bytes += int(b)
            st.verdicts["OK"] = st.packets


def _retarget(wire: PacketBatch, sel: np.ndarray, dst: bytes | None, port: int | None) -> None:
    """Point the outer headers of ``sel`` at ``dst`` (and UDP ``port``): only the sending reads them."""
    if not len(sel):
        return
    buf = wire.buf
    off = wire.offsets[sel]
    v4 = (buf[off] >> 4) == 4
    hl = np.where(v4, (buf[off] & 15).astype(np.int64) * 4, 40)
    if dst is not None:
        at = np.where(v4, 16, 24)[v4 if len(dst) == 4 else ~v4]
        o = off[v4 if len(dst) == 4 else ~v4] + at
        buf[o[:, None] + np.arange(len(dst))] = np.frombuffer(dst, np.uint8)
    if port is not None:
        o = off + hl + 2
        buf[o] = port >> 8
        buf[o + 1] = port & 0xFF
