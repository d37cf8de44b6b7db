"""Property tests: random sizes round-trip for every suite; any single flipped bit is refused."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from esp import SUITES
from esp.errors import AuthenticationFailed, PacketError

from .helpers import ipv4, ipv6, sa_pair, udp

AUTHENTICATED = sorted(s for s in SUITES if not s.endswith("-none"))


@settings(max_examples=25, deadline=None)
@given(suite=st.sampled_from(AUTHENTICATED), payload=st.binary(max_size=1500), v6=st.booleans(),
       mode=st.sampled_from(["tunnel", "transport"]), esn=st.booleans())
def test_random_round_trip(suite: str, payload: bytes, v6: bool, mode: str, esn: bool) -> None:
    out, inb = sa_pair(suite, v6=v6, mode=mode, esn=esn)
    pkt = ipv6(udp(payload)) if v6 else ipv4(udp(payload))
    assert inb.decrypt(out.encrypt(pkt)) == pkt


@settings(max_examples=40, deadline=None)
@given(suite=st.sampled_from(AUTHENTICATED), payload=st.binary(max_size=200), data=st.data())
def test_single_flipped_bit_is_refused(suite: str, payload: bytes, data) -> None:
    out, inb = sa_pair(suite, mode="transport")
    wire = bytearray(out.encrypt(ipv4(udp(payload))))
    # Flip one bit after the IP header and the SPI: in sequence number, IV, ciphertext or ICV.
    pos = data.draw(st.integers(20 + 4, len(wire) - 1))
    bit = data.draw(st.integers(0, 7))
    wire[pos] ^= 1 << bit
    with pytest.raises(PacketError) as exc:
        inb.decrypt(bytes(wire))
    # A flipped sequence-number bit can also land outside the window; both are refusals.
    assert isinstance(exc.value, AuthenticationFailed) or pos < 28
