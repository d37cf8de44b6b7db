"""Both backends give byte-identical packets for the same SA, keys, IVs and input, and accept each other's."""
from __future__ import annotations

import pytest

from esp import SUITES, PacketBatch, Sa, SaParams, available_backends
from esp import _core

from .helpers import ipv4, ipv6, keys_for, udp

BOTH = sorted(s for s in SUITES if len(available_backends(s)) > 1)


def test_ipsecmb_built_where_expected() -> None:
    # On x86-64 with libipsec-mb-dev installed (.ci/install-system does it) the fast backend must exist.
    import os
    import platform
    if platform.machine() == "x86_64" and os.path.exists("/usr/include/intel-ipsec-mb.h"):
        assert _core.HAVE_IPSECMB
        assert BOTH, "no suite runs on both backends"


@pytest.mark.parametrize("suite", BOTH)
@pytest.mark.parametrize("esn", [False, True])
def test_identical_output(suite: str, esn: bool) -> None:
    if not BOTH:
        pytest.skip("ipsec-mb not built")
    enc, integ = keys_for(suite)
    pkts = [ipv4(udp(bytes(range(n % 256)) * 2)) for n in range(0, 1500, 61)] + [ipv6(udp(b"6" * 99))]
    outs = {}
    for backend in ("openssl", "ipsecmb"):
        sa = Sa(SaParams(spi=0x4242, direction="out", suite=suite, enc_key=enc, integ_key=integ, esn=esn,
                         src="198.51.100.1", dst="198.51.100.2", backend=backend), initial_seq=2**32 - 10 if esn else 0)
        sa._ctx.predictable_ivs_for_tests()  # CBC IVs are random otherwise
        src = PacketBatch.from_packets(pkts)
        dst = PacketBatch.empty(len(pkts))
        assert sa.encrypt_batch(src, dst) == len(pkts)
        outs[backend] = dst.packets()
    assert outs["openssl"] == outs["ipsecmb"]
    # and each backend decrypts what the other made
    for backend, other in (("openssl", "ipsecmb"), ("ipsecmb", "openssl")):
        inb = Sa(SaParams(spi=0x4242, direction="in", suite=suite, enc_key=enc, integ_key=integ, esn=esn,
                          backend=backend), initial_seq=2**32 - 10 if esn else 0)
        assert [inb.decrypt(w) for w in outs[other]] == pkts
