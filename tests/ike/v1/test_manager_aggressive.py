"""The daemon's IKEv1 side with aggressive mode: an initiator whose peer says ``aggressive = true`` opens with it
and the ESP SAs come up through the manager; a responder whose peer does not allow it refuses the opening (a counted
drop and a log line, nothing sent back, no half-open state) although the peer is otherwise the same."""
from __future__ import annotations

import logging

from ike.events import ChildSaEstablished, IkeSaEstablished
from ike.v1.message import Exchange, pull_header
from tests.ike.v1.test_manager import _events, _pair, _pump


def test_aggressive_mode_through_the_manager():
    a, b = _pair(aggressive=True)
    a.initiate("b", 0.0)
    wire = _pump(a, b, 0.0)
    assert pull_header(wire[0].data).exchange == Exchange.AGGRESSIVE
    ea, eb = _events(a), _events(b)
    assert [type(e) for e in ea] == [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished], (ea, eb)
    assert ea[1].enc_key_out == eb[1].enc_key_in and ea[1].spi_out == eb[1].spi_in


def test_responder_without_aggressive_refuses_it(caplog):
    a, _ = _pair(aggressive=True)
    _, b = _pair()
    a.initiate("b", 0.0)
    with caplog.at_level(logging.INFO, logger="ike"):
        _pump(a, b, 0.0, rounds=3)
    assert b.stats["v1_dropped_aggressive_not_allowed"] >= 1 and not b.v1.list_sas() and _events(b) == []
    assert "aggressive mode from 192.0.2.1 refused: peer a does not allow it" in caplog.text
    assert b.datagrams_to_send(0.0) == []
