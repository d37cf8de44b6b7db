"""Nothing a peer sends raises out of aggressive mode: a recorded exchange (PSK and RSA signatures, which are
deterministic) is replayed into fresh sessions up to each message, which is then mutated, truncated or replaced.
Same budget convention as test_session_fuzz.py (ESPRESSO_FUZZ_EXAMPLES)."""
from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.errors import ParseError
from ike.v1.responder import V1Responder
from ike.v1.session import V1Config, V1Session
from tests.ike.v1.memory import exchange
from tests.ike.v1.test_session_fuzz import CFG, CFG_3DES, RCFG, RCFG_3DES, SIG_CFG, SIG_RCFG, _budget, _rng

CFGS: dict[str, tuple[V1Config, V1Config]] = {
    "psk": (replace(CFG, aggressive=True), replace(RCFG, aggressive=True)),
    "psk-3des": (replace(CFG_3DES, aggressive=True), replace(RCFG_3DES, aggressive=True)),
    "sig": (replace(SIG_CFG, aggressive=True), replace(SIG_RCFG, aggressive=True)),
}


def _transcript(kind: str) -> tuple[list[bytes], list[bytes]]:
    """(initiator's AM1, AM3, QM1, QM3; responder's AM2, QM2), replayable with ``_rng(1)`` / ``_rng(2)``."""
    ex = exchange(*CFGS[kind], _rng(1), _rng(2))
    assert ex.i.state == ex.r.state == "established", (ex.i.last_error, ex.r.last_error)
    return ex.ins, ex.outs


TRANSCRIPTS = {k: _transcript(k) for k in CFGS}


def test_transcripts_replay_into_fresh_sessions():
    for kind, (ins, outs) in TRANSCRIPTS.items():
        r = V1Responder(CFGS[kind][1], _rng(2), ins[0], 0.0)
        for d in ins[1:]:
            r.receive_datagram(d, 0.0)
        i = V1Session(CFGS[kind][0], _rng(1))
        i.initiate(0.0)
        for d in outs:
            i.receive_datagram(d, 0.0)
        assert (r.state, i.state, r.dropped, i.dropped) == ("established", "established", 0, 0), kind


def _mutate(base: bytes, cut: int, splice: bytes) -> list[bytes]:
    m = base[:cut] + splice + base[cut + len(splice):]
    return [m, m[:24] + len(m).to_bytes(4, "big") + m[28:] if len(m) >= 28 else m]


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CFGS)), st.integers(0, 3), st.integers(0, 1500), st.binary(min_size=1, max_size=6),
       st.binary(max_size=200))
def test_nothing_raises_out_of_the_aggressive_responder(kind, upto, cut, splice, blob):
    ins, _ = TRANSCRIPTS[kind]
    mutated = _mutate(ins[upto], cut, splice)
    try:
        r = V1Responder(CFGS[kind][1], _rng(2), mutated[0] if upto == 0 else ins[0], 0.0)
    except ParseError:
        return  # refused before any state exists: the dispatcher counts the drop
    for d in ins[1:upto]:
        r.receive_datagram(d, 0.0)
    for d in mutated + [blob]:
        r.receive_datagram(d, 1.0)
    r.handle_timer(100.0)


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CFGS)), st.integers(0, 1), st.integers(0, 1500), st.binary(min_size=1, max_size=6),
       st.binary(max_size=200))
def test_nothing_raises_out_of_the_aggressive_initiator(kind, upto, cut, splice, blob):
    _, outs = TRANSCRIPTS[kind]
    i = V1Session(CFGS[kind][0], _rng(1))
    i.initiate(0.0)
    for d in outs[:upto]:
        i.receive_datagram(d, 0.0)
    for d in _mutate(outs[upto], cut, splice) + [blob]:
        i.receive_datagram(d, 1.0)
    i.handle_timer(100.0)
    assert i.state in ("am2", "qm2", "established", "failed")


def test_responder_without_aggressive_refuses_every_opening():
    ins, _ = TRANSCRIPTS["psk"]
    for cfg in (RCFG, SIG_RCFG):
        try:
            V1Responder(cfg, _rng(2), ins[0], 0.0)
        except ParseError as exc:
            assert "aggressive mode is not enabled" in str(exc)
        else:
            raise AssertionError("aggressive mode accepted by a responder without aggressive = true")
