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
