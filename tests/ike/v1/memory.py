"""An IKEv1 initiator and responder exchanging datagrams in memory (no sockets), as the v1 unit tests and fuzzers
drive them: one helper, so that every test runs the same exchange loop and records the wire the same way."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ike.v1.responder import V1Responder
from ike.v1.session import V1Config, V1Session


@dataclass
class Exchanged:
    """Both ends after the exchange, and what each sent: ``wire`` in the order it crossed, ``ins`` the
    initiator's datagrams (its first included), ``outs`` the responder's."""
    i: V1Session
    r: V1Responder
    wire: list[bytes] = field(default_factory=list)
    ins: list[bytes] = field(default_factory=list)
    outs: list[bytes] = field(default_factory=list)


def exchange(icfg: V1Config, rcfg: V1Config, rng_i: Callable[[int], bytes] = os.urandom,
             rng_r: Callable[[int], bytes] = os.urandom, rounds: int = 4,
             alternatives: Sequence[V1Config] = ()) -> Exchanged:
    """Run phase 1 and quick mode (main or aggressive, as the configs say) for at most ``rounds`` round trips;
    the caller asserts how far it got. Seeded ``rng_i``/``rng_r`` make the transcript replayable;
    ``alternatives`` are the responder's other peers at the initiator's address."""
    i = V1Session(icfg, rng_i)
    i.initiate(0.0)
    (first,) = i.datagrams_to_send()
    r = V1Responder(rcfg, rng_r, first, 0.0, alternatives=alternatives)
    ex = Exchanged(i, r, [first], [first])
    for _ in range(rounds):
        for d in r.datagrams_to_send():
            ex.wire.append(d)
            ex.outs.append(d)
            i.receive_datagram(d, 0.0)
        for d in i.datagrams_to_send():
            ex.wire.append(d)
            ex.ins.append(d)
            r.receive_datagram(d, 0.0)
    return ex


def events(s: V1Session) -> list:
    """Every event the session has queued, draining it."""
    out = []
    while (ev := s.next_event()) is not None:
        out.append(ev)
    return out
