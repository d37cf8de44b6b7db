"""Several IKEv1 peers at one address (wildcards, road warriors): the responder picks the configuration by the
proposal in the first message and by the initiator's identity once it is known (main mode's fifth message,
aggressive mode's first), as IKEv2's responder does by IDi; with a pre-shared key only among peers that share the
key, since SKEYID is already made of it."""
from __future__ import annotations

from dataclasses import replace

from ike.v1.session import Phase1Done, V1Config
from tests.ike.v1.memory import events, exchange
from tests.ike.v1.sigpki import V1Pki


def _cfg(name: str, local: str, remote: str, lts: str, rts: str, **kw) -> V1Config:  # type: ignore[no-untyped-def]
    return V1Config(name, kw.pop("psk", b"k" * 20), local, remote, lts, rts, ("127.0.0.1", 500),
                    ("127.0.0.2", 500), **kw)


def _names(ex) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    evs = [e for e in events(ex.r) if isinstance(e, Phase1Done)]
    return ex.r.config.name, evs[0].peer if evs else ""


def _certificates(other: str) -> tuple[V1Config, V1Config, V1Config]:
    """The initiator f.test with its certificate, the responder's first peer (e.test) and another for ``other``,
    all from one CA."""
    pki = V1Pki("ecdsa")
    pki.creds["f"] = pki.sub.issue("f", "f.test")
    init = _cfg("i", "f.test", "s.test", "10.0.3.0/24", "10.0.2.0/24", signature=pki.auth("f"))
    first = _cfg("alice", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", signature=pki.auth("s"))
    return init, first, _cfg("bob", "s.test", other, "10.0.2.0/24", "10.0.3.0/24", signature=pki.auth("s"))


def test_certificates_choose_the_peer_by_the_identity_in_main_mode_5():
    init, first, second = _certificates("f.test")
    ex = exchange(init, first, alternatives=[second])
    assert (ex.i.state, ex.r.state) == ("established", "established"), (ex.i.last_error, ex.r.last_error)
    assert _names(ex) == ("bob", "bob")
    # the quick mode ran with the chosen peer's proxy identities
    assert ex.r.config.remote_ts == "10.0.3.0/24"


def test_no_configuration_names_the_initiator():
    init, first, other = _certificates("g.test")
    ex = exchange(init, first, alternatives=[other])
    assert ex.r.state == "failed" and "is not the configured" in ex.r.last_error
    assert ex.i.state == "failed" and ex.i.last_error == "peer sent INVALID-ID-INFORMATION"


def test_the_proposal_chooses_in_the_first_message():
    init = _cfg("i", "f.test", "s.test", "10.0.3.0/24", "10.0.2.0/24", enc_key_bits=256, hash="sha384", group=20)
    first = _cfg("alice", "s.test", "f.test", "10.0.2.0/24", "10.0.1.0/24")
    second = _cfg("bob", "s.test", "f.test", "10.0.2.0/24", "10.0.3.0/24", enc_key_bits=256, hash="sha384",
                  group=20)
    ex = exchange(init, first, alternatives=[second])
    assert ex.r.state == "established" and _names(ex) == ("bob", "bob")


def test_a_shared_key_lets_the_identity_choose():
    init = _cfg("i", "f.test", "s.test", "10.0.3.0/24", "10.0.2.0/24")
    first = _cfg("alice", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24")
    second = _cfg("bob", "s.test", "f.test", "10.0.2.0/24", "10.0.3.0/24")
    ex = exchange(init, first, alternatives=[second])
    assert ex.r.state == "established" and _names(ex) == ("bob", "bob")


def test_another_key_cannot_take_over_after_main_mode_3():
    """With pre-shared keys main mode binds the key to the address (RFC 2409 5.4): a peer with another key at the
    same address cannot be chosen by its identity, and the attempt is refused, not raised."""
    init = _cfg("i", "f.test", "s.test", "10.0.3.0/24", "10.0.2.0/24", psk=b"other key, bob's" * 2)
    first = _cfg("alice", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24")
    second = replace(first, name="bob", remote_id="f.test", remote_ts="10.0.3.0/24", psk=b"other key, bob's" * 2)
    ex = exchange(init, first, alternatives=[second])
    assert ex.r.state != "established" and ex.r.config.name == "alice" and ex.r.dropped >= 1


def test_aggressive_mode_chooses_by_the_identity_in_its_first_message():
    """Aggressive mode names the initiator before the key is used, so each peer may have its own key."""
    init = _cfg("i", "f.test", "s.test", "10.0.3.0/24", "10.0.2.0/24", psk=b"bob's own key" * 2, aggressive=True)
    first = _cfg("alice", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", aggressive=True)
    second = _cfg("bob", "s.test", "f.test", "10.0.2.0/24", "10.0.3.0/24", psk=b"bob's own key" * 2,
                  aggressive=True)
    closed = replace(second, name="dave", aggressive=False)
    ex = exchange(init, first, alternatives=[closed, second])
    assert (ex.i.state, ex.r.state) == ("established", "established"), (ex.i.last_error, ex.r.last_error)
    assert _names(ex) == ("bob", "bob")
