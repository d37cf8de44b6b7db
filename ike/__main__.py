"""``python -m ike``: run the IKE daemon and control it, as charon and swanctl do.

::

    python -m ike daemon --config /etc/espresso/ike.toml      # foreground; SIGTERM/SIGINT: DELETE all, exit
    python -m ike check-config --config /etc/espresso/ike.toml
    python -m ike check-config --config /etc/swanctl/swanctl.conf   # what an import would keep and refuse
    python -m ike import-swanctl /etc/swanctl/swanctl.conf -o /etc/espresso/ike.toml
    python -m ike initiate --ike branch [--child lan] [--timeout 10]
    python -m ike list-sas [--ike branch] [--raw]
    python -m ike list-conns
    python -m ike rekey --child lan | --ike branch
    python -m ike terminate --ike branch | --child lan
    python -m ike stats
    python -m ike status                                      # ready? listening where, since when
    python -m ike demo                                        # the end-to-end demonstration, no root needed

The control commands talk to the daemon over its unix socket (``--socket``, else ``$ESPRESSO_IKE_SOCKET``, else
the default ``/run/espresso/ike.sock``). This is the only module of the package that reads argv or the
environment (``$NOTIFY_SOCKET``: under systemd ``Type=notify`` the daemon sends READY=1 once its configuration
is loaded and its sockets are bound; ``--ready-file PATH`` writes the status there at the same moment).
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config
from .listing import format_conns, format_sas

__all__ = ["main", "request"]

ENV_SOCKET = "ESPRESSO_IKE_SOCKET"


# --------------------------------------------------------------------------------------------------------
# Client side


class ClientError(Exception):
    pass


def request(path: str | os.PathLike[str], req: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """One JSON-lines request to the daemon's control socket; the reply object."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ClientError(f"cannot reach the daemon at {path}: {exc.strerror or exc} "
                              f"(is `python -m ike daemon` running? --socket / ${ENV_SOCKET})") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 64 << 20:
                raise ClientError("reply too large")
    except TimeoutError:
        raise ClientError(f"no reply from the daemon within {timeout:g}s") from None
    finally:
        s.close()
    try:
        return json.loads(buf)
    except json.JSONDecodeError:
        raise ClientError(f"the daemon sent something that is not JSON: {buf[:200]!r}") from None


def _socket_path(args: argparse.Namespace) -> str:
    return args.socket or os.environ.get(ENV_SOCKET) or DEFAULT_CONTROL_SOCKET


def _client(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"cmd": args.command}
    timeout = 15.0
    if args.command == "initiate":
        req.update(ike=args.ike, child=args.child, timeout=args.timeout)
        timeout = args.timeout + 5
    elif args.command in ("rekey", "terminate"):
        if bool(args.child) == bool(args.ike):
            print(f"error: {args.command} needs exactly one of --child or --ike", file=sys.stderr)
            return 2
        req.update(child=args.child, ike=args.ike)
        if args.command == "terminate":
            req["timeout"] = args.timeout
            timeout = args.timeout + 5
    elif args.command == "list-sas" and args.ike:
        req["ike"] = args.ike
    try:
        reply = request(_socket_path(args), req, timeout)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"error: {reply.get('error', 'unknown error')}", file=sys.stderr)
        return 1
    if getattr(args, "raw", False):
        print(json.dumps(reply, indent=2))
    elif args.command == "list-sas":
        text = format_sas(reply["ike_sas"])
        if text:
            print(text)
    elif args.command == "list-conns":
        print(format_conns(reply["conns"]))
    elif args.command == "stats":
        print(json.dumps(reply["stats"], indent=2))
    elif args.command == "status":
        st = reply["status"]
        print(f"{'ready' if st['ready'] else 'not ready'}, pid {st['pid']}, up {st['uptime']:g}s, "
              f"{st['ike_sas']} IKE_SAs, {st['child_sas']} CHILD_SAs")
        print("  listening " + ", ".join(f"{h}[{p}]" for h, p in st["listening"]))
        print(f"  control {st['control_socket']}" + (f", config {st['config']}" if st["config"] else ""))
    elif args.command == "initiate":
        child = f", CHILD_SA {reply['child']} {reply['spi_in']}_i {reply['spi_out']}_o" if "child" in reply else ""
        print(f"initiate completed successfully: IKE_SA {args.ike}[{reply['ike_id']}] {reply['state']}{child}")
    elif args.command == "terminate":
        what = reply.get("deleting") or f"IKE_SA #{reply.get('ike_id')} {reply.get('state')}"
        print(f"terminate: {what}")
    elif "spi_i" in reply:
        print(f"rekey: rekeying IKE_SA {reply.get('ike')}[{reply['rekeying']}] {reply['spi_i']}_i {reply['spi_r']}_r")
    else:
        print(f"rekey: rekeying CHILD_SA {reply.get('rekeying')}")
    return 0


# --------------------------------------------------------------------------------------------------------
# Daemon


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    sock = args.control_socket or os.environ.get(ENV_SOCKET)
    if sock:
        o["control_socket"] = sock
    if args.key_log:
        o["key_log"] = os.path.abspath(args.key_log)  # relative to where the operator typed it
    return o


def _is_swanctl(path: str) -> bool:
    """swanctl.conf and its includes are strongSwan settings files; the daemon's own are TOML."""
    return not path.endswith(".toml") and (path.endswith(".conf") or os.path.basename(path) == "swanctl.conf")


def _import_swanctl(path: str, out: str | None) -> tuple[Any, str]:
    """(SwanctlImport, TOML text); ConfigError for a file that is not swanctl syntax."""
    from .config.swanctl import dump_toml, import_swanctl

    out_dir = os.path.dirname(os.path.abspath(out)) if out else os.getcwd()
    imp = import_swanctl(path, out_dir=out_dir)
    header = f"imported from {os.path.abspath(path)} by python -m ike import-swanctl"
    if imp.refused:
        header += "\nnot imported (espresso cannot express these):\n" + "\n".join(f"  {r}" for r in imp.refused)
    return imp, dump_toml(imp.config, header)


def _cmd_import_swanctl(args: argparse.Namespace) -> int:
    try:
        imp, text = _import_swanctl(args.swanctl, args.output)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in imp.refused:
        print(f"{r}", file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:  # no secrets beyond what swanctl.conf held; same care: 0600
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
    else:
        sys.stdout.write(text)
    return 1 if imp.refused else 0


def _check_config(args: argparse.Namespace) -> int:
    if _is_swanctl(args.config):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # validated as the daemon would load the import
            path = os.path.join(tmp, "imported.toml")
            try:
                imp, text = _import_swanctl(args.config, path)
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            for r in imp.refused:
                print(f"error: {r}", file=sys.stderr)
            try:
                with open(path, "w") as f:
                    f.write(text)
                cfg = load_config(path, overrides=_overrides(args))
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        if imp.refused:
            for line in _details(cfg):  # what the rest would be, as for a TOML file
                print(line)
            print(f"{args.config}: {len(imp.refused)} key(s) espresso cannot express; the rest is valid",
                  file=sys.stderr)
            return 2
    else:
        try:
            cfg = load_config(args.config, overrides=_overrides(args))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    peers = ", ".join(f"{p.name} ({'IKEv1, ' if p.version == 1 else ''}{len(p.children)} children)"
                      for p in cfg.core.peers)
    metrics = ""
    if cfg.metrics_listen is not None:
        host, port = cfg.metrics_listen
        metrics = f"; metrics at http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    g = cfg.gateway
    gw = "" if g is None else (
        f"; gateway {g.tun_name} (offload {'on where probed' if g.offload else 'off'}, MTU "
        f"{g.mtu if g.mtu is not None else 'following the path'}, outer MTU "
        f"{g.outer_mtu if g.outer_mtu is not None else 'of the interface'}, batch {g.batch_size})")
    for line in _details(cfg):
        print(line)
    print(f"{args.config}: OK; peers: {peers}; listening on "
          + ", ".join(f"{a}[{p}]" for a in cfg.addresses for p in cfg.bind_ports()) + gw + metrics)
    return 0


def _details(cfg: Any) -> list[str]:
    """What check-config says per peer and for [pki], beyond the summary line: the settings an operator moving
    from swanctl checks first (ports and NAT-T, authentication constraints, revocation, fragmentation) and the
    locally held intermediates and CRLs, as the daemon will use them."""
    lines = []
    for p in cfg.core.peers:
        local = cfg.local_addrs.get(p.name) or "*"
        auth = p.auth_constraints.text if p.auth_constraints is not None else p.auth
        rauth = p.remote_auth_constraints.text if p.remote_auth_constraints is not None else p.remote_auth
        parts = [f"{local}[{p.local_port}, NAT-T {p.local_nat_port}] -> {p.remote_addr or '%any'}"
                 f"[{p.remote_port}, NAT-T {p.peer_nat_port}]",
                 f"auth {auth}, remote_auth {rauth}"]
        v = getattr(p.validator, "validator", None)
        if v is not None:
            pol = v.policy.revocation
            if pol is not None:
                parts.append(f"revocation {pol}")
            else:
                profiles = {a.profile: a.revocation for a in v.anchors()}
                parts.append("revocation per ca-profile (" + ", ".join(
                    f"{n}: {r.mode.value}{', fail-open' if r.fail_open else ''}" for n, r in profiles.items()) + ")")
        frag = {True: "yes", False: "no", "force": "yes"}.get(p.fragmentation, p.fragmentation)
        parts.append(f"fragmentation {frag}" + (f" (fragments of at most {p.fragment_size}-byte IP datagrams)"
                                                if frag == "yes" else ""))
        lines.append(f"  peer {p.name}: " + "; ".join(parts))
    for c in cfg.intermediates:
        lines.append(f"  intermediate (held, not trusted): {c.subject.rfc4514_string()}")
    for crl in cfg.crls:
        nxt = crl.next_update_utc
        lines.append(f"  crl: {crl.issuer.rfc4514_string()}, {len(list(crl))} revoked, next update "
                     f"{nxt.strftime('%Y-%m-%d %H:%M UTC') if nxt is not None else 'not given'}")
    return lines


def _run_daemon(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .daemon import Daemon, make_gateway
    from .keylog import KeyLogError
    from .ready import Readiness

    readiness = Readiness(notify_socket=os.environ.get("NOTIFY_SOCKET"), ready_file=args.ready_file)

    async def serve() -> int:
        try:
            daemon = Daemon(cfg, gateway=make_gateway(cfg), readiness=readiness)
        except KeyLogError as exc:  # checked at load time already; the directory may have changed since
            print(f"error: cannot start: {exc}", file=sys.stderr)
            return 1
        metrics = None
        try:
            if cfg.metrics_listen is not None:  # [metrics]: listening first, a refused address fails alone
                from .metrics import serve_daemon_metrics
                metrics = serve_daemon_metrics(daemon, cfg.metrics_listen)
            await daemon.start(initiate=args.initiate or ())
        except Exception as exc:  # bind refused, no TUN, no privilege, ready file unwritable: say so and leave
            why = exc.strerror if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE else exc
            readiness.stopping()
            await daemon.control.close()
            print(f"error: cannot start: {why}", file=sys.stderr)
            daemon.endpoint.close()
            if daemon.gateway is not None:
                daemon.gateway.stop()
            if metrics is not None:
                metrics.close()
            return 1
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_signal() -> None:  # charon's SIGTERM: DELETE every IKE_SA, then exit (once)
            if not stopping:
                stopping.append(loop.create_task(daemon.stop()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await daemon.run()
        finally:
            if metrics is not None:
                metrics.close()
        return 0

    return asyncio.run(serve())


class OneLineFormatter(logging.Formatter):
    """Peers' text reaches log lines (identities, certificate subjects, notify data): a newline or terminal escape
    in it could forge a line of its own or rewrite the operator's terminal, so control characters in the
    message are written as ``\\xNN`` (tracebacks, which are ours, keep their lines)."""

    _CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = self._CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", record.message)
        return super().formatMessage(record)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname).1s [%(name)s] %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ike", description="espresso IKEv2 daemon and control")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("daemon", help="run the IKE daemon in the foreground")
    d.add_argument("--config", "-c", required=True, help="TOML configuration file")
    d.add_argument("--control-socket", help="override daemon.control_socket")
    d.add_argument("--key-log", help="write Wireshark key tables to this directory (secrets!)")
    d.add_argument("--initiate", action="append", metavar="PEER", help="initiate this peer at start (repeatable)")
    d.add_argument("--ready-file", metavar="PATH",
                   help="write the daemon's status (JSON) here once it is ready; removed on exit")
    d.add_argument("-v", "--verbose", action="count", default=1)
    d.add_argument("-q", "--quiet", action="store_const", const=0, dest="verbose")

    sw = sub.add_parser("import-swanctl", help="write the espresso TOML for a strongSwan swanctl.conf")
    sw.add_argument("swanctl", help="swanctl.conf (x509/, x509ca/, private/ beside it, as swanctl reads them)")
    sw.add_argument("-o", "--output", help="TOML file to write (default: stdout); refused keys go to stderr")

    c = sub.add_parser("check-config", help="validate a configuration file (TOML or swanctl.conf) and exit")
    c.add_argument("--config", "-c", required=True)
    c.add_argument("--control-socket")
    c.add_argument("--key-log")

    def client(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--socket", "-s", help=f"control socket (default ${ENV_SOCKET} or {DEFAULT_CONTROL_SOCKET})")
        sp.add_argument("--raw", action="store_true", help="print the daemon's JSON reply")
        return sp

    i = client("initiate", "initiate an IKE_SA (and its CHILD_SAs) and wait for it")
    i.add_argument("--ike", "-i", required=True, help="peer (connection) name")
    i.add_argument("--child", "-c", help="only this CHILD_SA")
    i.add_argument("--timeout", "-t", type=float, default=10.0)
    ls = client("list-sas", "list IKE_SAs and CHILD_SAs with algorithms, counters and lifetimes")
    ls.add_argument("--ike", "-i", help="only this peer")
    client("list-conns", "list configured peers")
    r = client("rekey", "rekey a CHILD_SA (--child NAME|SPI) or an IKE_SA (--ike PEER)")
    r.add_argument("--child", "-c")
    r.add_argument("--ike", "-i")
    t = client("terminate", "delete a CHILD_SA (--child) or an IKE_SA (--ike)")
    t.add_argument("--child", "-c")
    t.add_argument("--ike", "-i")
    t.add_argument("--timeout", "-t", type=float, default=5.0)
    client("stats", "adapter, core and data plane counters")
    client("status", "whether the daemon is ready, where it listens, how many SAs it holds")

    pcap = sub.add_parser("pcap", help="IKEv2 in captures: show exchanges as charon logs them, decrypt a session")
    from .capture import add_arguments as pcap_arguments
    pcap_arguments(pcap)

    demo = sub.add_parser("demo", help="CA + SCEP enrollment + two daemons + ESP traffic, on loopback, no root")
    from .demo import add_arguments
    add_arguments(demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "daemon":
        _setup_logging(args.verbose)
        return _run_daemon(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "pcap":
        from .capture import run_from_args as run_pcap
        return run_pcap(args)
    if args.command == "import-swanctl":
        return _cmd_import_swanctl(args)
    if args.command == "demo":
        from .demo import run_from_args
        return run_from_args(args)
    return _client(args)


if __name__ == "__main__":
    sys.exit(main())
