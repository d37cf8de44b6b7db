"""Hostile certificates in IKE_AUTH, sent by a peer that holds the SK keys (issue 12).

Each certificate is a real one with one defect edited into its DER (tests/ike/hostile.py). Whichever side
receives it, nothing may raise out of ``Dispatcher.receive_datagram``: the responder answers
AUTHENTICATION_FAILED and forgets the half-open IKE_SA; the initiator gives up with AUTHENTICATION_FAILED, tells
the responder (RFC 7296 2.21.2), and both end with no IKE_SA. Retransmits of the hostile message are dropped
quietly. Both the test stand-in validator and the real ``pki.validate.Validator`` are used: the boundary must
not depend on which validator the configuration supplies.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ike.authenticators import pki_validator
from ike.constants import NotifyType
from ike.events import AuthenticationFailed, IkeSaEstablished, IkeSaTerminated
from ike.payloads import CertPayload, IdPayload, NotifyPayload

from .helpers import ADDR_I, ADDR_R, CaForTests, cert_peers, drain, pair, transfer
from .hostile import hostile_certificates, reseal, sa_of

_CA = CaForTests.create()
_PEERS = cert_peers(ca=_CA)
_TEMPLATE = _CA.issue("evil", "ecdsa", [x509.DNSName("i.example"), x509.DNSName("r.example")])[1]
HOSTILE = hostile_certificates(_TEMPLATE.public_bytes(Encoding.DER))


def _peers(validator: str):  # type: ignore[no-untyped-def]
    i, r, _ = _PEERS
    if validator == "pki":
        from pki.validate import ValidationPolicy, Validator

        v = pki_validator(Validator([_CA.cert], ValidationPolicy(check_revocation=False)))
        i, r = replace(i, validator=v), replace(r, validator=v)
    return i, r


def _swap_cert(der: bytes):  # type: ignore[no-untyped-def]
    def mutate(payloads: list) -> list:  # type: ignore[type-arg]
        return [CertPayload(p.encoding, der) if isinstance(p, CertPayload) else p for p in payloads]
    return mutate


def _no_internal_errors(*ds) -> None:  # type: ignore[no-untyped-def]
    for d in ds:
        assert not [k for k in d.stats if "internal" in k], d.stats


@pytest.mark.parametrize("validator", ["simple", "pki"])
@pytest.mark.parametrize("name,der", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_responder_answers_authentication_failed(name: str, der: bytes, validator: str) -> None:
    a, b = pair(*_peers(validator))
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    (auth,) = [d.data for d in a.datagrams_to_send(0.0)]
    (bad,) = reseal(auth, sa_of(b), sa_of(a), _swap_cert(der))
    b.receive_datagram(bad, ADDR_I, ADDR_R, 0.0)
    eb = drain(b)
    assert [e for e in eb if isinstance(e, AuthenticationFailed)], eb
    assert not [e for e in eb if isinstance(e, IkeSaEstablished)]
    assert b.half_open() == 0 and b.list_sas() == []
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    ea = drain(a)
    assert [e.notify for e in ea if isinstance(e, IkeSaTerminated)] == [NotifyType.AUTHENTICATION_FAILED]
    for t in (1.0, 5.0):  # the initiator's retransmits of the hostile message: quietly dropped
        b.receive_datagram(bad, ADDR_I, ADDR_R, t)
        assert b.datagrams_to_send(t) == []
    assert b.stats["dropped_unknown_spi"] == 2
    _no_internal_errors(a, b)


@pytest.mark.parametrize("validator", ["simple", "pki"])
@pytest.mark.parametrize("name,der", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_initiator_gives_up_and_tells_responder(name: str, der: bytes, validator: str) -> None:
    a, b = pair(*_peers(validator))
    a.initiate("to-r", 0.0)
    for _ in range(2):
        transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
        if _ == 0:
            transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    (resp,) = [d.data for d in b.datagrams_to_send(0.0)]
    (bad,) = reseal(resp, sa_of(a), sa_of(b), _swap_cert(der))
    a.receive_datagram(bad, ADDR_R, ADDR_I, 0.0)
    ea = drain(a)
    assert [e for e in ea if isinstance(e, AuthenticationFailed)], ea
    assert [e.notify for e in ea if isinstance(e, IkeSaTerminated)] == [NotifyType.AUTHENTICATION_FAILED]
    assert a.list_sas() == []
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])  # INFORMATIONAL with AUTHENTICATION_FAILED
    assert b.list_sas() == [] and b.half_open() == 0
    a.receive_datagram(bad, ADDR_R, ADDR_I, 1.0)  # a duplicate of the hostile response
    assert a.datagrams_to_send(1.0) == []
    _no_internal_errors(a, b)


@pytest.mark.parametrize("id_type,data", [(9, b"\x30\x03\x31\x01"), (9, b"\x30\x80"), (9, b"\xff" * 8),
                                          (1, b"\x01\x02\x03"), (2, b"\xff\xfe"), (3, b"\xc3\x28"),
                                          (5, b"\x00" * 15), (11, b"")])
def test_malformed_idi_is_invalid_syntax(id_type: int, data: bytes) -> None:
    """A peer's ID payload is parsed at the same boundary: a malformed one is INVALID_SYNTAX, not a crash."""
    a, b = pair(*_peers("simple"))
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    (auth,) = [d.data for d in a.datagrams_to_send(0.0)]

    def mutate(payloads: list) -> list:  # type: ignore[type-arg]
        return [IdPayload(id_type, data, True) if isinstance(p, IdPayload) and p.initiator else p
                for p in payloads]
    (bad,) = reseal(auth, sa_of(b), sa_of(a), mutate)
    b.receive_datagram(bad, ADDR_I, ADDR_R, 0.0)
    assert b.half_open() == 0 and b.list_sas() == []
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    notifies = [e.notify for e in drain(a) if isinstance(e, IkeSaTerminated)]
    assert notifies in ([NotifyType.INVALID_SYNTAX], [NotifyType.AUTHENTICATION_FAILED])
    _no_internal_errors(a, b)


def test_hostile_certreq_and_hash_url_are_harmless() -> None:
    """CERTREQ contents and hash-and-URL certificates (which we do not fetch) never reach a parser that raises."""
    a, b = pair(*_peers("simple"))
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    (auth,) = [d.data for d in a.datagrams_to_send(0.0)]
    from ike.payloads import CertReqPayload

    def mutate(payloads: list) -> list:  # type: ignore[type-arg]
        out = [CertPayload(12, b"\x00" * 20 + b"http://x.invalid/" + b"\xff" * 5) if isinstance(p, CertPayload)
               else p for p in payloads]
        return out + [CertReqPayload(4, b"\x01" * 19), CertReqPayload(255, b"\xff" * 3),
                      NotifyPayload(NotifyType.INITIAL_CONTACT, b"\xff" * 9)]
    (bad,) = reseal(auth, sa_of(b), sa_of(a), mutate)
    b.receive_datagram(bad, ADDR_I, ADDR_R, 0.0)
    assert b.half_open() == 0 and b.list_sas() == []
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    assert [e.notify for e in drain(a) if isinstance(e, IkeSaTerminated)] in (
        [NotifyType.AUTHENTICATION_FAILED], [NotifyType.INVALID_SYNTAX])
    _no_internal_errors(a, b)


def test_last_resort_guard_is_a_counted_drop(monkeypatch, caplog) -> None:
    """A bug reached by a peer's datagram (here: a task that raises something no handler knows) is a counted
    drop with one log line and no traceback; the IKE_SA is forgotten, so retransmits are dropped as unknown."""
    import logging

    from ike.tasks.cert_pre import CertPre

    def broken(self, msg):  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    a, b = pair(*_peers("simple"))
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    (auth,) = [d.data for d in a.datagrams_to_send(0.0)]
    monkeypatch.setattr(CertPre, "process", broken)
    with caplog.at_level(logging.INFO, logger="ike"):
        for t in (0.0, 4.0, 11.0):
            b.receive_datagram(auth, ADDR_I, ADDR_R, t)
    assert b.stats["dropped_internal_error"] == 1 and b.stats["dropped_unknown_spi"] == 2
    assert b.half_open() == 0 and b.list_sas() == []
    assert [e.reason for e in drain(b) if isinstance(e, IkeSaTerminated)] == ["internal error (KeyError)"]
    lines = [r for r in caplog.records if "internal error" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].exc_info is None
