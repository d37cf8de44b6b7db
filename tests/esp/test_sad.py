"""SAD semantics: lookups, binding, make-before-break, copy-on-write snapshots, bad input."""
from __future__ import annotations

import os

import pytest

from esp import Direction, Sa, SaParams
from esp.sad import Sad
from esp.spd import Selector


def sa(spi: int, direction: str, dst: str = "192.0.2.2") -> Sa:
    return Sa(SaParams(spi=spi, direction=Direction(direction), suite="aes128gcm16", enc_key=os.urandom(20),
                       src="192.0.2.1", dst=dst))


def test_inbound_lookup_by_spi_and_destination():
    sad = Sad()
    e = sad.install(sa(0x1001, "in"), policy="p", selectors=[Selector("10.0.0.0/24", "10.1.0.0/24")])
    s = sad.snapshot
    assert s.lookup_inbound(0x1001, "192.0.2.2") is e
    assert s.lookup_inbound(0x1001) is e  # SPI alone (NAT-traversed peers)
    assert s.lookup_inbound(0x1002) is None
    assert e.direction == "in" and e.dst == "192.0.2.2" and e.policy == "p"
    with pytest.raises(ValueError):
        sad.install(sa(0x1001, "in"))  # duplicate SPI


def test_outbound_binding_moves_to_the_new_sa_and_old_stays_until_removed():
    sad = Sad()
    old = sad.install(sa(0x2001, "out"), policy="p")
    before = sad.snapshot
    new = sad.install(sa(0x2002, "out"), policy="p")
    assert before.outbound["p"] is old  # a batch holding the old snapshot keeps its SA
    assert sad.snapshot.outbound["p"] is new
    assert set(sad.snapshot.outbound_by_spi) == {0x2001, 0x2002}
    sad.remove(0x2001, "out")
    assert sad.snapshot.outbound["p"] is new and len(sad) == 1
    sad.remove(0x2002, "out")
    assert "p" not in sad.snapshot.outbound
    with pytest.raises(ValueError):
        sad.install(sa(0x2003, "out"))  # outbound needs a policy


def test_make_before_break_inbound():
    sad = Sad()
    sad.install(sa(0x3001, "in"), policy="p")
    sad.install(sa(0x3002, "in"), policy="p")
    assert {0x3001, 0x3002} <= set(sad.snapshot.inbound_by_spi)
    sad.remove(0x3001, "in")
    assert set(sad.snapshot.inbound_by_spi) == {0x3002}
    with pytest.raises(KeyError):
        sad.remove(0x3001, "in")
    with pytest.raises(KeyError):
        sad.remove(0x3002, "in", dst="198.51.100.1")
    with pytest.raises(ValueError):
        sad.remove(0x3002, "sideways")


def test_remove_policy_removes_both_directions_and_versions_count():
    sad = Sad()
    v0 = sad.snapshot.version
    sad.install(sa(0x4001, "in"), policy="p")
    sad.install(sa(0x4002, "out"), policy="p")
    sad.install(sa(0x4003, "in"), policy="q")
    gone = sad.remove_policy("p")
    assert sorted(e.spi for e in gone) == [0x4001, 0x4002]
    assert set(sad.snapshot.inbound_by_spi) == {0x4003} and not sad.snapshot.outbound
    assert sad.snapshot.version == v0 + 4


def test_bad_objects_are_refused():
    sad = Sad()
    with pytest.raises(TypeError):
        sad.install(object())


def test_removing_the_bound_outbound_sa_hands_the_policy_to_the_newest_remaining():
    """A CHILD_SA rekey collision leaves two new outbound SAs; deleting the loser (bound last) must not leave
    the policy without an SA while the winner is installed."""
    sad = Sad()
    old = sad.install(sa(0x5001, "out"), policy="p")
    winner = sad.install(sa(0x5002, "out"), policy="p")
    loser = sad.install(sa(0x5003, "out"), policy="p")
    sad.install(sa(0x5004, "out"), policy="q")
    assert sad.snapshot.outbound["p"] is loser
    sad.remove(0x5003, "out")
    assert sad.snapshot.outbound["p"] is winner
    sad.remove(0x5001, "out")  # not bound: the binding stays
    assert sad.snapshot.outbound["p"] is winner
    sad.remove(0x5002, "out")
    assert "p" not in sad.snapshot.outbound and sad.snapshot.outbound["q"].spi == 0x5004
    assert old.order < winner.order < loser.order


def test_watchers_hear_every_change_of_the_sad_and_spd_after_it_is_in_place():
    """How the gateway's compiled loop learns that its copy of the tables is stale: a callback per change,
    run when the new snapshot is already readable, and none after unwatch."""
    from esp.spd import Policy, Spd

    sad, spd = Sad(), Spd()
    seen: list[tuple[str, int]] = []

    def on_sad() -> None:
        seen.append(("sad", sad.snapshot.version))

    def on_spd() -> None:
        seen.append(("spd", spd.snapshot.version))

    sad.watch(on_sad)
    spd.watch(on_spd)
    spd.add(Policy("p", Selector("10.0.0.0/8", "10.1.0.0/16")))
    sad.install(sa(0x100, "out"), policy="p")
    sad.remove(0x100, "out")
    spd.remove("p")
    assert seen == [("spd", 1), ("sad", 1), ("sad", 2), ("spd", 2)]
    sad.unwatch(on_sad)
    spd.unwatch(on_spd)
    sad.install(sa(0x101, "out"), policy="p")
    assert len(seen) == 4
