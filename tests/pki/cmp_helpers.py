"""What the in-memory CMP tests share: a URL nobody answers, the fuzz budget, and the transport that joins
espresso's client to a ``CmpResponder`` by a function call instead of HTTP.

The fuzz budget is ``FUZZ_CASES``; ``ESPRESSO_FUZZ_EXAMPLES=N`` (and ``ESPRESSO_FUZZ_SEED``) run more by hand."""
from __future__ import annotations

import os
import random
from collections.abc import Callable

from pki.cmp.server import CmpResponder

URL = "http://cmp.invalid/.well-known/cmp"
FUZZ_CASES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "300"))


def fuzz_seed(default: int) -> int:
    """Each fuzzer keeps its own default seed, so that their cases differ; ESPRESSO_FUZZ_SEED overrides all."""
    return int(os.environ.get("ESPRESSO_FUZZ_SEED", str(default)))


def wire(responder: CmpResponder, log: list | None = None) -> Callable[[str, bytes], bytes]:
    """A client transport answered by ``responder``; ``log`` (when given) gets (request, answer, outcome)."""
    def transport(url: str, data: bytes) -> bytes:
        answer, outcome = responder.respond(data)
        if log is not None:
            log.append((data, answer, outcome))
        return answer
    return transport


def mutate(rng: random.Random, der: bytes) -> bytes:
    """One edit of a valid PKIMessage: 1-4 bit flips, a truncation, 1-16 inserted bytes, or a length byte in the
    outer headers set to a DER corner (0, 0x7f, 0x80, 0x81, 0x84, 0xff), all drawn from ``rng`` (reproducible)."""
    data = bytearray(der)
    op = rng.randrange(4)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:
        data = data[: rng.randrange(len(data))]
    elif op == 2:
        i = rng.randrange(len(data))
        data[i:i] = rng.randbytes(rng.randint(1, 16))
    else:
        data[rng.randrange(min(len(data), 40))] = rng.choice([0x00, 0x7F, 0x80, 0x81, 0x84, 0xFF])
    return bytes(data)
