"""Nothing a peer sends raises out of the IKEv1 session: random and mutated datagrams in each initiator state.
The session is driven to each state by scripted responder messages (MM2, MM4). Budget: ESPRESSO_FUZZ_EXAMPLES."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.dh import create_dh
from ike.v1.message import Exchange, Payload, PayloadType, pull_message, push_message
from ike.v1.session import V1Config, V1Session

CFG = V1Config("v1", b"secret", "e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", ("127.0.0.1", 500),
               ("127.0.0.2", 500), group=14, pfs_group=14)
CKY_R = b"R" * 8


def _session(state: str) -> tuple[V1Session, list[bytes]]:
    """A session in ``state`` ("mm2", "mm4" or "mm6") and the datagrams it has received so far."""
    s = V1Session(CFG, os.urandom)
    s.initiate(0.0)
    (mm1,) = s.datagrams_to_send()
    h, (sa,) = pull_message(mm1)
    got: list[bytes] = []
    if state == "mm2":
        return s, got
    mm2 = push_message(h.cookie_i, CKY_R, Exchange.MAIN, 0, 0, [sa])
    s.receive_datagram(mm2, 0.0)
    got.append(mm2)
    s.datagrams_to_send()
    if state == "mm4":
        return s, got
    dh = create_dh(14, os.urandom)
    mm4 = push_message(h.cookie_i, CKY_R, Exchange.MAIN, 0, 0,
                       [Payload(PayloadType.KE, dh.public), Payload(PayloadType.NONCE, b"n" * 32)])
    s.receive_datagram(mm4, 0.0)
    got.append(mm4)
    assert s.state == "mm6"
    got += s.datagrams_to_send()  # its own encrypted MM5, a template for encrypted input
    return s, got


def _budget(default: int) -> int:
    return int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", default))


def test_scripted_states_are_reached():
    for state in ("mm2", "mm4", "mm6"):
        s, _ = _session(state)
        assert s.state == state and s.dropped == 0


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["mm2", "mm4", "mm6"]), st.binary(max_size=300), st.integers(0, 600), st.binary(max_size=6),
       st.integers(0, 3))
def test_nothing_raises_out_of_the_session(state, blob, cut, splice, which):
    s, seen = _session(state)
    if seen:
        base = seen[which % len(seen)]
        mutated = base[:cut] + splice + base[cut + len(splice):]
        s.receive_datagram(mutated, 1.0)
        # the same, with a consistent header length, so it reaches the payload parsers and the cipher
        fixed = mutated[:24] + len(mutated).to_bytes(4, "big") + mutated[28:] if len(mutated) >= 28 else mutated
        s.receive_datagram(fixed, 1.0)
    s.receive_datagram(blob, 1.0)
    s.handle_timer(100.0)
    assert s.state in (state, "mm4", "mm6", "qm2", "failed")


RCFG = V1Config("v1", b"secret", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", ("127.0.0.2", 500),
                ("127.0.0.1", 500), group=14, pfs_group=14)


def _rng(seed: int):
    """A reproducible random source, so a fresh responder replays a recorded transcript into the same state."""
    import random
    return random.Random(seed).randbytes


def _pair_transcript() -> list[bytes]:
    """The initiator's datagrams of one in-memory exchange (MM1, MM3, MM5, QM1, QM3), replayable into a fresh
    responder built with ``_rng(2)``."""
    from ike.v1.responder import V1Responder
    i = V1Session(CFG, _rng(1))
    i.initiate(0.0)
    (mm1,) = i.datagrams_to_send()
    r = V1Responder(RCFG, _rng(2), mm1, 0.0)
    out = [mm1]
    for _ in range(4):
        for d in r.datagrams_to_send():
            i.receive_datagram(d, 0.0)
        for d in i.datagrams_to_send():
            out.append(d)
            r.receive_datagram(d, 0.0)
    assert i.state == r.state == "established" and len(out) == 5
    return out


TRANSCRIPT = _pair_transcript()


def test_transcript_replays_into_a_fresh_responder():
    from ike.v1.responder import V1Responder
    r = V1Responder(RCFG, _rng(2), TRANSCRIPT[0], 0.0)
    for d in TRANSCRIPT[1:]:
        r.receive_datagram(d, 0.0)
    assert r.state == "established" and r.dropped == 0


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, len(TRANSCRIPT)), st.integers(0, 600), st.binary(min_size=1, max_size=6),
       st.binary(max_size=200))
def test_nothing_raises_out_of_the_responder_in_any_state(upto, cut, splice, blob):
    """Replay the transcript up to a message into a fresh responder (reaching that state), then mutate it."""
    from ike.errors import ParseError
    from ike.v1.responder import V1Responder
    base = TRANSCRIPT[upto - 1]
    mutated = base[:cut] + splice + base[cut + len(splice):]
    try:
        r = V1Responder(RCFG, _rng(2), mutated if upto == 1 else TRANSCRIPT[0], 0.0)
    except ParseError:
        return  # refused before any state exists: what a dispatcher counts as a drop
    for d in TRANSCRIPT[1:upto - 1]:
        r.receive_datagram(d, 0.0)
    for d in (mutated, mutated[:24] + len(mutated).to_bytes(4, "big") + mutated[28:], blob):
        r.receive_datagram(d, 1.0)
    r.handle_timer(100.0)
