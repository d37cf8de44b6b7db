"""``python -m esp pcap send`` on loopback: what leaves is ESP an independent inbound SA accepts, sequence numbers
continue across loops (ESN across 2**32 included), pacing follows the asked schedule, bad input is a clear error
or a counted skip. The receiver is a plain UDP socket in the test with kernel receive timestamps; the sender is the
CLI as users run it (a subprocess), except where a test needs the library's summary object.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from esp import Direction, PacketBatch, Sa, Verdict
from esp.pcap import CaptureReader, decrypt_file, encrypt_file
from esp.pcap.sa_files import parse_toml
from esp.pcap.send import Pacing, SendError, send_capture
from tests.esp.pcap_builders import Rec, ether, ipv4, pcap_file, udp

ROOT = Path(__file__).resolve().parents[2]
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
KEY = "0x00112233445566778899aabbccddeeff01020304"


def sa_toml(tmp: Path, *, esn: bool = False, initial_seq: int = 0, selector: str = "", extra: str = "") -> Path:
    p = tmp / "sa.toml"
    p.write_text(f"""[[sa]]
spi = "0x01020304"
suite = "aes128gcm16"
enc_key = "{KEY}"
src = "127.0.0.1"
dst = "127.0.0.1"
mode = "tunnel"
encap = {{ sport = 4500, dport = 4500 }}
esn = {str(esn).lower()}
initial_seq = {initial_seq}
{selector}
{extra}
""")
    p.chmod(0o600)
    return p


def plain_capture(tmp: Path, n: int, gap: float = 0.001, name: str = "plain.pcap", raw: bool = True) -> list[bytes]:
    pkts = [ipv4("10.1.0.1", "10.2.0.1", 17, udp(1000 + i % 7, 9, bytes([i % 256]) * (60 + i % 90)))
            for i in range(n)]
    recs = [Rec(p if raw else ether(p), 1_700_000_000 + int(i * gap), round((i * gap) % 1 * 1e6))
            for i, p in enumerate(pkts)]
    (tmp / name).write_bytes(pcap_file(recs, linktype=101 if raw else 1))
    return pkts


class Receiver:
    """A UDP socket on loopback recording each datagram with its kernel receive time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[bytes, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, 64)
            except TimeoutError:
                continue
            ts = 0.0
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", val[:16])
                    ts = sec + nsec / 1e9
            self.got.append((data, ts))

    def wait(self, n: int, timeout: float = 20.0) -> list[tuple[bytes, float]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # nothing more should come
        self._stop.set()
        self._t.join(timeout=5)
        self.sock.close()
        return self.got


def decrypt(datagrams: list[bytes], sa_file: Path, window: int = 4096) -> tuple[list[int], list[bytes]]:
    """Verdicts and inner packets of ESP-in-UDP datagrams, through an inbound SA built from the same file."""
    entry = parse_toml(sa_file.read_text()).entries[0]
    import dataclasses

    sa = Sa(dataclasses.replace(entry, replay_window=window).sa_params(Direction.IN))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    wrapped = [hdr[:2] + (28 + len(d)).to_bytes(2, "big") + hdr[4:] + struct.pack("!HHHH", 4500, 4500, 8 + len(d), 0)
               + d for d in datagrams]
    src = PacketBatch.from_packets(wrapped)
    dst = PacketBatch.empty(len(wrapped), 2048)
    sa.decrypt_batch(src, dst)
    inner = [dst.buf[o:o + n].tobytes() for o, n in zip(dst.offsets.tolist(), dst.lengths.tolist())]
    return [int(v) for v in dst.status], inner


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "esp", "pcap", "send", *args], capture_output=True, text=True,
                          check=False,
                          timeout=timeout, env=env, cwd=str(ROOT))


def test_encrypted_loops_decrypt_in_order_with_continuing_sequence_numbers(tmp_path):
    pkts = plain_capture(tmp_path, 50, raw=False)
    sa = sa_toml(tmp_path)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), "--topspeed", "--loop", "3",
            "--json")
    got = rx.wait(150)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["sent"] == 150 and summary["loops"] == 3 and summary["per_sa"][0]["packets"] == 150
    assert "Traceback" not in r.stderr
    seqs = [int.from_bytes(d[4:8], "big") for d, _ in got]
    assert sorted(seqs) == list(range(1, 151))  # loopback may not reorder, but the test need not rely on it
    verdicts, inner = decrypt([d for d, _ in got], sa)
    assert verdicts == [Verdict.OK] * 150
    by_seq = dict(zip(seqs, inner))
    assert [by_seq[s] for s in range(1, 151)] == pkts * 3
    assert summary["bytes"] == sum(len(d) + 28 for d, _ in got)  # outer IPv4 + UDP header counted


@pytest.mark.parametrize("first", [(1 << 32) - 3])
def test_esn_sequence_numbers_cross_2_32_and_the_receiver_accepts_them(tmp_path, first):
    pkts = plain_capture(tmp_path, 4)
    sa = sa_toml(tmp_path, esn=True)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), "--topspeed", "--loop", "3",
            "--first-seq", str(first))
    got = rx.wait(12)
    assert r.returncode == 0, r.stderr
    low = [int.from_bytes(d[4:8], "big") for d, _ in got]
    assert low == [(first + i) & 0xFFFFFFFF for i in range(12)]  # ..., 0xffffffff, 0, 1, ... on the wire
    # The receiver starts where the sender's SA started, as a peer that saw the traffic before would.
    entry = parse_toml(sa.read_text()).entries[0]
    import dataclasses

    rsa = Sa(dataclasses.replace(entry, replay_window=64).sa_params(Direction.IN), initial_seq=first - 1)
    hdr = bytes.fromhex("4500000000000000401100007f0000017f000001")
    src = PacketBatch.from_packets([hdr[:2] + (28 + len(d)).to_bytes(2, "big") + hdr[4:]
                                    + struct.pack("!HHHH", 4500, 4500, 8 + len(d), 0) + d for d, _ in got])
    out = PacketBatch.empty(len(got), 2048)
    rsa.decrypt_batch(src, out)
    # Without the high half on the wire, the receiver infers it (RFC 4303 A.2): the ones after the wrap are
    # taken with the high half 1, and the ICV (which covers the whole 64-bit number) verifies only if the
    # sender used that high half too.
    assert list(out.status) == [Verdict.OK] * 12
    inner = [out.buf[o:o + n].tobytes() for o, n in zip(out.offsets.tolist(), out.lengths.tolist())]
    assert inner == pkts * 3


def test_without_esn_sending_stops_cleanly_at_2_32(tmp_path):
    plain_capture(tmp_path, 4)
    sa = sa_toml(tmp_path)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), "--topspeed", "--loop", "3",
            "--first-seq", str((1 << 32) - 2))
    got = rx.wait(2, timeout=5)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "sequence numbers exhausted" in r.stderr
    assert [int.from_bytes(d[4:8], "big") for d, _ in got] == [(1 << 32) - 2, (1 << 32) - 1]


def rate(got: list[tuple[bytes, float]], count_bytes: bool = False) -> float:
    """Packets (or bits, of ESP datagrams with IPv4 + UDP headers) per second between the first and the last
    arrival, from the kernel's receive timestamps."""
    ts = [t for _, t in got]
    span = ts[-1] - ts[0]
    if count_bytes:
        return sum((len(d) + 28) * 8 for d, _ in got[:-1]) / span
    return (len(got) - 1) / span


@pytest.mark.parametrize("how", ["pps", "mbps", "recorded"])
def test_paced_sending_matches_the_asked_rate_within_2_percent(tmp_path, how):
    """The pacer's accuracy, as the receiver sees it over about 5 seconds (no absolute speed asserted)."""
    n = 300
    plain_capture(tmp_path, n, gap=0.002)  # recorded: 500 pps
    sa = sa_toml(tmp_path)
    rx = Receiver()
    # 300 packets of 60-149 payload bytes (about 190 B as ESP datagrams with IPv4 + UDP): 34 loops at 2000 pps,
    # 45 loops at 4 Mbit/s and 34 loops of the recorded 0.6 s at 4x are each a little over 5 s.
    args = {"pps": ["--pps", "2000", "--loop", "34"], "mbps": ["--mbps", "4", "--loop", "45"],
            "recorded": ["--speed", "4", "--loop", "34"]}[how]
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), *args, "--json")
    summary = json.loads(r.stdout)
    got = rx.wait(summary["sent"])
    assert r.returncode == 0, r.stderr
    assert len(got) == summary["sent"]
    if how == "pps":
        want, seen = 2000.0, rate(got)
    elif how == "mbps":
        want, seen = 4e6, rate(got, count_bytes=True)
    else:
        want, seen = 2000.0, rate(got)  # 2 ms gaps, four times faster; loops one mean gap apart
    assert got[-1][1] - got[0][1] >= 5.0, (how, got[-1][1] - got[0][1])
    assert abs(seen - want) / want < 0.02, (how, seen, want)
    own = summary["mbps"] * 1e6 if how == "mbps" else summary["pps"]  # what the sender reports
    assert abs(own - want) / want < 0.02, (how, own, want)


def test_captured_esp_is_sent_as_it_is_and_plaintext_beside_it_is_encrypted(tmp_path):
    sa = sa_toml(tmp_path)
    esp_payload = bytes.fromhex("0a0b0c0d00000007") + b"\x42" * 40
    recs = [Rec(ipv4("192.0.2.1", "192.0.2.2", 50, esp_payload)),  # raw ESP
            Rec(ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, esp_payload))),  # ESP in UDP
            Rec(ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\0\0\0\0" + b"IKE" * 10))),  # IKE: skipped
            Rec(ipv4("192.0.2.1", "192.0.2.2", 17, udp(4500, 4500, b"\xff"))),  # keepalive: skipped
            Rec(ipv4("10.1.0.1", "10.2.0.1", 17, udp(1, 2, b"plain")))]
    (tmp_path / "mix.pcap").write_bytes(pcap_file(recs, linktype=101))
    rx = Receiver()
    r = cli(str(tmp_path / "mix.pcap"), "--sa", str(sa), "--target", "127.0.0.1", "--port", str(rx.port),
            "--topspeed", "--json")
    got = rx.wait(3)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["passed_through"] == 2 and s["skipped"] == {"ike_or_keepalive": 2} and s["sent"] == 3
    assert [d for d, _ in got[:2]] == [esp_payload, esp_payload]
    assert decrypt([got[2][0]], sa)[0] == [Verdict.OK]
    # no SA at all: the captured ESP still goes out, the plaintext is a counted skip
    rx = Receiver()
    r = cli(str(tmp_path / "mix.pcap"), "--target", "127.0.0.1", "--port", str(rx.port), "--topspeed", "--json")
    assert [d for d, _ in rx.wait(2)] == [esp_payload, esp_payload]
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["sent"] == 2 and s["skipped"] == {"ike_or_keepalive": 2, "no_sa": 1}, r.stderr


def test_limit_and_duration_end_endless_loops_and_counts_are_of_what_went_out(tmp_path):
    plain_capture(tmp_path, 10)
    sa = sa_toml(tmp_path)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), "--pps", "1000", "--loop", "0",
            "--limit", "25", "--json")
    assert len(rx.wait(25)) == 25
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["sent"] == 25 and s["loops"] == 3 and s["per_sa"][0]["packets"] == 25, s
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(sa), "--port", str(rx.port), "--pps", "200", "--loop", "0",
            "--duration", "0.5", "--json")
    s = json.loads(r.stdout)
    assert len(rx.wait(s["sent"])) == s["sent"] == s["per_sa"][0]["packets"]
    assert 50 <= s["sent"] <= 150 and r.returncode == 0, s  # about 100; the bound is loose: not a speed test


def test_bad_input_is_a_clear_error_or_a_counted_skip(tmp_path):
    sa = sa_toml(tmp_path, selector='selector = { src = "10.1.0.0/16", dst = "10.2.0.0/16" }')
    # a capture without IP: ARP frames only
    arp = ether(b"\0\1\x08\0\6\4\0\1" + bytes(20), ethertype=0x0806)
    (tmp_path / "arp.pcap").write_bytes(pcap_file([Rec(arp)] * 3))
    r = cli(str(tmp_path / "arp.pcap"), "--sa", str(sa), "--topspeed")
    assert r.returncode == 2 and "nothing to send" in r.stderr and "non ip 3" in r.stderr, r.stderr
    # no packet the SA's selector takes
    (tmp_path / "other.pcap").write_bytes(pcap_file([Rec(ipv4("10.9.0.1", "10.2.0.1", 17, udp(1, 2, b"x")))],
                                                    linktype=101))
    r = cli(str(tmp_path / "other.pcap"), "--sa", str(sa), "--topspeed")
    assert r.returncode == 2 and "no sa 1" in r.stderr, r.stderr
    # some taken, some not: a counted skip
    rx = Receiver()
    recs = [Rec(ipv4("10.9.0.1", "10.2.0.1", 17, udp(1, 2, b"x"))), Rec(ipv4("10.1.0.1", "10.2.0.1", 17, udp(1, 2, b"y")))]
    (tmp_path / "some.pcap").write_bytes(pcap_file(recs, linktype=101))
    r = cli(str(tmp_path / "some.pcap"), "--sa", str(sa), "--port", str(rx.port), "--topspeed", "--json")
    assert len(rx.wait(1)) == 1
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == {"no_sa": 1}, r.stderr
    # damaged or missing capture, wrong key file, wrong arguments
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")
    bad_sa = tmp_path / "bad.toml"
    bad_sa.write_text('[[sa]]\nspi = "0x1"\nsuite = "aes128gcm16"\nenc_key = "0x00"\nsrc = "127.0.0.1"\n'
                      'dst = "127.0.0.1"\n')
    bad_sa.chmod(0o600)
    for args in ([str(tmp_path / "junk.pcap"), "--sa", str(sa)], [str(tmp_path / "none.pcap"), "--sa", str(sa)],
                 [str(tmp_path / "some.pcap"), "--sa", str(bad_sa)],
                 [str(tmp_path / "some.pcap"), "--sa", str(sa), "--pps", "0"],
                 [str(tmp_path / "some.pcap"), "--sa", str(sa), "--target", "not-an-address"],
                 [str(tmp_path / "some.pcap"), "--sa", str(sa), "--loop", "0"],
                 [str(tmp_path / "some.pcap"), "--daemon", str(tmp_path / "no.sock")],
                 [str(tmp_path / "some.pcap"), "--sa", str(sa), "--encap", "esp", "--source", "192.0.2.77"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and "error:" in r.stderr, (args, r.stderr)


def test_library_pacing_is_validated():
    with pytest.raises(ValueError):
        Pacing("pps", 0)
    with pytest.raises(ValueError):
        Pacing("warp", 1)
    assert str(Pacing("top")) == "top speed"



def test_wireshark_esp_sa_table_drives_it_too(tmp_path):
    """An esp_sa row (Wireshark's table: no mode, no encapsulation) is a tunnel SA sent in UDP 4500."""
    pkts = plain_capture(tmp_path, 20)
    table = tmp_path / "esp_sa"
    table.write_text('"IPv4","127.0.0.1","127.0.0.1","0x01020304","AES-GCM with 16 octet ICV [RFC4106]",'
                     f'"{KEY}","NULL",""\n')
    table.chmod(0o600)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(table), "--port", str(rx.port), "--topspeed", "--json")
    got = rx.wait(20)
    assert r.returncode == 0, r.stderr
    verdicts, inner = decrypt([d for d, _ in got], sa_toml(tmp_path))
    assert verdicts == [Verdict.OK] * 20 and inner == pkts


def _as_capture(path: Path, datagrams: list[bytes]) -> None:
    """Received ESP-in-UDP payloads as a raw-IP capture (127.0.0.1 port 4500 both ways), for pcap decrypt."""
    path.write_bytes(pcap_file([Rec(ipv4("127.0.0.1", "127.0.0.1", 17, udp(4500, 4500, d))) for d in datagrams],
                               linktype=101))


def test_every_esp_sa_row_encrypt_takes_send_takes_too(tmp_path):
    """A TripleDES-CBC + HMAC-SHA-1-96 row (no suite of the compiled core: esp.pcap.soft, per packet) is sent
    as pcap encrypt would encrypt it, and pcap decrypt with the same table gets every packet back. (Before the
    merge send built its SAs itself and refused such rows.)"""
    pkts = plain_capture(tmp_path, 12)
    table = tmp_path / "esp_sa"
    table.write_text('"IPv4","127.0.0.1","127.0.0.1","0x01020304","TripleDES-CBC [RFC2451]",'
                     '"0x' + "11" * 24 + '","HMAC-SHA-1-96 [RFC2404]","0x' + "22" * 20 + '"\n')
    table.chmod(0o600)
    rx = Receiver()
    r = cli(str(tmp_path / "plain.pcap"), "--sa", str(table), "--port", str(rx.port), "--topspeed", "--loop", "2",
            "--json")
    got = rx.wait(24)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["per_sa"][0]["suite"] == parse_toml_or_table(table).suite.name
    _as_capture(tmp_path / "rx.pcap", [d for d, _ in got])
    s = decrypt_file(tmp_path / "rx.pcap", tmp_path / "out.pcap", str(table), fmt="pcap")
    assert s.exit_code == 0 and s.per_sa[0].packets == 24, s.format()
    with CaptureReader(tmp_path / "out.pcap") as rd:
        inner = [c.data[int(o):int(o) + int(n)].tobytes() for c in rd.chunks()
                 for o, n in zip(c.offsets, c.caplen)]
    assert inner == pkts * 2


def parse_toml_or_table(path: Path):
    from esp.pcap.sa_files import load_keyfile

    return load_keyfile(path).entries[0]


def test_send_and_encrypt_map_packets_to_sas_the_same_way(tmp_path):
    """Overlapping selectors, first match wins: the SPI each packet leaves with is the one pcap encrypt gives
    it (one matcher, esp.pcap.classify.first_match), and what no selector takes is skipped by both."""
    sas = tmp_path / "two.toml"
    sas.write_text("".join(f"""[[sa]]
spi = "{spi}"
suite = "aes128gcm16"
enc_key = "{KEY}"
src = "127.0.0.1"
dst = "127.0.0.1"
mode = "tunnel"
encap = {{ sport = 4500, dport = 4500 }}
selector = {{ {sel} }}
""" for spi, sel in (("0x0000a001", 'src = "10.1.0.0/24", dst = "10.2.0.0/16", proto = 17, dport = 9'),
                     ("0x0000a002", 'src = "10.1.0.0/16", dst = "10.2.0.0/16"'))))
    sas.chmod(0o600)
    pkts = [ipv4("10.1.0.1", "10.2.0.1", 17, udp(1, 9, b"a")),     # both take it: the first
            ipv4("10.1.0.1", "10.2.0.1", 17, udp(1, 10, b"b")),    # port 10: the second
            ipv4("10.1.7.1", "10.2.0.1", 17, udp(1, 9, b"c")),     # outside the first's /24: the second
            ipv4("10.1.0.1", "10.2.0.1", 6, b"\0" * 20),           # TCP: the second
            ipv4("10.9.0.1", "10.2.0.1", 17, udp(1, 9, b"d"))]     # neither
    (tmp_path / "mix.pcap").write_bytes(pcap_file([Rec(p) for p in pkts], linktype=101))
    s = encrypt_file(tmp_path / "mix.pcap", tmp_path / "enc.pcap", str(sas), drop_other=True)
    assert s.exit_code == 0 and s.policy_dropped == 1, s.format()
    with CaptureReader(tmp_path / "enc.pcap") as rd:
        enc_spis = [int.from_bytes(c.data[int(o) + 28:int(o) + 32].tobytes(), "big") for c in rd.chunks()
                    for o in c.offsets]
    assert enc_spis == [0xA001, 0xA002, 0xA002, 0xA002]
    rx = Receiver()
    r = cli(str(tmp_path / "mix.pcap"), "--sa", str(sas), "--port", str(rx.port), "--topspeed", "--json")
    got = rx.wait(4)
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == {"no_sa": 1}, r.stderr
    assert [int.from_bytes(d[:4], "big") for d, _ in got] == enc_spis


def test_an_sa_that_cannot_encrypt_is_one_clear_error_before_sending(tmp_path):
    plain_capture(tmp_path, 3)
    (e,) = parse_toml(sa_toml(tmp_path).read_text()).entries
    import dataclasses

    from esp.pcap.sa_files import AddressMatch
    with pytest.raises(SendError, match="SPI '\\*' cannot encrypt"):
        send_capture(tmp_path / "plain.pcap", [dataclasses.replace(e, spi=None)], pacing=Pacing("top"))
    with pytest.raises(SendError, match="a tunnel needs one outer src and dst"):
        send_capture(tmp_path / "plain.pcap", [dataclasses.replace(e, dst=AddressMatch.parse("127.0.0.0/8"))],
                     pacing=Pacing("top"))
