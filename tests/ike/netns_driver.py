"""Runs one ike Dispatcher over real UDP sockets (ports 500 and 4500, non-ESP marker on 4500) inside a network
namespace, for test_strongswan_core.py. Not a product: the daemon (ike/daemon.py) is. Reads a JSON config,
prints every event as one JSON line, performs the listed actions once established, and stops after
``timeout`` seconds or when ``stop_when`` has been seen (every loop bounded)."""
from __future__ import annotations

import json
import select
import socket
import sys
import time
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ike.core_config import ChildConfig, CoreConfig, Credential, Identity, PeerConfig, TrafficSelector
from ike.dispatcher import Dispatcher


def main(path: str) -> None:
    cfg = json.load(open(path))
    key = load_pem_private_key(open(cfg["key"], "rb").read(), None)
    cert = x509.load_pem_x509_certificate(open(cfg["cert"], "rb").read())
    ca = x509.load_pem_x509_certificate(open(cfg["ca"], "rb").read())

    def validator(leaf, intermediates, at, identity):  # type: ignore[no-untyped-def]
        if cfg.get("reject_peer"):
            raise PermissionError("untrusted (test: the validator refuses)")
        leaf.verify_directly_issued_by(ca)
        return True

    child = ChildConfig("net", (TrafficSelector.from_cidr(cfg["local_ts"]),),
                        (TrafficSelector.from_cidr(cfg["remote_ts"]),), esp_proposals=tuple(cfg["esp"]))
    peer = PeerConfig("ss", Identity.parse(cfg["local_id"]), Identity.parse(cfg["remote_id"]),
                      remote_addr=cfg["remote_addr"], local_addr=cfg["local_addr"], credential=Credential(key, cert),
                      ca_certs=(ca,), validator=validator, children=(child,), ike_proposals=tuple(cfg["ike"]),
                      fragment_size=cfg.get("fragment_size", 1280), rsa_pss=cfg.get("rsa_pss", False))
    d = Dispatcher(CoreConfig(peers=(peer,), key_log=True, retransmit_timeout=1.0, retransmit_tries=3,
                              wall_clock=lambda now: datetime.now(timezone.utc)))
    socks = {}
    for port in (500, 4500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((cfg["local_addr"], port))
        socks[port] = s
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    seen: set[str] = set()

    def flush() -> None:
        for dg in d.datagrams_to_send(now()):
            socks[dg.local_port].sendto((b"\0" * 4 if dg.marker else b"") + dg.data, dg.addr)
        while (e := d.next_event()) is not None:
            rec: dict[str, object] = {"event": type(e).__name__}
            for k, v in vars(e).items():
                rec[k] = v.hex() if isinstance(v, bytes) else (
                    v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
            seen.add(type(e).__name__)
            print(json.dumps(rec), flush=True)

    print(json.dumps({"ready": True}), flush=True)
    actions = list(cfg.get("actions", []))
    if cfg["role"] == "initiator":
        d.initiate("ss", now())
    deadline = time.monotonic() + cfg["timeout"]
    next_action = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        flush()
        if cfg.get("stop_when") in seen:
            break
        t = d.get_timer()
        wait = 0.05 if t is None else max(0.0, min(0.05, t - now()))
        ready, _, _ = select.select(list(socks.values()), [], [], wait)
        for s in ready:
            data, addr = s.recvfrom(65535)
            port = s.getsockname()[1]
            if port != 500:
                if data[:4] != b"\0\0\0\0":
                    continue  # ESP or keepalive: not ours here
                data = data[4:]
            d.receive_datagram(data, addr, (cfg["local_addr"], port), now())
        d.handle_timer(now())
        sas = d.list_sas()
        if actions and time.monotonic() > next_action and sas and sas[0].state == "established" and sas[0].children:
            action = actions.pop(0)
            next_action = time.monotonic() + 1.0
            print(json.dumps({"action": action}), flush=True)
            if action == "rekey_child":
                d.rekey_child(sas[0].children[0].spi_in, now())
            elif action == "rekey_ike":
                d.rekey_ike(sas[0].ike_id, now())
            elif action == "terminate":
                d.terminate(sas[0].ike_id, now())
    flush()
    print(json.dumps({"stats": dict(d.stats)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
