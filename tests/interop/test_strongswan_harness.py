"""The strongSwan harness proves itself: two charons, certificate authentication, ping through the tunnel.

If these fail, every strongSwan interop result would be meaningless, so they check the oracle first:
the tunnel carries traffic, both charons logged the same CHILD_SA keys (our log parser reads them right),
a delete from one side removes the SAs on the other, and the lab leaves nothing behind.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.interop import strongswan as ss
from tests.support import require, require_root, require_tool

PRETTY = """list-sa event {
  gw {
    uniqueid = 1
    local-id = C=CH, O=espresso, CN=a.test
    child-sas {
      net-1 {
        spi-in = 0f070d28
        local-ts = [
          10.98.1.1/32
        ]
      }
    }
  }
}
list-sas reply {
}
"""


def test_parse_pretty() -> None:
    sas = ss.ike_sas(ss.parse_pretty(PRETTY))
    assert set(sas) == {"gw"}
    assert sas["gw"]["local-id"] == "C=CH, O=espresso, CN=a.test"
    (child,) = ss.child_sas(sas["gw"])
    assert child["spi-in"] == "0f070d28"
    assert child["local-ts"] == ["10.98.1.1/32"]


def test_parse_key_dumps() -> None:
    log = (
        "20:37:14 11[CHD] <gw|1> encryption initiator key => 20 bytes @ 0x7f8780023ab0\n"
        "20:37:14 11[CHD] <gw|1>    0: 5D 9D 18 21 B5 A0 C0 5A 61 5C AA D5 2A 34 78 CD  ]..!...Za\\..*4x.\n"
        "20:37:14 11[CHD] <gw|1>   16: 5E B8 8C 5E                                      ^..^\n"
        "20:37:14 11[CHD] <gw|1> encryption responder key => 4 bytes @ 0x7f8780029780\n"
        "20:37:14 11[CHD] <gw|1>    0: AD 06 D9 0B                                      ....\n"
        "20:37:14 11[IKE] <gw|1> CHILD_SA net{1} established with SPIs b0a324c9_i 352d19a5_o and TS 10.98.1.1/32"
        " === 10.98.2.1/32\n"
    )
    (keys,) = ss.child_keys(log)
    assert keys.spi_in == 0xB0A324C9 and keys.spi_out == 0x352D19A5
    assert keys.encr_i == bytes.fromhex("5D9D1821B5A0C05A615CAAD52A3478CD5EB88C5E")
    assert keys.encr_r == bytes.fromhex("AD06D90B")
    assert keys.integ_i == b""


@pytest.fixture
def lab(tmp_path: Path):
    yield from ss.charon_lab(tmp_path)


def _charon_pair(lab: ss.Lab, kind: str, ike: str, esp: str):
    a, b = lab.pair()
    pki = ss.LabPki(kind)
    creds = {"a": pki.issue("a", "a.test"), "b": pki.issue("b", "b.test")}
    charons = {}
    for me, peer, name, other in ((a, b, "a", "b"), (b, a, "b", "a")):
        ch = lab.charon(me, name, log_levels={"chd": 4, "ike": 4})
        ch.add_ca(pki.ca)
        cert = ch.add_credential(creds[name])
        ch.connections.append(ss.Connection(
            "gw", me.outer, peer.outer, creds[name].identity, creds[other].identity, cert,
            [ss.Child("net", f"{me.inner}/32", f"{peer.inner}/32", esp_proposals=esp)], proposals=ike))
        ch.start()
        charons[name] = ch
    return a, b, charons["a"], charons["b"]


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.parametrize("kind,ike,esp,key_lens", [
    ("ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", (20, 0)),
    ("rsa", "aes256-sha256-modp2048", "aes256-sha256", (32, 32)),
])
def test_two_charons_tunnel(lab: ss.Lab, kind: str, ike: str, esp: str, key_lens: tuple[int, int]) -> None:
    a, b, ca, cb = _charon_pair(lab, kind, ike, esp)
    result = ca.initiate("net", ike="gw", timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr + ca.tail()

    pinged = ss.ping(a, b.inner, count=3)
    assert " 0% packet loss" in pinged.stdout, pinged.stdout + ca.tail()

    for ch, peer_id in ((ca, "b.test"), (cb, "a.test")):
        sas = ss.ike_sas(ch.list_sas())
        assert sas["gw"]["state"] == "ESTABLISHED"
        assert sas["gw"]["remote-id"] == peer_id
        (child,) = ss.child_sas(sas["gw"])
        assert child["state"] == "INSTALLED" and child["encap"] == "yes"
        assert int(child["packets-in"]) >= 3 and int(child["packets-out"]) >= 3

    (ka,), (kb,) = ss.child_keys(ca.log()), ss.child_keys(cb.log())
    assert (ka.spi_in, ka.spi_out) == (kb.spi_out, kb.spi_in)
    assert ka.encr_i == kb.encr_i and ka.encr_r == kb.encr_r and ka.encr_i != ka.encr_r
    assert ka.integ_i == kb.integ_i and ka.integ_r == kb.integ_r
    assert (len(ka.encr_i), len(ka.integ_i)) == key_lens
    assert ss.ike_keys(ca.log()) == ss.ike_keys(cb.log()) != []

    # A delete from the responder side removes the SAs on the initiator too.
    done = cb.swanctl("--terminate", "--ike", "gw", "--timeout", "5", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ca.wait_for(lambda: "gw" not in ss.ike_sas(ca.list_sas()), "the initiator to drop its IKE_SA", timeout=5)


@pytest.mark.interop
def test_lab_cleans_up(tmp_path: Path) -> None:
    require_root()
    require_tool("swanctl")
    require(Path(ss.CHARON).exists(), f"{ss.CHARON} is not installed (Debian: strongswan-charon)")
    ok, reason = ss.charon_available()
    require(ok, reason)
    with ss.Lab(tmp_path) as lab:
        a, b = lab.pair()
        ch = lab.charon(a, "a")
        ch.start()
        pid = ch.proc.pid  # type: ignore[union-attr]
        names = [a.netns.name, b.netns.name]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert not any(n in listed for n in names)
    assert not Path(f"/proc/{pid}").exists()
