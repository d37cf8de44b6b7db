"""Traffic selector narrowing (RFC 7296 2.9) as the responder's ChildCreate does it, and extra start children."""
from __future__ import annotations

from dataclasses import replace

from ike.core_config import TrafficSelector as TS
from ike.events import ChildSaEstablished
from ike.tasks.child_create import narrow, ts_subset

from ..helpers import child, drain, pair, psk_peers, roundtrip


def test_narrow_addresses_ports_protocols():
    theirs = (TS.from_cidr("10.0.0.0/8"), TS("10.1.0.0", "10.1.0.255", 17, 500, 4500))
    ours = (TS.from_cidr("10.1.0.0/16", 17), TS.from_cidr("2001:db8::/32"))
    got = narrow(theirs, ours)
    assert got == (TS("10.1.0.0", "10.1.255.255", 17, 0, 65535), TS("10.1.0.0", "10.1.0.255", 17, 500, 4500))
    assert narrow((TS.from_cidr("192.168.0.0/16"),), ours) == ()
    assert narrow((TS.from_cidr("10.0.0.0/8", 6),), (TS.from_cidr("10.0.0.0/8", 17),)) == ()
    assert ts_subset(got, theirs) and not ts_subset(theirs, got)


def test_several_start_children():
    i, r = psk_peers()
    i = replace(i, children=(child("a", local="10.1.0.0/24"), child("b", local="10.1.1.0/24")))
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    names = [e.child for e in drain(a) if isinstance(e, ChildSaEstablished)]
    assert names == ["a", "b"]
    assert len(b.list_sas()[0].children) == 2
