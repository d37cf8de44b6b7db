"""Fuzz past the integrity check: a peer holding the SK keys sends mutated IKE_AUTH, CREATE_CHILD_SA and
INFORMATIONAL messages (issue 12).

Two in-memory peers are driven to the exchange under test; its request (or response) is opened with the real
keys, its inner payload chain mutated structure-aware (payloads dropped, duplicated, reordered, retyped, made
critical; bodies bit-flipped, truncated, extended or swapped for hostile templates such as the DER-edited
certificates of tests/ike/hostile.py, huge counts, bad groups; lengths that lie; the chain truncated), then
sealed again with the real keys, as one SK payload or as RFC 7383 fragments, and delivered. Then both peers
run their timers to the end of every retransmit. Asserted: nothing leaves ``receive_datagram`` (the
dispatcher's last-resort guard counts ``dropped_internal_error``, which must stay 0: a guard that fires is a
bug found), a request gets an answer or a counted drop, and state stays bounded.

Budget: ``ESPRESSO_FUZZ_EXAMPLES`` (default 250, a few seconds in CI); e.g. ``ESPRESSO_FUZZ_EXAMPLES=20000``
by hand (with ``--timeout=0``: pytest-timeout stops a test at 300 s).
"""
from __future__ import annotations

import os
import struct
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.constants import PayloadType
from ike.dispatcher import Dispatcher
from ike.payloads import DeletePayload, KePayload, NoncePayload, NotifyPayload, SaPayload
from ike.payloads.sa import Proposal, Transform
from ike.tasks.dpd import Dpd

from .helpers import ADDR_I, ADDR_R, CaForTests, cert_peers, child, drain, pair, psk_peers, roundtrip, transfer
from .hostile import hostile_certificates, reseal, sa_of

EXAMPLES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "250"))

_CA = CaForTests.create()
_CERT_PEERS = cert_peers(ca=_CA)[:2]
_PSK_PEERS = psk_peers()
_TEMPLATE = _CA.issue("evil", "ecdsa", [x509.DNSName("i.example")])[1].public_bytes(Encoding.DER)
_HOSTILE_CERTS = [der for _, der in hostile_certificates(_TEMPLATE)]


def _with_second_child(peers):  # type: ignore[no-untyped-def]
    i, r = peers
    i = replace(i, children=(*i.children, child("net2", "10.1.1.0/24", "10.2.1.0/24", start=False)))
    return i, r


PEERS = {"psk": _with_second_child(_PSK_PEERS), "cert": _with_second_child(_CERT_PEERS)}

# (exchange scenario, which side sends the request)
SCENARIOS = ["auth", "create-child", "rekey-child", "rekey-ike", "delete-child", "dpd", "delete-ike"]


def _ts(count: int, entries: bytes) -> bytes:
    return struct.pack("!B3x", count) + entries


def _templates() -> dict[int, list[bytes]]:
    """Hostile bodies per payload type: valid framing, values a careless parser or task trips over."""
    v4 = struct.pack("!BBHHH", 7, 0, 16, 0, 65535)
    return {
        PayloadType.CERT: [bytes([4]) + d for d in _HOSTILE_CERTS]
        + [bytes([12]) + b"\x00" * 20 + b"http://x.invalid/", bytes([4]), bytes([255]) + b"\xff"],
        PayloadType.CERTREQ: [bytes([4]) + b"\x01" * 19, bytes([4]) + b"\x02" * 20 * 300, bytes([0])],
        PayloadType.SA: [
            SaPayload((Proposal(1, 3, b"\x00" * 4, (Transform(1, 12, 8191),)),)).push(),
            SaPayload((Proposal(1, 1, b"\x01" * 8, (Transform(1, 20, 0), Transform(4, 0xFFFF))),)).push(),
            SaPayload((Proposal(1, 3, b"", ()),)).push(),
            SaPayload(tuple(Proposal(n + 1, 3, b"\x00" * 4, (Transform(1, 20, 128),)) for n in range(60))).push(),
            SaPayload((Proposal(1, 2, b"\x00" * 4, (Transform(3, 12), Transform(5, 1))),)).push(),
            b"\x00\x00\x00\x08\x01\x03\x04\x00",
        ],
        PayloadType.KE: [KePayload(19, b"\x04").push(), KePayload(19, b"\x07" + b"\x01" * 64).push(),
                         KePayload(31, b"\x00" * 32).push(), KePayload(31, b"\x01" * 31).push(),
                         KePayload(14, b"\x00" * 256).push(), KePayload(14, b"\x01").push(),
                         KePayload(0xFFFF, b"").push(), KePayload(2, b"\xff" * 128).push()],
        PayloadType.NONCE: [b"", b"\x01", b"\x02" * 300, NoncePayload(b"\x03" * 256).push()],
        PayloadType.NOTIFY: [NotifyPayload(16393, b"", 3, b"\x00" * 4).push(),  # REKEY_SA, unknown SPI
                             NotifyPayload(16393, b"", 1, b"\x00" * 8).push(),
                             NotifyPayload(16431, b"\x00\x02\x00").push(),  # SIGNATURE_HASH_ALGORITHMS, odd
                             NotifyPayload(16388, b"").push(), NotifyPayload(16390, b"\x00" * 300).push(),
                             NotifyPayload(17, b"\xff").push(), NotifyPayload(24).push(),
                             NotifyPayload(16384, b"", 9, b"\x00" * 255).push(),
                             NotifyPayload(16430, b"\x00\x05").push(), NotifyPayload(16391).push(),
                             NotifyPayload(16392, b"\x01").push(), NotifyPayload(44, b"", 3, b"\xff" * 4).push()],
        PayloadType.DELETE: [DeletePayload(1).push(), DeletePayload(3, (b"\x00" * 4,) * 3).push(),
                             b"\x03\x04\xff\xff" + b"\x00" * 8, b"\x09\x04\x00\x01\x00\x00\x00\x01",
                             b"\x01\x08\x00\x01" + b"\x00" * 8, b"\x03\x00\x00\x05"],
        PayloadType.TSi: [_ts(255, v4 + bytes(8)), _ts(1, v4[:4] + b"\xff\xff\xff\xff" + b"\x0a" * 8),
                          _ts(1, struct.pack("!BBHHH", 7, 6, 16, 9, 1) + b"\x0a\x00\x00\x09\x0a\x00\x00\x01"),
                          _ts(1, struct.pack("!BBHHH", 8, 0, 40, 0, 65535) + b"\xff" * 32), _ts(0, b""),
                          _ts(2, struct.pack("!BBHHH", 7, 0, 16, 0, 65535) + bytes(8)
                              + struct.pack("!BBHHH", 8, 0, 40, 0, 65535) + bytes(32)),
                          _ts(1, struct.pack("!BBHHH", 13, 0, 8, 0, 0))],
        PayloadType.IDi: [b"\x09\x00\x00\x00\x30\x80", b"\x01\x00\x00\x00\x01", b"\x0b\x00\x00\x00",
                          b"\x09\x00\x00\x00" + _TEMPLATE[:60]],
        PayloadType.AUTH: [b"\x0e\x00\x00\x00\xff", b"\x0e\x00\x00\x00\x05\x30\x03\x06\x01\x00",
                           b"\x01\x00\x00\x00", b"\x09\x00\x00\x00" + b"\x00" * 64,
                           b"\x0e\x00\x00\x00\x0d" + bytes.fromhex("300b06092a864886f70d01010a") + b"\x00" * 8],
        PayloadType.CP: [b"\x01\x00\x00\x00\x00\x01\x00\x04\x0a\x00\x00\x01", b"\x02\x00\x00\x00\x00\x01\xff\xff",
                         b"\x07\x00\x00\x00"],
    }


TEMPLATES = _templates()
TEMPLATES[PayloadType.TSr] = TEMPLATES[PayloadType.TSi]
TEMPLATES[PayloadType.IDr] = TEMPLATES[PayloadType.IDi]
TYPES = sorted(set(TEMPLATES) | {PayloadType.VENDOR, 0, 1, 46, 48, 53, 128, 255})


def _encode(chain: list[list], lie: tuple[int, int] | None) -> bytes:  # type: ignore[type-arg]
    out = bytearray()
    for n, (_, crit, body) in enumerate(chain):
        nxt = chain[n + 1][0] if n + 1 < len(chain) else 0
        length = 4 + len(body)
        if lie is not None and lie[0] == n:
            length = lie[1]
        out += struct.pack("!BBH", nxt & 0xFF, 0x80 if crit else 0, length & 0xFFFF) + body
    return bytes(out)


@st.composite
def mutations(draw):  # type: ignore[no-untyped-def]
    """A list of edit operations, applied to whatever chain the scenario produces."""
    ops = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["drop", "dup", "swap", "flip", "truncate", "extend", "retype", "critical",
                                     "insert", "template", "template", "template", "cert", "cert"]))
        ops.append((kind, draw(st.integers(0, 63)), draw(st.integers(0, 2 ** 16)),
                    draw(st.binary(max_size=24)), draw(st.sampled_from(TYPES))))
    raw = draw(st.sampled_from([None, None, None, "lie", "cut", "first"]))
    return ops, raw, draw(st.integers(0, 2 ** 16)), draw(st.sampled_from([0, 0, 0, 2, 3]))


def _mutator(ops, raw, rawarg):  # type: ignore[no-untyped-def]
    def mutate(payloads: list) -> bytes:  # type: ignore[type-arg]
        chain = [[p.payload_type, False, p.push()] for p in payloads]
        for kind, i, n, blob, ptype in ops:
            if not chain and kind not in ("insert", "template"):
                continue
            j = i % len(chain) if chain else 0
            if kind == "drop":
                del chain[j]
            elif kind == "dup":
                chain.insert(j, list(chain[j]))
            elif kind == "swap":
                k = n % len(chain)
                chain[j], chain[k] = chain[k], chain[j]
            elif kind == "flip" and chain[j][2]:
                b = bytearray(chain[j][2])
                b[n % len(b)] ^= 1 << (n % 8)
                chain[j][2] = bytes(b)
            elif kind == "truncate":
                chain[j][2] = chain[j][2][: n % (len(chain[j][2]) + 1)]
            elif kind == "extend":
                chain[j][2] = chain[j][2] + blob
            elif kind == "retype":
                chain[j][0] = ptype
            elif kind == "critical":
                chain[j][1] = True
            elif kind == "insert":
                chain.insert(j, [ptype, False, blob])
            elif kind == "cert":  # the leaf (first CERT) becomes a DER-edited certificate
                body = TEMPLATES[PayloadType.CERT][n % len(TEMPLATES[PayloadType.CERT])]
                certs = [c for c in chain if c[0] == PayloadType.CERT]
                if certs:
                    certs[0][2] = body
                else:
                    chain.insert(j, [PayloadType.CERT, False, body])
            elif kind == "template":
                # mostly a hostile version of a payload the exchange carries, sometimes any other type
                own = chain[j][0] if chain and chain[j][0] in TEMPLATES else None
                t = own if own is not None and n % 4 else (ptype if ptype in TEMPLATES else PayloadType.CERT)
                body = TEMPLATES[t][n % len(TEMPLATES[t])]
                same = [c for c in chain if c[0] == t]
                if same and n % 2:
                    same[0][2] = body
                else:
                    chain.insert(j, [t, False, body])
        data = _encode(chain, (rawarg % max(1, len(chain)), rawarg % 300) if raw == "lie" else None)
        if raw == "cut":
            data = data[: rawarg % (len(data) + 1)]
        return data
    return mutate


def _child_spi(d: Dispatcher, name: str) -> int:
    for sa in d.list_sas():
        for c in sa.children:
            if c.name == name:
                return c.spi_in
    raise AssertionError(f"no child {name}")


def _request(scenario: str, a: Dispatcher, b: Dispatcher, now: float) -> tuple[Dispatcher, Dispatcher]:
    """Drive the pair to the request of ``scenario``; returns (requester, responder). The request is waiting
    in the requester's output."""
    if scenario == "auth":
        a.initiate("to-r", 0.0)
        transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
        transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
        return a, b
    a.initiate("to-r", 0.0)
    roundtrip(a, b, 0.0)
    drain(a), drain(b)
    ike_a = a.list_sas()[0].ike_id
    if scenario == "create-child":
        a.initiate("to-r", now, child="net2")
        return a, b
    if scenario == "rekey-child":
        b.rekey_child(_child_spi(b, "net"), now)
        return b, a
    if scenario == "rekey-ike":
        a.rekey_ike(ike_a, now)
        return a, b
    if scenario == "delete-child":
        a.delete_child(_child_spi(a, "net"), now)
        return a, b
    if scenario == "dpd":
        conn = b.connection(b.list_sas()[0].ike_id)
        conn._queue([Dpd(conn.sa, True)], now)
        return b, a
    a.terminate(ike_a, now)
    return a, b


def _addrs(d: Dispatcher, a: Dispatcher) -> tuple[tuple[str, int], tuple[str, int]]:
    """(source, destination) of a datagram sent by ``d``."""
    return (ADDR_I, ADDR_R) if d is a else (ADDR_R, ADDR_I)


def _bounded(d: Dispatcher) -> None:
    assert d.stats["dropped_internal_error"] == 0, d.stats
    assert d.half_open() <= 1 and len(d._conns) <= 1, d.list_sas()
    for conn in d._conns.values():
        assert len(conn.old) <= 3
        for sa, tm in [(conn.sa, conn.tm), *conn.old]:
            assert len(sa.children) <= d.config.max_child_sas
            assert len(tm.reassembly) <= 2 and len(tm.queue) <= 8


def _finish(a: Dispatcher, b: Dispatcher, now: float) -> None:
    """Both peers run every timer (retransmits, give-ups, half-open timeouts), bounded in count and time."""
    for _ in range(60):
        ts = [t for t in (a.get_timer(), b.get_timer()) if t is not None and t <= now + 400]
        if not ts:
            break
        t = min(ts)
        a.handle_timer(t)
        b.handle_timer(t)
        roundtrip(a, b, t)
    drain(a), drain(b)


def fuzz_one(auth: str, scenario: str, response: bool, mutation) -> None:  # type: ignore[no-untyped-def]
    ops, raw, rawarg, fragments = mutation
    a, b = pair(*PEERS[auth])
    now = 1.0
    req_d, resp_d = _request(scenario, a, b, now)
    t_now = 0.0 if scenario == "auth" else now
    src, dst = _addrs(req_d, a)
    request = [d.data for d in req_d.datagrams_to_send(t_now)]
    assert len(request) == 1, scenario
    keys = {req_d: sa_of(req_d), resp_d: sa_of(resp_d)}  # the exchange's IKE_SA, before it may end or rekey
    if response:
        resp_d.receive_datagram(request[0], src, dst, t_now)
        answer = [d.data for d in resp_d.datagrams_to_send(t_now)]
        assert len(answer) == 1
        sender, target, data = resp_d, req_d, answer[0]
        src, dst = dst, src
    else:
        sender, target, data = req_d, resp_d, request[0]
    mutate = _mutator(ops, raw, rawarg)
    bad = reseal(data, keys[target], keys[sender], mutate, fragments,
                 first_override=(rawarg % 256) if raw == "first" else None)
    before = dict(target.stats)
    for frag in bad:
        target.receive_datagram(frag, src, dst, t_now)
    out = target.datagrams_to_send(t_now)
    if not response:
        # an answer (the exchange's response or an error notify), or a counted drop
        assert out or target.stats != before, (target.stats, before)
    for dg in out:
        sender.receive_datagram(dg.data, dst, src, t_now)
    _bounded(a)
    _bounded(b)
    roundtrip(a, b, t_now)
    _finish(a, b, t_now)
    _bounded(a)
    _bounded(b)
    assert a.half_open() == 0 and b.half_open() == 0


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(auth=st.sampled_from(sorted(PEERS)), scenario=st.sampled_from(["auth"] * 3 + SCENARIOS), response=st.booleans(),
       mutation=mutations())
def test_sealed_mutations_never_escape(auth: str, scenario: str, response: bool, mutation) -> None:  # type: ignore[no-untyped-def]
    fuzz_one(auth, scenario, response, mutation)


def test_every_scenario_runs_unmutated() -> None:
    """The harness itself: with no edits each scenario completes as the real exchange would."""
    for auth in PEERS:
        for scenario in SCENARIOS:
            for response in (False, True):
                fuzz_one(auth, scenario, response, ([], None, 0, 0))


def test_sealed_informational_flood_keeps_memory_flat() -> None:
    """An authenticated peer sends 1,200 INFORMATIONAL requests with mutated contents the IKE_SA survives
    (unknown notifies, vendor IDs, bit flips in them, unknown non-critical payloads): every one is answered,
    and after a warm-up nothing accumulates (measured with tracemalloc)."""
    import logging
    import random
    import tracemalloc

    rng = random.Random(12)
    a, b = pair(*PEERS["psk"])
    a.initiate("to-r", 0.0)
    roundtrip(a, b, 0.0)
    drain(a), drain(b)
    conn = a.connection(a.list_sas()[0].ike_id)

    def mutate(payloads: list) -> bytes:  # type: ignore[type-arg]
        chain = [[p.payload_type, False, p.push()] for p in payloads]
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["notify", "vendor", "unknown"])
            body = rng.randbytes(rng.randint(0, 64))
            if kind == "notify":
                chain.append([PayloadType.NOTIFY, False, struct.pack("!BBH", 0, 0, rng.randint(8192, 16383)) + body])
            elif kind == "vendor":
                chain.append([PayloadType.VENDOR, False, body])
            else:
                chain.append([rng.randint(128, 255), False, body])
        return _encode(chain, None)

    def exchange(n: int) -> None:
        now = 10.0 + n
        conn._queue([Dpd(conn.sa, True)], now)
        (req,) = [d.data for d in a.datagrams_to_send(now)]
        (bad,) = reseal(req, sa_of(b), sa_of(a), mutate)
        b.receive_datagram(bad, ADDR_I, ADDR_R, now)
        (resp,) = b.datagrams_to_send(now)
        a.receive_datagram(resp.data, ADDR_R, ADDR_I, now)
        drain(a), drain(b)

    ike = logging.getLogger("ike")
    level = ike.level
    ike.setLevel(logging.WARNING)  # the test's log capture would otherwise be what grows
    try:
        for n in range(200):
            exchange(n)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for n in range(200, 1400):
                exchange(n)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    finally:
        ike.setLevel(level)
    growth = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert growth < 32 * 1024, f"{growth} bytes kept after 1,200 mutated INFORMATIONAL exchanges"
    assert a.list_sas()[0].state == "established" and b.list_sas()[0].state == "established"
    _bounded(a)
    _bounded(b)
