"""The daemon's ``child-keys`` control command and ``esp.pcap.send`` on the keys it returns.

Two daemons with scripted cores on loopback (tests/ike/test_daemon.py's Pair): A negotiated a CHILD_SA with B and
sent some packets; ``python -m esp pcap send --daemon A.sock`` asks A for its outbound SA and sends a capture on
it to B, which must accept every packet (its sequence numbers continue after A's own).
"""
from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built (python setup.py build_ext --inplace)")

from esp.pcap.send import Pacing, SendError, daemon_child_sas, send_capture
from tests.esp.pcap_builders import Rec, ipv4, pcap_file, udp
from tests.ike.test_daemon import Pair, _inner, _until, mirrored


def test_child_keys_feed_pcap_send_and_the_peer_accepts_every_packet(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[bytes] = []
    pkts = [ipv4("10.1.0.5", "10.2.0.9", 17, udp(5000, 9, bytes([i]) * 80)) for i in range(40)]
    pkts.append(ipv4("10.7.0.5", "10.2.0.9", 17, udp(5000, 9, b"outside the traffic selectors")))
    (tmp_path / "cap.pcap").write_bytes(pcap_file([Rec(p) for p in pkts], linktype=101))

    async def main() -> None:
        p = await Pair().start(tmp_path, control=True)
        try:
            ev_a, ev_b = mirrored("aes256-sha256", p.addr_a, p.addr_b, spi_a=0xA0000001, spi_b=0xB0000001)
            secrets.extend((ev_a.enc_key_out, ev_a.integ_key_out, ev_a.enc_key_in, ev_a.integ_key_in))
            p.emit(ev_a, ev_b)
            assert p.a.send([_inner(i) for i in range(5)]) == 5
            await _until(lambda: len(p.got_b) == 5, "A's own packets at B")
            path = p.a.control_path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the only way the keys leave the daemon
            (entry,) = await asyncio.to_thread(daemon_child_sas, path)
            assert entry.spi == 0xB0000001 and entry.initial_seq == 5 and entry.enc_key == ev_a.enc_key_out
            assert entry.encap == (p.addr_a[1], p.addr_b[1]) and str(entry.dst) == p.addr_b[0]
            assert (str(entry.selector.src), str(entry.selector.dst)) == ("10.1.0.0/24", "10.2.0.0/24")
            assert len(await asyncio.to_thread(daemon_child_sas, path, "net")) == 1
            with pytest.raises(SendError, match="no installed CHILD_SA 'nope'"):
                await asyncio.to_thread(daemon_child_sas, path, "nope")
            s = await asyncio.to_thread(send_capture, tmp_path / "cap.pcap", [entry], pacing=Pacing("top"),
                                        loops=2, port=p.addr_b[1])
            assert s.sent == 80 and s.skipped == {"no_sa": 1} and s.exit_code == 0, s.format()
            await _until(lambda: len(p.got_b) == 85, "the sent capture at B")
            assert p.got_b[5:] == pkts[:40] * 2
            assert p.b.children[0xB0000001].sa_in.counters.packets == 85
            assert p.b.stats()["dataplane_in"] == {"OK": 85}
        finally:
            await p.stop()

    asyncio.run(main())
    logged = caplog.text.lower()
    assert len(secrets) == 4 and "net" in logged  # the daemon did log (the CHILD_SA), just not its keys
    for secret in secrets:
        assert secret.hex() not in logged  # at DEBUG too: secrets never go to logs


def test_child_keys_with_nothing_installed_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        p = await Pair().start(tmp_path, control=True)
        try:
            with pytest.raises(SendError, match="no installed CHILD_SA"):
                await asyncio.to_thread(daemon_child_sas, p.a.control_path)
        finally:
            await p.stop()

    asyncio.run(main())
