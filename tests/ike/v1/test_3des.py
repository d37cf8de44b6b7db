"""3DES-CBC for IKEv1, accepted only where a configuration names it (issue 17): phase 1 with OAKLEY encryption
algorithm 5 (RFC 2409 Appendix A: no Key Length attribute, a 24-byte key expanded from SKEYID_e per Appendix B,
8-byte blocks and IVs) and quick mode with ESP_3DES (RFC 2407 4.4.4, 24 bytes of KEYMAT), in both modes and roles;
a peer configured for AES refuses a 3DES offer and the other way round."""
from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ike.errors import ParseError
from ike.events import ChildSaEstablished, IkeSaTerminated
from ike.v1 import keymat as km
from ike.v1.message import Exchange, Payload, PayloadType, decode_sa, pull_message
from ike.v1.responder import V1Responder
from ike.v1.session import ESP_3DES, ESP_AES, P1_ENC, P1_KEYLEN, P2_KEYLEN, V1Config, V1Session, esp_suite
from tests.ike.v1.memory import events, exchange

TDES = km.OAKLEY_3DES_CBC


def _pair_cfgs(enc_i: int = TDES, enc_r: int = TDES, esp_i: int = ESP_3DES, esp_r: int = ESP_3DES,
               hash_name: str = "sha1", aggressive: bool = False) -> tuple[V1Config, V1Config]:
    def cfg(me: str, them: str, lts: str, rts: str, enc: int, esp: int, local: str, remote: str) -> V1Config:
        return V1Config("v1", b"secret", me, them, lts, rts, (local, 500), (remote, 500), enc_alg=enc,
                        enc_key_bits=192 if enc == TDES else 128, hash=hash_name, esp_transform=esp,
                        esp_key_bits=192 if esp == ESP_3DES else 128, esp_auth=2, aggressive=aggressive)
    return (cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", enc_i, esp_i, "127.0.0.1", "127.0.0.2"),
            cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", enc_r, esp_r, "127.0.0.2", "127.0.0.1"))


def test_phase1_3des_key_is_expanded_and_ivs_are_one_block():
    """Appendix B: SHA-1's 20-byte SKEYID_e is too short for 3DES's 24 bytes: K1 = prf(SKEYID_e, 0),
    K2 = prf(SKEYID_e, K1); the IVs (5.3) are hashes cut to 3DES's 8-byte block; CBC is 3DES-EDE."""
    skeyid, gxy, ci, cr, gxi, gxr = b"s" * 20, b"g" * 256, b"I" * 8, b"R" * 8, b"x" * 256, b"y" * 256
    keys = km.derive_phase1("sha1", skeyid, gxy, ci, cr, gxi, gxr, km.Phase1Algorithm(TDES, 24))
    d = hmac.new(skeyid, gxy + ci + cr + b"\x00", "sha1").digest()
    a = hmac.new(skeyid, d + gxy + ci + cr + b"\x01", "sha1").digest()
    e = hmac.new(skeyid, a + gxy + ci + cr + b"\x02", "sha1").digest()
    k1 = hmac.new(e, b"\x00", "sha1").digest()
    k2 = hmac.new(e, k1, "sha1").digest()
    assert keys.skeyid_e == e and keys.enc_key == (k1 + k2)[:24]
    assert keys.iv == hashlib.sha1(gxi + gxr).digest()[:8]
    ours = km.Phase1Cipher(keys)
    dg = ours.encrypt(ci, cr, Exchange.MAIN, 0, [Payload(PayloadType.ID, b"\x02\x00\x00\x00e.test")])
    ct = dg[28:]
    assert len(ct) % 8 == 0 and len(ct) < 32  # padded to 8-byte blocks, not to AES's 16
    dec = Cipher(TripleDES(keys.enc_key), modes.CBC(keys.iv)).decryptor()
    plain = dec.update(ct) + dec.finalize()
    assert plain[4:14] == b"\x02\x00\x00\x00e.test"
    # a fresh cipher of the same SA reads it; phase 2's IV is hash(last phase-1 block | M-ID) cut to 8 bytes
    _, payloads = km.Phase1Cipher(keys).decrypt(dg)
    assert payloads[0].body == b"\x02\x00\x00\x00e.test"
    assert ours.iv(5) == hashlib.sha1(ct[-8:] + struct.pack("!I", 5)).digest()[:8]


def test_phase1_algorithm_refuses_key_lengths_the_cipher_has_not():
    for alg, key_len in ((TDES, 16), (km.OAKLEY_AES_CBC, 20), (1, 8)):
        with pytest.raises(ValueError):
            km.Phase1Algorithm(alg, key_len)


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
@pytest.mark.parametrize("esp", [ESP_3DES, ESP_AES], ids=["esp-3des", "esp-aes"])
@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_3des_pair_establishes_in_both_modes(aggressive, esp, hash_name):
    icfg, rcfg = _pair_cfgs(esp_i=esp, esp_r=esp, hash_name=hash_name, aggressive=aggressive)
    ex = exchange(icfg, rcfg)
    assert (ex.i.state, ex.r.state, ex.i.dropped, ex.r.dropped) == ("established", "established", 0, 0)
    # the offer on the wire: OAKLEY 3DES, no Key Length attribute (strongSwan and JUNOS send none either)
    (t,) = decode_sa(pull_message(ex.ins[0])[1][0].body).proposals[0].transforms
    assert t.get(P1_ENC) == TDES and t.get(P1_KEYLEN) is None
    assert ex.i.keys is not None and len(ex.i.keys.enc_key) == 24 and ex.i.keys.enc_key == ex.r.keys.enc_key
    a = next(e for e in events(ex.i) if isinstance(e, ChildSaEstablished))
    b = next(e for e in events(ex.r) if isinstance(e, ChildSaEstablished))
    want = ("3des-sha1", 24) if esp == ESP_3DES else ("aes128-sha1", 16)
    assert (a.suite, len(a.enc_key_in)) == (b.suite, len(b.enc_key_out)) == want
    assert len(a.integ_key_in) == 20
    assert (a.enc_key_out, a.integ_key_out, a.spi_out) == (b.enc_key_in, b.integ_key_in, b.spi_in)


def test_esp_3des_suite_and_keymat_lengths():
    """RFC 2407 4.4.4: ESP_3DES is transform 3 with no Key Length attribute; 24 bytes of KEYMAT for the cipher."""
    assert esp_suite(ESP_3DES, 192, 2) == ("3des-sha1", 24, 20)
    assert esp_suite(ESP_3DES, 192, 5) == ("3des-sha256", 24, 32)
    assert esp_suite(ESP_3DES, 192, 7) == ("3des-sha512", 24, 64)


def test_quick_mode_offers_esp_3des_without_a_key_length():
    icfg, rcfg = _pair_cfgs()
    ex = exchange(icfg, rcfg)
    assert ex.r.state == "established"
    # QM1 is the initiator's fourth datagram; the responder's cipher has forgotten that exchange, so it derives
    # the phase-2 IV again from the last phase-1 block and the message ID
    _, payloads = ex.r._cipher.decrypt(ex.ins[3])
    sa = decode_sa(next(p.body for p in payloads if p.type == PayloadType.SA))
    (t,) = sa.proposals[0].transforms
    assert t.transform_id == ESP_3DES and t.get(P2_KEYLEN) is None


@pytest.mark.parametrize("enc_i,enc_r", [(TDES, km.OAKLEY_AES_CBC), (km.OAKLEY_AES_CBC, TDES)],
                         ids=["3des-offered-to-aes", "aes-offered-to-3des"])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_a_responder_configured_otherwise_refuses_the_offer(enc_i, enc_r, aggressive):
    icfg, rcfg = _pair_cfgs(enc_i=enc_i, enc_r=enc_r, aggressive=aggressive)
    i = V1Session(icfg, os.urandom)
    i.initiate(0.0)
    (first,) = i.datagrams_to_send()
    with pytest.raises(ParseError, match="no proposed ISAKMP transform"):
        V1Responder(rcfg, os.urandom, first, 0.0)


def test_esp_3des_offered_to_an_aes_child_is_refused():
    icfg, rcfg = _pair_cfgs(esp_i=ESP_3DES, esp_r=ESP_AES)
    ex = exchange(icfg, rcfg)
    assert ex.i.state == "qm2" and ex.r.state != "established" and ex.r.dropped >= 1
    assert "no proposed ESP transform" in ex.r.last_error


def test_list_sas_names_3des_as_swanctl_does():
    from ike.listing import swanctl_algorithms
    assert swanctl_algorithms("3des-sha1-modp2048", ike=True) == "3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048"
    assert swanctl_algorithms("3des-sha256") == "3DES_CBC/HMAC_SHA2_256_128"


def _dispatchers(ike_a: str, ike_b: str, esp: str = "aes128-sha256"):  # type: ignore[no-untyped-def]
    from ike.core_config import ChildConfig, CoreConfig, Identity, PeerConfig, TrafficSelector
    from ike.v1.adapter import VersionDispatcher

    def peer(name: str, me: str, them: str, local: str, remote: str | None, lts: str, rts: str, ike: str):
        child = ChildConfig("net", (TrafficSelector.from_cidr(lts),), (TrafficSelector.from_cidr(rts),),
                            esp_proposals=(esp,), version=1)
        return PeerConfig(name, Identity("fqdn", me), Identity("fqdn", them), remote_addr=remote, local_addr=local,
                          ike_proposals=(ike,), auth="psk", remote_auth="psk", psk=b"v1-lab-secret-0123",
                          children=(child,), version=1)
    a = VersionDispatcher(CoreConfig((peer("b", "a.test", "b.test", "192.0.2.1", "198.51.100.2", "10.1.0.0/24",
                                           "10.2.0.0/24", ike_a),), retransmit_timeout=1.0))
    b = VersionDispatcher(CoreConfig((peer("a", "b.test", "a.test", "198.51.100.2", None, "10.2.0.0/24",
                                           "10.1.0.0/24", ike_b),), retransmit_timeout=1.0))
    return a, b


def test_3des_offered_to_an_aes_responder_gets_no_proposal_chosen():
    """The responder keeps no state and answers with an unencrypted NO_PROPOSAL_CHOSEN (as charon does), so the
    initiator gives up at once with that reason instead of retransmitting into silence."""
    from ike.v1.informational import NotifyType, pull_notify
    a, b = _dispatchers("3des-sha1-modp2048", "aes128-sha256-modp2048")
    a.initiate("b", 0.0)
    (mm1,) = a.datagrams_to_send(0.0)
    b.receive_datagram(mm1.data, ("192.0.2.1", 500), ("198.51.100.2", 500), 0.0)
    assert b.list_sas() == [] and b.stats["v1_dropped_no_proposal"] == 1
    (refusal,) = b.datagrams_to_send(0.0)
    h, payloads = pull_message(refusal.data)
    assert h.exchange == Exchange.INFORMATIONAL and not h.encrypted and h.cookie_i == mm1.data[:8]
    assert [pull_notify(p.body).type for p in payloads] == [NotifyType.NO_PROPOSAL_CHOSEN]
    assert len(refusal.data) <= len(mm1.data)  # nothing to amplify
    a.receive_datagram(refusal.data, ("198.51.100.2", 500), ("192.0.2.1", 500), 0.1)
    assert a.list_sas() == [] and a.datagrams_to_send(0.1) == []
    (ended,) = [ev for ev in iter(a.next_event, None) if isinstance(ev, IkeSaTerminated)]
    assert "NO_PROPOSAL_CHOSEN" in ended.reason


def test_a_refusal_in_clear_is_only_read_while_phase_1_waits():
    """NO_PROPOSAL_CHOSEN in clear ends a main mode only in its first round trip (mm2) and only with our cookie;
    other notifies in clear, and any after the keys exist, are dropped."""
    from ike.v1.informational import Notify, NotifyType, push_notify
    from ike.v1.message import push_message
    icfg, _ = _pair_cfgs()
    i = V1Session(icfg, os.urandom)
    i.initiate(0.0)
    i.datagrams_to_send()
    other = push_message(i.cky_i, bytes(8), Exchange.INFORMATIONAL, 0, 0,
                         [push_notify(Notify(1, NotifyType.INITIAL_CONTACT, i.cky_i + bytes(8)))])
    i.receive_datagram(other, 0.0)
    assert i.state == "mm2" and i.dropped == 1
    forged = push_message(b"x" * 8, bytes(8), Exchange.INFORMATIONAL, 0, 0,
                          [push_notify(Notify(1, NotifyType.NO_PROPOSAL_CHOSEN, b"x" * 8 + bytes(8)))])
    i.receive_datagram(forged, 0.0)
    assert i.state == "mm2" and i.dropped == 2
    refusal = push_message(i.cky_i, bytes(8), Exchange.INFORMATIONAL, 0, 0,
                           [push_notify(Notify(1, NotifyType.NO_PROPOSAL_CHOSEN, i.cky_i + bytes(8)))])
    i.receive_datagram(refusal, 0.0)
    assert i.state == "failed" and "NO_PROPOSAL_CHOSEN" in i.last_error and i.get_timer() is None
