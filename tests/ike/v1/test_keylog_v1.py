"""tshark is the oracle for the IKEv1 key log: an in-memory main mode and quick mode, written to a pcap, opens
decrypted with the ``ikev1_decryption_table`` line ike.keylog.ikev1_line writes."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ike.keylog import IKEV1_TABLE, ikev1_line
from ike.v1.keymat import OAKLEY_3DES_CBC
from ike.v1.responder import V1Responder
from ike.v1.session import V1Config, V1Session
from tests.ike.test_keylog import _ipv4, _pcap, _udp
from tests.support import require_tool


@pytest.mark.interop
@pytest.mark.parametrize("alg", ["aes128-sha256", "3des-sha1"])
def test_tshark_decrypts_ikev1_with_our_table(tmp_path: Path, alg: str) -> None:
    """The row is the cookie and the key, whatever the cipher: Wireshark takes the cipher from the SA payload
    it sees (with 3DES, OAKLEY 5, the key is 24 bytes expanded from SHA-1's SKEYID_e by RFC 2409 Appendix B)."""
    tshark = require_tool("tshark")
    kw = {"enc_alg": OAKLEY_3DES_CBC, "enc_key_bits": 192, "hash": "sha1"} if alg == "3des-sha1" else {}
    icfg = V1Config("v1", b"secret", "e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", ("10.9.0.1", 500),
                    ("10.9.0.2", 500), **kw)
    rcfg = V1Config("v1", b"secret", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", ("10.9.0.2", 500),
                    ("10.9.0.1", 500), **kw)
    i = V1Session(icfg, os.urandom)
    i.initiate(0.0)
    (mm1,) = i.datagrams_to_send()
    r = V1Responder(rcfg, os.urandom, mm1, 0.0)
    packets = [_ipv4("10.9.0.1", "10.9.0.2", 17, _udp(500, 500, mm1))]
    for _ in range(4):
        for d in r.datagrams_to_send():
            packets.append(_ipv4("10.9.0.2", "10.9.0.1", 17, _udp(500, 500, d)))
            i.receive_datagram(d, 0.0)
        for d in i.datagrams_to_send():
            packets.append(_ipv4("10.9.0.1", "10.9.0.2", 17, _udp(500, 500, d)))
            r.receive_datagram(d, 0.0)
    assert i.state == "established" and i.keys is not None
    profile = tmp_path / "wireshark"
    profile.mkdir()
    (profile / IKEV1_TABLE).write_text(ikev1_line(i.cky_i, i.keys.enc_key) + "\n")
    pcap = tmp_path / "ikev1.pcap"
    _pcap(pcap, packets)
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
    proc = subprocess.run([tshark, "-n", "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # MM5's identity and quick mode's proxy identities are only visible decrypted
    assert "e.test" in text and "s.test" in text, text[-3000:]
    assert "10.0.1.0" in text and "10.0.2.0" in text, text[-3000:]
