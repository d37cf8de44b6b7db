"""The IKEv1 initiator and responder in memory (no sockets): main mode PSK and quick mode, with and without PFS;
the ESP keys pair up crosswise, and a wrong PSK is refused by the responder."""
from __future__ import annotations

import pytest

from ike.events import ChildSaEstablished
from ike.v1.session import Phase1Done, V1Config
from tests.ike.v1.memory import events, exchange


def _cfg(psk: bytes, local: str, remote: str, lts: str, rts: str, pfs: int | None) -> V1Config:
    return V1Config("v1", psk, local, remote, lts, rts, ("127.0.0.1", 500), ("127.0.0.2", 500), pfs_group=pfs)


def _run(pfs: int | None, psk_r: bytes = b"secret"):
    ex = exchange(_cfg(b"secret", "e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", pfs),
                  _cfg(psk_r, "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", pfs))
    return ex.i, ex.r


@pytest.mark.parametrize("pfs", [14, None])
def test_pair_establishes_with_crosswise_keys(pfs):
    i, r = _run(pfs)
    assert (i.state, r.state, i.dropped, r.dropped) == ("established", "established", 0, 0)
    ei, er = events(i), events(r)
    assert [type(e) for e in ei] == [type(e) for e in er] == [Phase1Done, ChildSaEstablished]
    a, b = ei[1], er[1]
    assert (a.spi_in, a.spi_out) == (b.spi_out, b.spi_in)
    assert (a.enc_key_out, a.integ_key_out) == (b.enc_key_in, b.integ_key_in)
    assert (a.enc_key_in, a.integ_key_in) == (b.enc_key_out, b.integ_key_out)
    assert a.enc_key_in != a.enc_key_out and len(a.integ_key_in) == 32 and a.suite == "aes128-sha256"


def test_wrong_psk_is_refused():
    i, r = _run(14, psk_r=b"other")
    # a wrong key decrypts MM5 to garbage (or, rarely, to payloads whose HASH_I fails): dropped either way
    assert r.state == "r_mm5" and r.dropped >= 1 and r.last_error
    assert i.state == "mm6" and events(r) == []
