"""Static configuration (no IKE): a JSON file of policies and SAs, as a router's manual SA configuration, and
``python -m esp gateway`` running a gateway from it (SIGHUP reloads, make-before-break)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from esp._document import DocumentTooDeep, parse_document
from esp.dataplane import Dataplane
from esp.secret_file import SecretFileError, check_secret_file
from esp.sa import Direction, Lifetime, Sa, SaParams, UdpEncap
from esp.spd import Policy, Selector

from .runtime import Gateway, GatewayConfig, GatewayError
from .stats import GatewayStats

__all__ = ["apply_static", "load_static", "run_static"]


def load_static(path: str | os.PathLike) -> tuple[GatewayConfig, list[Policy], list[tuple[Sa, str | None]]]:
    """Read a static gateway configuration. The file holds keys, so it must not be readable by others.

    ``{"gateway": {GatewayConfig fields}, "policies": [{"name", "src", "dst", "proto", "sport", "dport",
    "action"}], "sas": [{"policy", "spi", "direction", "suite", "enc_key" (hex), "integ_key" (hex), "src",
    "dst", "encap": [sport, dport] or null, "replay_window", "esn"}]}``
    """
    p = Path(path)
    try:
        check_secret_file(p)
    except SecretFileError as exc:
        raise GatewayError(str(exc)) from None
    try:
        doc = parse_document(json.loads, p.read_text())
    except json.JSONDecodeError as exc:
        raise GatewayError(f"{p}: not valid JSON: {exc}") from None
    except DocumentTooDeep as exc:
        raise GatewayError(f"{p}: not a static configuration: {exc}") from None
    try:
        g = doc["gateway"]
        cfg = GatewayConfig(**g)
        pols = [Policy(d["name"], Selector(d.get("src"), d.get("dst"), d.get("proto", 0), d.get("sport"),
                                           d.get("dport")), d.get("action", "protect"))
                for d in doc.get("policies", [])]
        sas = []
        for d in doc.get("sas", []):
            enc = d.get("encap", [cfg.nat_port, cfg.nat_port])
            params = SaParams(spi=int(d["spi"]), direction=Direction(d["direction"]), suite=d["suite"],
                              enc_key=bytes.fromhex(d["enc_key"]), integ_key=bytes.fromhex(d.get("integ_key", "")),
                              src=d.get("src"), dst=d.get("dst"), encap=UdpEncap(*enc) if enc else None,
                              replay_window=int(d.get("replay_window", 64)), esn=bool(d.get("esn", False)),
                              lifetime=Lifetime(**d.get("lifetime", {})))
            sas.append((Sa(params), d.get("policy")))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # a value of the wrong type
        raise GatewayError(f"{p}: bad static configuration: {type(exc).__name__}: {exc}") from None
    return cfg, pols, sas


def apply_static(dp: Dataplane, policies: list[Policy], sas: list[tuple[Sa, str | None]]) -> tuple[int, int]:
    """Make the data plane's policies and SAs what a (re)loaded static configuration says.

    New SAs are installed before old ones go (make-before-break): an SPI added to the file starts working
    while the SPIs it replaces keep working until a later reload drops them, which is how two routers'
    static keys are rolled over without loss. An SA is identified by (direction, SPI); changing the keys of
    an SPI in place is refused (a new key needs a new SPI, RFC 4301). Returns (installed, removed).
    """
    have = {p.name: p for p in dp.spd.policies}
    for i, pol in enumerate(policies):
        if pol.name not in have:
            dp.add_policy(pol, min(i, len(dp.spd.policies)))
        elif have[pol.name] != pol:
            dp.replace_policy(pol)
    snap = dp.sad.snapshot
    current = {("in", spi): e for spi, e in snap.inbound_by_spi.items()}
    current.update({("out", spi): e for spi, e in snap.outbound_by_spi.items()})
    wanted = {}
    for sa, pol_name in sas:
        key = (sa.params.direction.value, sa.params.spi)
        wanted[key] = (sa, pol_name)
    installed = removed = 0
    for key, (sa, pol_name) in wanted.items():
        old = current.get(key)
        if old is None:
            dp.install_sa(sa, pol_name)
            installed += 1
        elif old.sa.params != sa.params:
            raise GatewayError(f"SA {key[0]} SPI {key[1]:#x} changed in place: give new keys a new SPI")
    for key in current:
        if key not in wanted:
            dp.remove_sa(key[1], key[0])
            removed += 1
    names = {p.name for p in policies}
    for name in list(have):
        if name not in names:
            dp.remove_policy(name)
    return installed, removed


def run_static(path: str | os.PathLike, *, ready: Callable[[Gateway], None] | None = None,
               offload: bool | None = None, loop: str | None = None, queues: int | None = None) -> GatewayStats:
    """Run a gateway with statically configured policies and SAs until SIGTERM/SIGINT; SIGHUP reloads the
    file (see :func:`apply_static`).

    Prints ``READY <tun name>`` when traffic can flow, ``RELOADED <installed> <removed>`` (or ``RELOAD-FAILED
    <reason>``) after each SIGHUP, and a JSON line of counters when it stops."""
    cfg, pols, sas = load_static(path)
    if offload is not None:  # the command line's --no-offload over the file's "offload"
        cfg = dataclasses.replace(cfg, offload=offload)
    if loop is not None:  # the command line's --loop over the file's "loop"
        cfg = dataclasses.replace(cfg, loop=loop)
    if queues is not None:  # and --queues over "queues"
        cfg = dataclasses.replace(cfg, queues=queues)
    dp = Dataplane()
    apply_static(dp, pols, sas)
    gw = Gateway(cfg, dp)
    done, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    gw.start()
    try:
        if ready is not None:  # before READY: what it sets up (a metrics endpoint) is there when READY is
            ready(gw)
        print(f"READY {gw.tun.name if gw.tun else '?'}", flush=True)
        while not done.wait(0.05):
            if not gw.running:
                break
            if reload.is_set():
                reload.clear()
                try:
                    new_cfg, new_pols, new_sas = load_static(path)
                    print("RELOADED %d %d" % apply_static(dp, new_pols, new_sas), flush=True)
                except (GatewayError, ValueError, KeyError) as exc:
                    print(f"RELOAD-FAILED {exc}", flush=True)
    finally:
        gw.stop()
    c = dp.counters()
    print(json.dumps({"gateway": gw.stats.as_dict(), "outbound": c.outbound, "inbound": c.inbound}), flush=True)
    return gw.stats
