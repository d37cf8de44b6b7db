"""Known answers from an independent implementation: IKE messages strongSwan 5.9.8 sent (tests/data/ike/),
parsed, checked against their RFC 7296 fields, and the encrypted IKE_AUTH opened with the keys of that IKE_SA."""
from __future__ import annotations

import json

import pytest
from cryptography import x509

from ike.constants import AuthMethod, CertEncoding, ExchangeType, NotifyType, PayloadType
from ike.exchange import decode_message
from ike.message import check_rules, pull_header
from ike.payloads import (AuthPayload, CertPayload, CertReqPayload, KePayload, NoncePayload, NotifyPayload,
                          SaPayload, SkPayload)
from ike.proposal import parse_proposal, proposal_name
from ike.protect import Protector
from tests.support import DATA

CAP = json.loads((DATA / "ike" / "strongswan_initiator.json").read_text())


def test_strongswan_ike_sa_init_request():
    raw = bytes.fromhex(CAP["init_request"])
    h = pull_header(raw)
    assert (h.exchange, h.message_id, h.spi_r, h.flags) == (ExchangeType.IKE_SA_INIT, 0, 0, 0x08)
    assert h.spi_i == CAP["spi_i"]
    msg = decode_message(None, raw, h, {})
    assert msg is not None
    check_rules(msg)
    (sa,) = msg.all(SaPayload)
    assert [proposal_name(p) for p in sa.proposals] == ["aes128gcm16-prfsha256-ecp256"]
    ke = msg.get(KePayload)
    assert ke is not None and ke.group == 19 and len(ke.data) == 64
    nonce = msg.get(NoncePayload)
    assert nonce is not None and len(nonce.data) == 32
    types = {n.type for n in msg.all(NotifyPayload)}
    assert {NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP,
            NotifyType.IKEV2_FRAGMENTATION_SUPPORTED, NotifyType.SIGNATURE_HASH_ALGORITHMS} <= types
    hashes = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    assert hashes is not None and set(hashes.data[i:i + 2] for i in range(0, len(hashes.data), 2)) >= {
        b"\x00\x02", b"\x00\x03", b"\x00\x04"}
    # re-encoding gives the same bytes: our codecs are exact for strongSwan's layout
    assert msg.encode_plain() == raw


def test_strongswan_ike_auth_request_opens_with_its_keys():
    raw = bytes.fromhex(CAP["auth_request"])
    h = pull_header(raw)
    assert (h.exchange, h.message_id, h.next_payload) == (ExchangeType.IKE_AUTH, 1, PayloadType.SK)
    p = parse_proposal("aes128gcm16-prfsha256-ecp256")
    keys = bytes.fromhex(CAP["sk_ei"]), bytes.fromhex(CAP["sk_er"])

    class _Sa:  # the responder's view
        protector = Protector.from_proposal(p, False, keys[0], keys[1], b"", b"", lambda n: bytes(n))

    msg = decode_message(_Sa(), raw, h, {})
    assert msg is not None and msg.encrypted
    check_rules(msg)
    idi = msg.get_id(True)
    assert idi is not None and idi.identity().value == "them.example"
    idr = msg.get_id(False)
    assert idr is not None and idr.identity().value == "me.example"
    cert = msg.get(CertPayload)
    assert cert is not None and cert.encoding == CertEncoding.X509_SIGNATURE
    leaf = x509.load_der_x509_certificate(cert.data)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["them.example"]
    req = msg.get(CertReqPayload)
    assert req is not None and len(req.key_hashes) == 1
    auth = msg.get(AuthPayload)
    assert auth is not None and auth.method == AuthMethod.DIGITAL_SIGNATURE
    assert auth.data[1:1 + auth.data[0]] == bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    assert msg.get_ts(True) is not None and msg.get_ts(False) is not None
    assert msg.notify(NotifyType.INITIAL_CONTACT) is not None
    # a flipped bit anywhere is caught by the AEAD
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 1
    from ike.errors import IntegrityError

    with pytest.raises(IntegrityError):
        decode_message(_Sa(), bytes(bad), h, {})
    assert isinstance(SkPayload, type)


RESP = json.loads((DATA / "ike" / "strongswan_responder.json").read_text())


def test_strongswan_ike_sa_init_response():
    raw = bytes.fromhex(RESP["init_response"])
    h = pull_header(raw)
    assert h.is_response and not h.from_initiator and (h.spi_i, h.spi_r) == (RESP["spi_i"], RESP["spi_r"])
    msg = decode_message(None, raw, h, {})
    assert msg is not None
    check_rules(msg)
    (sa,) = msg.all(SaPayload)
    assert len(sa.proposals) == 1 and proposal_name(sa.proposals[0]) == "aes256-sha256-prfsha256-modp2048"
    ke = msg.get(KePayload)
    assert ke is not None and ke.group == 14 and len(ke.data) == 256
    assert msg.get(CertReqPayload) is not None
    assert msg.encode_plain() == raw


def test_strongswan_fragmented_ike_auth_response_cbc_hmac():
    frags = [bytes.fromhex(x) for x in RESP["auth_response"]]
    headers = [pull_header(f) for f in frags]
    assert [h.next_payload for h in headers] == [PayloadType.SKF, PayloadType.SKF]
    raw, h = frags[0], headers[0]
    p = parse_proposal("aes256-sha256-modp2048")
    k = [bytes.fromhex(RESP[n]) for n in ("sk_ei", "sk_er", "sk_ai", "sk_ar")]

    class _Sa:  # the initiator's view
        protector = Protector.from_proposal(p, True, *k, lambda n: bytes(n))

    buf: dict = {}
    assert decode_message(_Sa(), frags[1], headers[1], buf) is None  # out of order: waits for fragment 1
    msg = decode_message(_Sa(), raw, h, buf)
    assert msg is not None and msg.encrypted and buf == {}
    check_rules(msg)
    idr = msg.get_id(False)
    assert idr is not None and idr.identity().value == "them.example"
    auth = msg.get(AuthPayload)
    assert auth is not None and auth.method == AuthMethod.DIGITAL_SIGNATURE
    assert auth.data[1:1 + auth.data[0]] == bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSA
    (sa,) = msg.all(SaPayload)
    assert proposal_name(sa.proposals[0]) == "aes256-sha256-noesn" and len(sa.proposals[0].spi) == 4
    ts_i, ts_r = msg.get_ts(True), msg.get_ts(False)
    assert ts_i is not None and ts_r is not None
    assert [str(t) for t in ts_i.selectors] == ["10.98.1.1/32"] and [str(t) for t in ts_r.selectors] == ["10.98.2.1/32"]
    # the HMAC covers the header: a changed message ID fails the integrity check
    from ike.errors import IntegrityError

    bad = raw[:20] + b"\x00\x00\x00\x09" + raw[24:]
    with pytest.raises(IntegrityError):
        decode_message(_Sa(), bad, pull_header(bad), {})
    cert = msg.get(CertPayload)
    assert cert is not None and len(cert.data) > 700  # why strongSwan had to fragment
