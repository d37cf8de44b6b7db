from __future__ import annotations

import pytest

from ike.errors import ConfigError, NoProposalChosenError
from ike.proposal import esp_suite_name, parse_proposal, parse_proposals, proposal_name, select_proposal


@pytest.mark.parametrize("text,name", [
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-prfsha256-ecp256"),
    ("aes256-sha256-modp2048", "aes256-sha256-prfsha256-modp2048"),
    ("chacha20poly1305-prfsha512-curve25519", "chacha20poly1305-prfsha512-curve25519"),
])
def test_ike_names(text, name):
    assert proposal_name(parse_proposal(text)) == name


@pytest.mark.parametrize("text,suite", [("aes128gcm16-esn", "aes128gcm16"), ("aes256-sha256", "aes256-sha256"),
                                        ("aes128-sha512-modp3072", "aes128-sha512")])
def test_esp(text, suite):
    p = parse_proposal(text, 3, 1, b"\0" * 4)
    assert esp_suite_name(p) == suite


@pytest.mark.parametrize("bad", ["aes128gcm16-sha256-ecp256", "aes256-ecp256", "aes128gcm16-prfsha256", "foo",
                                 "aes128gcm16-prfsha256-ecp256-esn"])
def test_bad_strings(bad):
    with pytest.raises(ConfigError):
        parse_proposal(bad)


def test_selection_follows_initiator_order_and_needs_overlap():
    ours = parse_proposals(["aes256-sha256-modp2048", "aes128gcm16-prfsha256-ecp256"])
    theirs = parse_proposals(["aes128gcm16-aes256gcm16-prfsha384-prfsha256-ecp256"])
    assert proposal_name(select_proposal(ours, theirs, 1)) == "aes128gcm16-prfsha256-ecp256"
    with pytest.raises(NoProposalChosenError):
        select_proposal(ours, parse_proposals(["aes128gcm16-prfsha512-ecp384"]), 1)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_AEAD = ["aes128gcm16", "aes256gcm16", "chacha20poly1305"]
_CBC = ["aes128", "aes256"]
_INTEG = ["sha256", "sha384", "sha512"]
_PRF = ["prfsha256", "prfsha384", "prfsha512"]
_DH = ["modp2048", "modp3072", "ecp256", "ecp384", "ecp521", "curve25519"]


@st.composite
def ike_strings(draw):  # type: ignore[no-untyped-def]
    if draw(st.booleans()):
        parts = [draw(st.sampled_from(_AEAD)), draw(st.sampled_from(_PRF))]
    else:
        parts = [draw(st.sampled_from(_CBC)), draw(st.sampled_from(_INTEG))]
    parts.append(draw(st.sampled_from(_DH)))
    return "-".join(parts)


@settings(max_examples=200, deadline=None)
@given(ike_strings(), ike_strings())
def test_names_round_trip_and_selection_is_symmetric_in_content(a, b):
    pa, pb = parse_proposal(a), parse_proposal(b)
    assert parse_proposal(proposal_name(pa)).transforms == pa.transforms
    # a proposal always selects itself; two different single-algorithm proposals never match
    assert proposal_name(select_proposal([pa], [pa], 1)) == proposal_name(pa)
    if set(pa.transforms) != set(pb.transforms):
        with pytest.raises(NoProposalChosenError):
            select_proposal([pa], [pb], 1)
