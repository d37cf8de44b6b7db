"""Random API calls over a lossy, duplicating, reordering network (hypothesis): nothing but ike errors escape,
and once the network is quiet both ends agree on their SAs (or the IKE_SA is gone on both)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.errors import InvalidStateError
from ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaTerminated

from .helpers import ADDR_I, ADDR_R, drain, pair, psk_peers, roundtrip

OPS = st.lists(st.sampled_from(["rekey_child_a", "rekey_child_b", "rekey_ike_a", "rekey_ike_b", "delete_child_a",
                                "create_child_a", "deliver", "drop", "dup", "reorder", "tick"]), max_size=14)


def _deliver(src, dst, now, src_addr, dst_addr, mode):  # type: ignore[no-untyped-def]
    dgs = src.datagrams_to_send(now)
    if mode == "drop":
        return
    if mode == "reorder":
        dgs = list(reversed(dgs))
    for d in dgs:
        for _ in range(2 if mode == "dup" else 1):
            dst.receive_datagram(d.data, (src_addr[0], d.local_port), (dst_addr[0], d.addr[1]), now)


# derandomize: CI explores the same examples every run; a new counterexample is found locally, not by chance in CI.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(OPS, st.integers(0, 255), st.booleans())
def test_random_operations_on_lossy_network(ops, seed, lossy_start):
    """``lossy_start``: the network misbehaves from the first IKE_SA_INIT on, not only once established."""
    scenario(ops, seed, lossy_start, psk_peers())


def test_child_rekey_queued_behind_ike_rekey_answer_lost_while_peer_deletes():
    """Found by this fuzzer: a CHILD_SA rekey queued behind an IKE_SA rekey ran on the new IKE_SA but stayed
    bound to the old one (wrong SK_d; its follow-up Delete never sent), leaving a CHILD_SA on one side only.
    Step by step: test_connection.py::
    test_child_rekey_queued_behind_ike_rekey_answer_lost_while_peer_deletes_the_child."""
    scenario(["rekey_ike_b", "rekey_child_b", "drop", "delete_child_a"], 0, False, psk_peers())


_CERT_PEERS: list = []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(OPS, st.integers(0, 255))
def test_lossy_network_with_certificates_and_fragments(ops, seed):
    """RSA certificates and IKE fragmentation (576-byte messages): lost, duplicated and reordered fragments."""
    from .helpers import cert_peers

    if not _CERT_PEERS:
        i, r, _ = cert_peers("rsa", "rsa", fragment_size=576)
        _CERT_PEERS.append((i, r))
    scenario(ops, seed, True, _CERT_PEERS[0])


def scenario(ops, seed, lossy_start, peers):  # type: ignore[no-untyped-def]
    from .helpers import child

    i, r = peers
    a, b = pair(i, r, retransmit_tries=4)
    a.config.random.seed += bytes([seed])
    b.config.random.seed += bytes([seed])
    a.initiate("to-r", 0.0)
    if not lossy_start:
        roundtrip(a, b)
    now = 0.0
    extra = 0
    for op in ops:
        now += 0.5
        sa_a, sa_b = a.list_sas(), b.list_sas()
        try:
            if op == "rekey_child_a" and sa_a and sa_a[0].children:
                a.rekey_child(sa_a[0].children[0].spi_in, now)
            elif op == "rekey_child_b" and sa_b and sa_b[0].children:
                b.rekey_child(sa_b[0].children[0].spi_in, now)
            elif op == "rekey_ike_a" and sa_a:
                a.rekey_ike(sa_a[0].ike_id, now)
            elif op == "rekey_ike_b" and sa_b:
                b.rekey_ike(sa_b[0].ike_id, now)
            elif op == "delete_child_a" and sa_a and sa_a[0].children:
                a.delete_child(sa_a[0].children[0].spi_in, now)
            elif op == "create_child_a" and sa_a:
                extra += 1
                a.connection(sa_a[0].ike_id).create_child(child(f"x{extra}", local=f"10.1.{extra}.0/24"), now)
            elif op == "tick":
                a.handle_timer(now)
                b.handle_timer(now)
        except InvalidStateError:
            pass
        mode = op if op in ("drop", "dup", "reorder") else "deliver"
        _deliver(a, b, now, ADDR_I, ADDR_R, mode)
        _deliver(b, a, now, ADDR_R, ADDR_I, mode)
    # quiet period: deliver everything and let retransmits and retries run out (bounded)
    for _ in range(60):
        roundtrip(a, b, now)
        t = [x for x in (a.get_timer(), b.get_timer()) if x is not None]
        if not t or min(t) > now + 200:
            break
        now = max(now, min(t))
        a.handle_timer(now)
        b.handle_timer(now)
    roundtrip(a, b, now)
    ev_a, ev_b = drain(a), drain(b)
    sa_a, sa_b = a.list_sas(), b.list_sas()
    for ev, sas in ((ev_a, sa_a), (ev_b, sa_b)):
        # the events tell the daemon what to install: they must add up to what the core has
        up = [e.spi_in for e in ev if isinstance(e, ChildSaEstablished)]
        gone = [e.spi_in for e in ev if isinstance(e, ChildSaDeleted)]
        assert len(set(gone)) == len(gone), "a CHILD_SA deleted twice"
        assert set(up) - set(gone) == {c.spi_in for s in sas for c in s.children}
        live = {s.ike_id for s in sas if s.state == "established"}  # an IKE_SA lineage still up never ended
        assert not [e for e in ev if isinstance(e, IkeSaTerminated) and e.ike_id in live]
    live_a = [s for s in sa_a if s.state == "established"]
    live_b = [s for s in sa_b if s.state == "established"]
    assert len(live_a) <= 1 and len(live_b) <= 1 and bool(live_a) == bool(live_b)
    if live_a and live_b:
        assert (live_a[0].spi_i, live_a[0].spi_r) == (live_b[0].spi_i, live_b[0].spi_r)
        pairs_a = {(c.spi_in, c.spi_out) for c in live_a[0].children}
        pairs_b = {(c.spi_out, c.spi_in) for c in live_b[0].children}
        assert pairs_a == pairs_b
        # and the keys of each pair agree (both ends derived them from the same IKE_SA's SK_d and nonces)
        kids_b = {c.spi_out: c for c in b.connection(live_b[0].ike_id).sa.children.values()}
        for c in a.connection(live_a[0].ike_id).sa.children.values():
            assert c.keys == kids_b[c.spi_in].keys, f"CHILD_SA {c.spi_in:08x}: keys differ"

