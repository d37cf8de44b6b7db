"""``python -m esp``: the data plane's command line.

    python -m esp pcap decrypt IN OUT --sa FILE [--sa FILE ...]
    python -m esp pcap decrypt 'DIR/*.pcap' OUTDIR --sa FILE [--jobs N | --scheduler tcp://HOST:8786]
    python -m esp pcap encrypt IN OUT --sa FILE [--first-seq N] [--write-esp-sa FILE]
    python -m esp pcap replay  IN --sa FILE [--order 1,3,2,2 | --loss P --dup P --reorder P]
    python -m esp pcap send    IN (--sa FILE | --daemon SOCKET) [--encap udp|esp] [--target ADDR]
                               [--speed X | --pps N | --mbps M | --topspeed] [--loop N] [--duration S]
    python -m esp gateway STATIC.json [--metrics HOST:PORT]   (a tunnel gateway with static SAs; SIGHUP
                                           reloads, SIGTERM stops; Prometheus metrics at /metrics if asked)

Exit status: 0 all went well; 1 packets were dropped for a reason other than policy (authentication, replay,
malformed, truncated, unsupported) or the capture is damaged; 2 the command could not run (bad arguments,
unreadable capture, malformed SA file). Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]

PROG = "python -m esp"
#: The IKE daemon's control socket (ike.config's default; esp does not import ike).
IKE_SOCKET_DEFAULT = "/run/espresso/ike.sock"
IKE_SOCKET_ENV = "ESPRESSO_IKE_SOCKET"
IKE_SOCKET = os.environ.get(IKE_SOCKET_ENV) or IKE_SOCKET_DEFAULT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage first by default)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="espresso ESP data plane tools")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Parser)
    gw = sub.add_parser("gateway", help="run a TUN/UDP tunnel gateway with static policies and SAs (root)",
                        description="Runs esp.gateway with the policies and SAs of a JSON file (mode 0600, see "
                                    "esp.gateway.load_static) until SIGTERM or SIGINT; SIGHUP reloads the file "
                                    "make-before-break.")
    gw.add_argument("config", help="static configuration (JSON)")
    gw.add_argument("--no-offload", dest="offload", action="store_false", default=None,
                    help="do not use UDP GSO/GRO even where the kernel has them (the file's \"offload\" key "
                         "says the same; the final counters list the offloads in use)")
    gw.add_argument("--loop", choices=("compiled", "python"), default=None,
                    help="the data loops: compiled (the default: read, segment, classify, encrypt and send in "
                         "compiled code with the GIL released) or python (one Dataplane call per batch); over "
                         "the file's \"loop\" key. The final counters say which ran (tx_loop, rx_loop)")
    gw.add_argument("--queues", type=int, default=None, metavar="N",
                    help="data queues (multi-queue TUN + SO_REUSEPORT sockets, a tx and an rx thread each; "
                         "default one per CPU; the Python loop runs one); over the file's \"queues\" key")
    gw.add_argument("--metrics", metavar="HOST:PORT",
                    help="serve Prometheus metrics at http://HOST:PORT/metrics (per SA, per queue, offloads; "
                         "needs pip install 'espresso-ipsec[metrics]')")
    pc = sub.add_parser("pcap", help="decrypt, encrypt or replay capture files through ESP SAs")
    ps = pc.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--sa", action="append", required=True, metavar="FILE",
                        help="SA file: Wireshark esp_sa table or espresso TOML (repeatable; first match wins)")
        sp.add_argument("--mode", choices=("tunnel", "transport"),
                        help="mode of SAs whose file does not say (Wireshark tables)")
        sp.add_argument("--backend", choices=("openssl", "ipsecmb"), help="crypto backend (default: fastest)")
        sp.add_argument("--chunk", type=int, default=65536, metavar="N", help="records per chunk (default 65536)")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="progress bar on stderr (default: when stderr is a terminal)")
        g.add_argument("--no-progress", dest="progress", action="store_false")
        sp.add_argument("-q", "--quiet", action="store_true", help="no summary")
        sp.add_argument("--json", action="store_true", help="the summary as JSON on stdout")

    def many(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--jobs", "-j", type=int, metavar="N",
                        help="with several captures: processes of the local pool (default: one per CPU)")
        sp.add_argument("--scheduler", metavar="ADDR",
                        help="with several captures: run each as a task on this Dask scheduler "
                             "(tcp://host:8786, tls://...; needs the 'dask' extra)")

    d = ps.add_parser("decrypt", help="verify and decrypt the ESP packets of a capture (or of many)")
    d.add_argument("input", nargs="+", help="a capture; or several, a directory, a quoted glob ('caps/*.pcap')")
    d.add_argument("output", help="the output capture; with several inputs, a directory")
    common(d)
    many(d)
    d.add_argument("--format", choices=("pcap", "pcapng"), help="output format (default: the input's)")
    d.add_argument("--frames", action="store_true",
                   help="keep each record's link-layer header (default: inner packets as raw IP)")
    d.add_argument("--drop-other", action="store_true", help="write only the decrypted packets")
    d.add_argument("--drop-unknown", action="store_true", help="drop ESP packets no SA matches")
    d.add_argument("--replay-window", type=int, metavar="N",
                   help="anti-replay window (0 = off; default: the SA file's, else 64)")

    e = ps.add_parser("encrypt", help="encapsulate the packets of a capture (or of many) that SA selectors take")
    e.add_argument("input", nargs="+", help="a capture; or several, a directory, a quoted glob")
    e.add_argument("output", help="the output capture; with several inputs, a directory")
    common(e)
    many(e)
    e.add_argument("--format", choices=("pcap", "pcapng"), help="output format (default: the input's)")
    e.add_argument("--raw", action="store_true", help="write raw IP instead of keeping link-layer headers")
    e.add_argument("--drop-other", action="store_true", help="write only the encrypted packets")
    e.add_argument("--first-seq", type=int, metavar="N", help="sequence number of each SA's first packet")
    e.add_argument("--write-esp-sa", metavar="FILE",
                   help="also write the SAs as Wireshark's esp_sa table (mode 0600), so the output opens "
                        "decrypted in Wireshark: copy FILE to ~/.config/wireshark/esp_sa or pass it to tshark "
                        "with -o 'uat:esp_sa:...' lines")

    r = ps.add_parser("replay", help="send a capture through an outbound and an inbound SA and report what "
                                     "the receiver accepts")
    r.add_argument("input")
    common(r)
    r.add_argument("--order", metavar="LIST",
                   help="delivery order by packet number, e.g. 1-10,12,11,11 (repeats: duplicates; gaps: loss)")
    r.add_argument("--loss", type=float, default=0.0, metavar="P", help="loss probability")
    r.add_argument("--dup", type=float, default=0.0, metavar="P", help="duplication probability")
    r.add_argument("--reorder", type=float, default=0.0, metavar="P", help="probability a packet is held back")
    r.add_argument("--depth", type=int, default=3, metavar="N", help="how many packets a held one falls behind")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--window", type=int, metavar="N", help="receiver's anti-replay window")
    r.add_argument("--first-seq", type=int, metavar="N", help="sequence number of the first packet")
    r.add_argument("--spi", metavar="SPI", help="which SA of the file to use (default: the first)")
    r.add_argument("--output", metavar="FILE", help="write the packets the receiver accepted (raw IP)")
    r.add_argument("--verbose", "-v", action="store_true", help="one line per delivered packet")
    _send_parser(ps)
    return p


def _send_parser(ps: argparse._SubParsersAction) -> None:
    s = ps.add_parser("send", help="encrypt a capture (or take its ESP as it is) and send it to a device under "
                                   "test, paced like tcpreplay", description="Plaintext packets go through the "
                                   "first SA whose selector takes them, every loop again (sequence numbers "
                                   "continue); captured ESP goes out as it is.")
    s.add_argument("input")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--sa", action="append", metavar="FILE",
                     help="SA file: Wireshark esp_sa table or espresso TOML (repeatable; first match wins); "
                          "without --sa or --daemon only the capture's own ESP is sent")
    src.add_argument("--daemon", metavar="SOCKET", nargs="?", const=IKE_SOCKET,
                     help="send on the CHILD_SA(s) of a running `python -m ike daemon`, asked over its control "
                          f"socket (default: ${IKE_SOCKET_ENV} or {IKE_SOCKET_DEFAULT})")
    s.add_argument("--child", metavar="NAME|SPI", help="with --daemon: which CHILD_SA (default: every one)")
    s.add_argument("--mode", choices=("tunnel", "transport"),
                   help="mode of SAs whose file does not say (Wireshark tables)")
    s.add_argument("--encap", choices=("udp", "esp"),
                   help="ESP in UDP (RFC 3948) or raw IP protocol 50 (root); default: the SAs' own, else udp")
    s.add_argument("--target", metavar="ADDR", help="send to this address (default: each SA's peer)")
    s.add_argument("--port", type=int, metavar="N", help="UDP destination port (default: the SA's, else 4500)")
    s.add_argument("--source", metavar="ADDR", help="source address (default: the SAs' local one if it is ours)")
    s.add_argument("--sport", type=int, metavar="N", help="UDP source port (default: 4500 if free, else any)")
    pace = s.add_mutually_exclusive_group()
    pace.add_argument("--speed", "--multiplier", type=float, metavar="X", help="the recorded pacing sped up X times")
    pace.add_argument("--pps", type=float, metavar="N", help="N packets per second")
    pace.add_argument("--mbps", type=float, metavar="M", help="M Mbit/s of ESP datagrams (outer IP header included)")
    pace.add_argument("--topspeed", action="store_true", help="as fast as the machine goes")
    s.add_argument("--loop", type=int, default=1, metavar="N", help="send the capture N times (0: until "
                                                                    "--duration or --limit)")
    s.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    s.add_argument("--limit", type=int, metavar="N", help="stop after N packets")
    s.add_argument("--first-seq", type=int, metavar="N", help="sequence number of each SA's first packet")
    s.add_argument("--no-gso", dest="gso", action="store_false", help="no UDP GSO trains, one datagram per message")
    s.add_argument("--backend", choices=("openssl", "ipsecmb"), help="crypto backend (default: fastest)")
    s.add_argument("-q", "--quiet", action="store_true", help="no summary")
    s.add_argument("--json", action="store_true", help="the summary as JSON on stdout")


def _fail(msg: str) -> int:
    sys.stderr.write(f"{PROG}: error: {msg}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    try:
        if args.group == "gateway":
            return _gateway(args.config, args.offload, args.loop, args.queues, args.metrics)
        return _run(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1


def _gateway(path: str, offload: bool | None = None, loop: str | None = None, queues: int | None = None,
             metrics: str | None = None) -> int:
    from esp.errors import EspError
    from esp.gateway import run_static

    server = None
    started: list = []
    if metrics is not None:  # listening before the gateway starts: a refused address fails first, alone
        from esp.gateway.metrics import DataplaneCollector, serve_metrics

        try:
            server = serve_metrics(metrics, [DataplaneCollector(gateway=lambda: started[0] if started else None)])
        except ValueError as exc:
            return _fail(f"--metrics: {exc}")
        except EspError as exc:
            return _fail(str(exc))
    try:
        run_static(path, offload=offload, loop=loop, queues=queues, ready=started.append)
    except OSError as exc:
        return _fail(f"{path}: {exc.strerror or exc}")
    except (EspError, ValueError, KeyError) as exc:
        return _fail(str(exc))
    finally:
        if server is not None:
            server.close()
    return 0


def _send(args: argparse.Namespace) -> int:
    from esp.errors import EspError
    from esp.pcap.sa_files import KeyFileError, load_keyfile
    from esp.pcap.send import Pacing, SendError, daemon_child_sas, send_capture

    try:
        if args.daemon:
            entries, stated = daemon_child_sas(args.daemon, args.child), True
        elif not args.sa:
            entries, stated = [], False
        else:
            files = [load_keyfile(p) for p in args.sa]
            for w in (w for kf in files for w in kf.warnings):
                sys.stderr.write(f"{PROG}: warning: {w}\n")
            # a TOML SA says whether it is in UDP; an esp_sa table cannot, and NAT-T is what DUTs mostly see
            entries, stated = [e for kf in files for e in kf.entries], all(kf.kind == "toml" for kf in files)
            if not entries:
                return _fail(f"no usable SA in {', '.join(args.sa)}")
        encap = args.encap or ("udp" if any(e.encap for e in entries) or not stated else "esp")
        pacing = (Pacing("pps", args.pps) if args.pps is not None else Pacing("mbps", args.mbps)
                  if args.mbps is not None else Pacing("top") if args.topspeed
                  else Pacing("recorded", args.speed if args.speed is not None else 1.0))
        for name in ("port", "sport"):
            v = getattr(args, name)
            if v is not None and not 0 < v < 65536:
                return _fail(f"--{name} must be 1-65535")
        if args.first_seq is not None and args.first_seq < 1:
            return _fail("--first-seq must be at least 1")
        if args.limit is not None and args.limit < 1 or args.duration is not None and not args.duration > 0:
            return _fail("--limit and --duration must be positive")
        s = send_capture(args.input, entries, encap=encap, target=args.target, port=args.port,
                         source=args.source, sport=args.sport, pacing=pacing, loops=args.loop,
                         duration=args.duration, limit=args.limit, first_seq=args.first_seq, mode=args.mode,
                         backend=args.backend, gso=args.gso)
    except (KeyFileError, SendError, EspError, ValueError, OSError) as exc:
        return _fail(str(exc))
    for w in s.warnings:
        sys.stderr.write(f"{PROG}: warning: {w}\n")
    if args.json:
        sys.stdout.write(json.dumps(s.as_dict(), indent=2) + "\n")
    elif not args.quiet:
        sys.stderr.write(s.format() + "\n")
    return s.exit_code


def _run(args: argparse.Namespace) -> int:
    from esp.errors import EspError

    if args.cmd == "send":
        return _send(args)
    from esp.pcap.sa_files import KeyFileError, load_keyfiles

    try:
        kf = load_keyfiles(args.sa)
    except KeyFileError as exc:
        return _fail(str(exc))
    for w in kf.warnings:
        sys.stderr.write(f"{PROG}: warning: {w}\n")
    if not kf.entries:
        return _fail(f"no usable SA in {', '.join(args.sa)}")
    if args.chunk < 1:
        return _fail("--chunk must be at least 1")
    import esp.pcap as pcaptool

    if args.cmd in ("decrypt", "encrypt"):
        from esp.pcap.many import is_many
        if is_many(args.input):
            return _run_many(args, kf.entries)
        args.input = args.input[0]
    out = getattr(args, "output", None)
    if out is not None and os.path.exists(out) and os.path.exists(args.input) and os.path.samefile(out, args.input):
        return _fail(f"{out} is the input capture; write the output elsewhere")
    try:
        if args.cmd == "decrypt":
            if args.replay_window is not None and args.replay_window < 0:
                return _fail("--replay-window must be >= 0")
            s = pcaptool.decrypt_file(args.input, args.output, kf.entries, progress=args.progress,
                                      **_tool_kwargs(args))
        elif args.cmd == "encrypt":
            if args.first_seq is not None and args.first_seq < 1:
                return _fail("--first-seq must be at least 1")
            if args.write_esp_sa:
                _write_esp_sa(args.write_esp_sa, kf.entries)
            s = pcaptool.encrypt_file(args.input, args.output, kf.entries, progress=args.progress,
                                      **_tool_kwargs(args))
        else:
            return _replay(args, kf.entries)
    except (EspError, ValueError, OSError) as exc:
        return _fail(str(exc))
    if s.capture_error and not s.records:
        return _fail(s.capture_error)
    if args.json:
        sys.stdout.write(json.dumps(s.as_dict(), indent=2) + "\n")
    elif not args.quiet:
        sys.stderr.write(s.format() + "\n")
    return s.exit_code


def _tool_kwargs(args: argparse.Namespace) -> dict:
    """The options of one decrypt or encrypt run, as the file functions take them."""
    kw = dict(fmt=args.format, drop_other=args.drop_other, mode=args.mode, backend=args.backend,
              chunk_records=args.chunk)
    if args.cmd == "decrypt":
        kw.update(frames=args.frames, drop_unknown=args.drop_unknown, replay_window=args.replay_window)
    else:
        kw.update(frames=not args.raw, first_seq=args.first_seq)
    return kw


def _run_many(args: argparse.Namespace, entries: list) -> int:
    """Several captures: each a task on the local pool or the Dask cluster; one summary, each file's status."""
    from esp.errors import EspError
    from esp.pcap.many import run_many

    if args.jobs is not None and args.jobs < 1:
        return _fail("--jobs must be at least 1")
    if args.cmd == "decrypt" and args.replay_window is not None and args.replay_window < 0:
        return _fail("--replay-window must be >= 0")
    if args.cmd == "encrypt" and args.first_seq is not None and args.first_seq < 1:
        return _fail("--first-seq must be at least 1")
    try:
        if args.cmd == "encrypt" and args.write_esp_sa:
            _write_esp_sa(args.write_esp_sa, entries)
        res = run_many(args.cmd, args.input, args.output, entries, jobs=args.jobs, scheduler=args.scheduler,
                       **_tool_kwargs(args))
    except (EspError, ValueError, OSError) as exc:
        return _fail(str(exc))
    if args.json:
        sys.stdout.write(json.dumps(res.as_dict(), indent=2) + "\n")
    elif not args.quiet:
        sys.stderr.write(res.format() + "\n")
    return res.exit_code


def _write_esp_sa(path: str, entries: list) -> None:
    """The SAs as Wireshark's esp_sa table; those it has no row for (ChaCha20, CCM, GMAC) are left out, with a
    warning each."""
    from esp.pcap.sa_files import dump_wireshark, wireshark_supports, write_keyfile

    for e in entries:
        if not wireshark_supports(e.suite):
            sys.stderr.write(f"{PROG}: warning: {e.origin or e.label}: Wireshark 4.0 has no esp_sa row for "
                             f"{e.suite.name}; left out of {path}\n")
    write_keyfile(path, dump_wireshark(entries, skip_unsupported=True))


def _replay(args: argparse.Namespace, entries: list) -> int:
    import esp.pcap as pcaptool

    entry = entries[0]
    if args.spi is not None:
        try:
            want = int(args.spi, 0)
        except ValueError:
            return _fail(f"--spi {args.spi!r} is not a number")
        found = [e for e in entries if e.spi == want]
        if not found:
            return _fail(f"no SA with SPI 0x{want:08x} in {', '.join(args.sa)}")
        entry = found[0]
    for name in ("loss", "dup", "reorder"):
        v = getattr(args, name)
        if not 0.0 <= v <= 1.0:
            return _fail(f"--{name} is a probability between 0 and 1")
    order = pcaptool.ReplayPattern.parse_order(args.order) if args.order else None
    pattern = pcaptool.ReplayPattern(order=order, loss=args.loss, dup=args.dup, reorder=args.reorder,
                                     depth=args.depth, seed=args.seed)
    res = pcaptool.replay_file(args.input, entry, pattern=pattern, out_path=args.output, mode=args.mode,
                               window=args.window, first_seq=args.first_seq, backend=args.backend,
                               record=args.verbose, chunk_records=args.chunk, progress=args.progress)
    if args.json:
        sys.stdout.write(json.dumps(res.as_dict(), indent=2) + "\n")
    elif args.verbose:
        for num, seq, verdict in res.verdicts:
            sys.stdout.write(f"{num}\tseq {seq}\t{verdict}\n")
    if not args.quiet and not args.json:
        sys.stderr.write(res.format() + "\n")
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
