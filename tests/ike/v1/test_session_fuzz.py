"""Nothing a peer sends raises out of the IKEv1 session: random and mutated datagrams in each initiator state.
The session is driven to each state by scripted responder messages (MM2, MM4). Budget: ESPRESSO_FUZZ_EXAMPLES.
Sessions are configured for AES-CBC/SHA-256 or, where a configuration names them, 3DES/SHA-1 (8-byte blocks)."""
from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.dh import create_dh
from ike.v1.message import Exchange, Payload, PayloadType, pull_message, push_message
from ike.v1.session import ESP_3DES, TRIPLE_DES_CBC, V1Config, V1Session
from tests.ike.v1.memory import exchange

CFG = V1Config("v1", b"secret", "e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", ("127.0.0.1", 500),
               ("127.0.0.2", 500), group=14, pfs_group=14)
CKY_R = b"R" * 8
_3DES = {"enc_alg": TRIPLE_DES_CBC, "enc_key_bits": 192, "hash": "sha1", "esp_transform": ESP_3DES,
         "esp_key_bits": 192, "esp_auth": 2}
CFG_3DES = replace(CFG, **_3DES)


def _session(state: str, cfg: V1Config = CFG) -> tuple[V1Session, list[bytes]]:
    """A session in ``state`` ("mm2", "mm4" or "mm6") and the datagrams it has received so far."""
    s = V1Session(cfg, os.urandom)
    s.initiate(0.0)
    (mm1,) = s.datagrams_to_send()
    h, (sa, *_) = pull_message(mm1)  # the SA, then vendor IDs (DPD, NAT-T)
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
        for cfg in (CFG, CFG_3DES):
            s, _ = _session(state, cfg)
            assert s.state == state and s.dropped == 0


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["mm2", "mm4", "mm6"]), st.binary(max_size=300), st.integers(0, 600), st.binary(max_size=6),
       st.integers(0, 3), st.sampled_from([CFG, CFG_3DES]))
def test_nothing_raises_out_of_the_session(state, blob, cut, splice, which, cfg):
    s, seen = _session(state, cfg)
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
RCFG_3DES = replace(RCFG, **_3DES)


def _rng(seed: int):
    """A reproducible random source, so a fresh responder replays a recorded transcript into the same state."""
    import random
    return random.Random(seed).randbytes


def _pair_transcript(icfg: V1Config = CFG, rcfg: V1Config = RCFG) -> list[bytes]:
    """The initiator's datagrams of one in-memory exchange (MM1, MM3, MM5, QM1, QM3), replayable into a fresh
    responder built with ``_rng(2)``."""
    ex = exchange(icfg, rcfg, _rng(1), _rng(2))
    assert ex.i.state == ex.r.state == "established" and len(ex.ins) == 5
    return ex.ins


TRANSCRIPT = _pair_transcript()
#: responder configuration -> the transcript it replays
TRANSCRIPTS = {RCFG: TRANSCRIPT, RCFG_3DES: _pair_transcript(CFG_3DES, RCFG_3DES)}


def test_transcript_replays_into_a_fresh_responder():
    from ike.v1.responder import V1Responder
    for rcfg, transcript in TRANSCRIPTS.items():
        r = V1Responder(rcfg, _rng(2), transcript[0], 0.0)
        for d in transcript[1:]:
            r.receive_datagram(d, 0.0)
        assert r.state == "established" and r.dropped == 0


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, len(TRANSCRIPT)), st.integers(0, 600), st.binary(min_size=1, max_size=6),
       st.binary(max_size=200), st.sampled_from([RCFG, RCFG_3DES]))
def test_nothing_raises_out_of_the_responder_in_any_state(upto, cut, splice, blob, rcfg):
    """Replay the transcript up to a message into a fresh responder (reaching that state), then mutate it."""
    from ike.errors import ParseError
    from ike.v1.responder import V1Responder
    transcript = TRANSCRIPTS[rcfg]
    base = transcript[upto - 1]
    mutated = base[:cut] + splice + base[cut + len(splice):]
    try:
        r = V1Responder(rcfg, _rng(2), mutated if upto == 1 else transcript[0], 0.0)
    except ParseError:
        return  # refused before any state exists: what a dispatcher counts as a drop
    for d in transcript[1:upto - 1]:
        r.receive_datagram(d, 0.0)
    for d in (mutated, mutated[:24] + len(mutated).to_bytes(4, "big") + mutated[28:], blob):
        r.receive_datagram(d, 1.0)
    r.handle_timer(100.0)


# --- the signature path (ike/v1/auth.py) ----------------------------------------------------------------------
# RSA signatures here are deterministic (PKCS#1 v1.5), so a transcript replays into fresh sessions exactly.

def _sig_cfgs():  # type: ignore[no-untyped-def]
    from tests.ike.v1.sigpki import V1Pki
    pki = V1Pki("rsa")
    return replace(CFG, psk=b"", signature=pki.auth("e")), replace(RCFG, psk=b"", signature=pki.auth("s"))


SIG_CFG, SIG_RCFG = _sig_cfgs()


def _sig_transcript() -> tuple[list[bytes], list[bytes]]:
    """(initiator's datagrams MM1, MM3, MM5, QM1, QM3; responder's MM2, MM4, MM6, QM2) of one certificate
    main mode, replayable into fresh sessions built with ``_rng(1)`` / ``_rng(2)``."""
    ex = exchange(SIG_CFG, SIG_RCFG, _rng(1), _rng(2))
    assert ex.i.state == ex.r.state == "established", (ex.i.last_error, ex.r.last_error)
    return ex.ins, ex.outs


SIG_IN, SIG_OUT = _sig_transcript()


def _sig_responder_at_mm5():  # type: ignore[no-untyped-def]
    from ike.v1.responder import V1Responder
    r = V1Responder(SIG_RCFG, _rng(2), SIG_IN[0], 0.0)
    r.receive_datagram(SIG_IN[1], 0.0)
    assert r.state == "r_mm5"
    return r


def _sig_initiator_at_mm6() -> V1Session:
    i = V1Session(SIG_CFG, _rng(1))
    i.initiate(0.0)
    i.receive_datagram(SIG_OUT[0], 0.0)
    i.receive_datagram(SIG_OUT[1], 0.0)
    assert i.state == "mm6"
    return i


def test_signature_transcript_replays_into_fresh_sessions():
    r = _sig_responder_at_mm5()
    for d in SIG_IN[2:]:
        r.receive_datagram(d, 0.0)
    i = _sig_initiator_at_mm6()
    for d in SIG_OUT[2:]:
        i.receive_datagram(d, 0.0)
    assert (r.state, i.state, r.dropped, i.dropped) == ("established", "established", 0, 0)


_PAYLOAD_TYPES = [PayloadType.ID, PayloadType.CERT, PayloadType.SIG, PayloadType.HASH, PayloadType.CR,
                  PayloadType.N, PayloadType.VID]


@settings(max_examples=_budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["responder", "initiator"]), st.integers(0, 8), st.integers(0, 2000),
       st.binary(max_size=8), st.booleans(), st.lists(st.tuples(st.sampled_from(_PAYLOAD_TYPES),
                                                               st.binary(max_size=40)), max_size=3))
def test_hostile_identity_cert_and_sig_payloads_end_in_a_reason(role, which, cut, splice, drop, extra):
    """Main mode message 5/6 as the peer would encrypt it (the right keys), with its ID, CERT or SIG bodies cut,
    spliced, dropped or joined by others: the session either establishes, drops the datagram or fails with a
    reason and an ISAKMP notify, and never raises."""
    from ike.v1 import keymat as km
    if role == "responder":
        s, base = _sig_responder_at_mm5(), SIG_IN[2]
        cipher = km.Phase1Cipher(s.keys)
    else:
        s, base = _sig_initiator_at_mm6(), SIG_OUT[2]
        cipher = km.Phase1Cipher(s.keys)
        cipher.confirm(SIG_IN[2])  # the chain after our own MM5, as the peer's is
    h, payloads = km.Phase1Cipher(s.keys).decrypt(base) if role == "responder" else _open_mm6(s, base)
    payloads = list(payloads)
    n = which % len(payloads)
    body = payloads[n].body
    if drop:
        del payloads[n]
    else:
        payloads[n] = Payload(payloads[n].type, body[:cut] + splice + body[cut + len(splice):])
    payloads += [Payload(t, b) for t, b in extra]
    mutated = cipher.encrypt(h.cookie_i, h.cookie_r, Exchange.MAIN, 0, payloads)
    before = s.dropped
    s.receive_datagram(mutated, 1.0)
    s.handle_timer(100.0)
    if s.state == "failed":
        assert s.last_error and s.datagrams_to_send()  # the reason, and the notify that tells the peer
    else:
        assert s.state in ("r_mm5", "mm6", "r_qm1", "qm2", "established") or s.dropped > before


def _open_mm6(s: V1Session, mm6: bytes):  # type: ignore[no-untyped-def]
    from ike.v1 import keymat as km
    c = km.Phase1Cipher(s.keys)
    c.confirm(SIG_IN[2])
    return c.decrypt(mm6)


@settings(max_examples=_budget(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, len(SIG_IN)), st.integers(0, 2000), st.binary(min_size=1, max_size=6), st.binary(max_size=200))
def test_nothing_raises_out_of_a_signature_responder_in_any_state(upto, cut, splice, blob):
    r = _sig_responder_at_mm5()
    for d in SIG_IN[2:upto - 1]:
        r.receive_datagram(d, 0.0)
    base = SIG_IN[upto - 1]
    mutated = base[:cut] + splice + base[cut + len(splice):]
    for d in (mutated, mutated[:24] + len(mutated).to_bytes(4, "big") + mutated[28:], blob):
        r.receive_datagram(d, 1.0)
    r.handle_timer(100.0)


def _established_pair(tdes: bool = False):
    """An initiator and a responder with an ISAKMP SA and one ESP SA, DPD on (so probes are outstanding)."""
    icfg, rcfg = (CFG_3DES, RCFG_3DES) if tdes else (CFG, RCFG)
    ex = exchange(replace(icfg, dpd_delay=5.0), replace(rcfg, dpd_delay=5.0))
    assert ex.i.state == ex.r.state == "established"
    return ex.i, ex.r


@settings(max_examples=_budget(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.tuples(st.sampled_from([PayloadType.N, PayloadType.D, PayloadType.SA,
                                                          PayloadType.HASH, 99]),
                                         st.binary(max_size=40)), max_size=4),
       st.integers(0, 400), st.binary(min_size=1, max_size=4), st.sampled_from([None, 36136, 36137, 24578, 24576]),
       st.booleans())
def test_nothing_raises_out_of_informational_handling(towards_responder, payloads, cut, splice, ntype, tdes):
    """Protected informational messages (valid HASH, so the N/D parsers and their actions run) with arbitrary
    payloads, DPD notifies with arbitrary sequence numbers, and mutations of them, into established sessions."""
    import struct
    i, r = _established_pair(tdes)
    sender, receiver = (i, r) if towards_responder else (r, i)
    body = [Payload(t, b) for t, b in payloads]
    if ntype is not None:
        seq = payloads[0][1][:4].rjust(4, b"\0") if payloads else b"\0\0\0\1"
        spi = receiver.cky_i + receiver.cky_r
        body.append(Payload(PayloadType.N, struct.pack("!IBBH", 1, 1, 16, ntype) + spi + seq))
    receiver.handle_timer(5.0)  # a probe outstanding, so ACK handling is reachable
    receiver.datagrams_to_send()
    try:
        sender.send_informational(body)
    except ValueError:
        return  # a payload too large to encode: nothing was sent
    (msg,) = sender.datagrams_to_send()
    for d in (msg, msg, msg[:cut] + splice + msg[cut + len(splice):]):
        receiver.receive_datagram(d, 6.0)
    receiver.handle_timer(100.0)
    receiver.close(100.0)
    assert receiver.state in ("closed", "dead")
