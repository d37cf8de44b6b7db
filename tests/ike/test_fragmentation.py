"""IKE fragmentation (RFC 7383) as strongSwan's ``fragmentation = yes | accept | no`` and ``fragment_size`` mean it.

``fragment_size`` is the largest IP datagram a fragment makes (IP and UDP headers, the non-ESP marker, the IKE
message), as charon's; "accept" announces support but sends whole messages; "no" does not announce, yet a peer's
fragments are still reassembled. What happens shows in the debug log (``-vv``).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from ike.config import ConfigError, parse_config
from ike.constants import ExchangeType, NotifyType
from ike.core_config import PeerConfig
from ike.events import IkeSaEstablished
from ike.fragment import datagram_overhead
from ike.message import pull_header

from .helpers import ADDR_I, ADDR_R, cert_peers, drain, pair

SIZE = 576


def _run(i: PeerConfig, r: PeerConfig) -> tuple[list[tuple[str, bytes]], list, list]:  # type: ignore[type-arg]
    """Establish in memory; returns every datagram sent (sender 'i'/'r', bytes) and both sides' events."""
    a, b = pair(i, r)
    a.initiate(i.name, 0.0)
    sent: list[tuple[str, bytes]] = []
    for _ in range(20):
        moved = 0
        for src, dst, name, sh, dh in ((a, b, "i", ADDR_I[0], ADDR_R[0]), (b, a, "r", ADDR_R[0], ADDR_I[0])):
            for d in src.datagrams_to_send(0.0):
                moved += 1
                sent.append((name, d.data))
                dst.receive_datagram(d.data, (sh, d.local_port), (dh, d.addr[1]), 0.0)
        if not moved:
            break
    return sent, drain(a), drain(b)


def _skf(data: bytes) -> bool:
    return pull_header(data).next_payload == 53  # SKF


def test_yes_fragments_within_the_ip_datagram_size(caplog: pytest.LogCaptureFixture) -> None:
    i, r, _ = cert_peers("rsa", "rsa", fragment_size=SIZE)
    with caplog.at_level(logging.DEBUG, logger="ike.exchange"):
        sent, ea, eb = _run(i, r)
    assert any(isinstance(e, IkeSaEstablished) for e in ea) and any(isinstance(e, IkeSaEstablished) for e in eb)
    frags = [(who, d) for who, d in sent if _skf(d)]
    assert {who for who, _ in frags} == {"i", "r"}
    # the whole IP datagram (IPv4 20 + UDP 8 + marker 4 + IKE) stays within fragment_size, as charon counts it
    assert max(len(d) for _, d in frags) + 32 <= SIZE
    assert max(len(d) for _, d in frags) + 32 > SIZE - 64  # and uses it (not a smaller, stricter limit)
    text = caplog.text
    assert "splitting IKE_AUTH request 1 [" in text and "bytes (IP datagram)" in text
    assert "reassembled IKE_AUTH request 1 from" in text and "reassembled IKE_AUTH response 1 from" in text
    assert "received fragment 1/" in text


def test_accept_announces_but_sends_whole(caplog: pytest.LogCaptureFixture) -> None:
    i, r, _ = cert_peers("rsa", "rsa", fragment_size=SIZE)
    i = replace(i, fragmentation="accept")
    with caplog.at_level(logging.DEBUG, logger="ike.exchange"):
        sent, ea, eb = _run(i, r)
    assert any(isinstance(e, IkeSaEstablished) for e in ea)
    first = sent[0][1]
    assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED.to_bytes(2, "big") in first  # announced
    assert not any(_skf(d) for who, d in sent if who == "i")  # ours go whole
    assert any(_skf(d) for who, d in sent if who == "r")  # the peer's come in fragments, reassembled
    whole = [d for who, d in sent if who == "i" and pull_header(d).exchange == ExchangeType.IKE_AUTH]
    assert whole and len(whole[0]) + 32 > SIZE
    assert "whole" in caplog.text and "fragmentation = accept" in caplog.text


def test_no_does_not_announce_and_peer_sends_whole() -> None:
    i, r, _ = cert_peers("rsa", "rsa", fragment_size=SIZE)
    i = replace(i, fragmentation="no")
    sent, ea, _ = _run(i, r)
    assert any(isinstance(e, IkeSaEstablished) for e in ea)
    assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED.to_bytes(2, "big") not in sent[0][1]
    assert not any(_skf(d) for _, d in sent)


def test_no_still_reassembles_what_a_peer_fragments() -> None:
    """charon's rule: fragments are accepted even with fragmentation = no (a peer may fragment regardless)."""
    i, r, _ = cert_peers("rsa", "rsa", fragment_size=SIZE)
    r = replace(r, fragmentation="no")  # the responder does not announce; the initiator fragments only if it did
    sent, ea, eb = _run(i, r)
    assert any(isinstance(e, IkeSaEstablished) for e in eb)
    assert not any(_skf(d) for _, d in sent)


def test_datagram_overhead_by_family() -> None:
    assert datagram_overhead("192.0.2.1") == 20 + 8 + 4
    assert datagram_overhead("2001:db8::1") == 40 + 8 + 4


def test_config_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = """
[daemon]
addresses = ["127.0.0.1"]
control_socket = "s"
[peers.p]
remote_addr = "127.0.0.2"
auth = "psk"
psk = "a long enough lab secret"
local_id = "a.test"
remote_id = "b.test"
fragmentation = {value}
[peers.p.children.c]
local_ts = "10.1.0.0/24"
remote_ts = "10.2.0.0/24"
"""
    for value, want in (('"yes"', "yes"), ('"accept"', "accept"), ('"no"', "no"), ('"force"', "yes"),
                        ("true", "yes"), ("false", "no")):
        cfg = parse_config(base.format(value=value), base=tmp_path)
        assert cfg.core.peers[0].fragmentation == want
    with pytest.raises(ConfigError, match="peers.p.fragmentation"):
        parse_config(base.format(value='"sometimes"'), base=tmp_path)
