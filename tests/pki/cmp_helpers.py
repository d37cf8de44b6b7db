"""What the in-memory CMP tests share: a URL nobody answers, the fuzz budget, and the transport that joins
espresso's client to a ``CmpResponder`` by a function call instead of HTTP.

The fuzz budget is ``FUZZ_CASES``; ``ESPRESSO_FUZZ_EXAMPLES=N`` (and ``ESPRESSO_FUZZ_SEED``) run more by hand."""
from __future__ import annotations

import os
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
