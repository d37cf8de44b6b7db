"""The benchmark harness produces well-formed results, and its reference points are real.

No timing is asserted anywhere here: these tests check that `python -m bench --quick` runs and writes a
well-formed result, that the raw loops (the ceilings) and the Python alternative really do ESP (their output
decrypts with independent code: cryptography, scapy, the espresso core), and that missing pieces are reported
as "not available" instead of crashing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require, require_module

ROOT = Path(__file__).resolve().parents[2]


def _ceilings():
    try:
        from bench import _ceilings
    except ImportError as exc:
        require(False, f"bench._ceilings is not built: {exc}")
    return _ceilings


# -- workloads ---------------------------------------------------------------------------------------------

def test_workloads_are_distinct_valid_ipv4_packets():
    from bench.workloads import _checksum, make_workload

    for name in ("64", "512", "1400"):
        w = make_workload(name, count=64)
        assert {len(p) for p in w.packets} == {int(name)}
        assert len(set(w.packets)) == 64
        for p in w.packets[:4]:
            assert p[0] == 0x45 and int.from_bytes(p[2:4], "big") == len(p)
            assert _checksum(p[:20]) == 0  # a header with its checksum sums to zero


def test_imix_is_7_4_1_of_64_576_1500():
    from bench.workloads import make_workload

    w = make_workload("imix", count=1200)
    sizes = [len(p) for p in w.packets]
    assert (sizes.count(64), sizes.count(576), sizes.count(1500)) == (700, 400, 100)
    assert sizes[:12] != [64] * 7 + [576] * 4 + [1500]  # shuffled, sizes interleave


def test_esp_trailer_padding():
    from bench.workloads import esp_trailer_plaintext

    pt = esp_trailer_plaintext(b"x" * 61, 16)
    assert len(pt) % 16 == 0 and pt[-1] == 4 and pt[-2] == len(pt) - 63
    assert pt[61:-2] == bytes(range(1, pt[-2] + 1))


# -- the ceilings do real ESP crypto -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["openssl", "ipsecmb"])
@pytest.mark.parametrize("suite", ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256"])
def test_ceiling_output_verifies_with_cryptography(backend, suite):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    from bench.ceilings import CeilingRing, ceiling_available
    from bench.workloads import key_material, make_workload

    _ceilings()
    reason = ceiling_available(backend, suite)
    if backend == "ipsecmb" and reason:
        pytest.skip(reason)
    ring = CeilingRing(backend, suite, make_workload("imix", count=24))
    km = key_material(suite)
    for i in (0, 7, 23):
        esp = ring.esp_packet(i)
        assert esp[:4] == (0x1000).to_bytes(4, "big")
        if suite == "aes128-sha256":
            assert hmac.new(km.integ_key, esp[:-16], hashlib.sha256).digest()[:16] == esp[-16:]
            dec = Cipher(algorithms.AES(km.key), modes.CBC(esp[8:24])).decryptor()
            pt = dec.update(esp[24:-16]) + dec.finalize()
        else:
            aead = AESGCM(km.key) if "gcm" in suite else ChaCha20Poly1305(km.key)
            pt = aead.decrypt(km.salt + esp[8:16], esp[16:], esp[:8])
        assert pt == ring.plaintexts[i]
    n, seconds, cpu = ring.decrypt(2)
    assert n == 48 and seconds > 0 and cpu >= 0


def test_ceiling_rejects_a_corrupted_packet():
    from bench.ceilings import CeilingRing
    from bench.workloads import make_workload

    _ceilings()
    ring = CeilingRing("openssl", "aes128gcm16", make_workload("64", count=8))
    ring.esp.buf[int(ring.esp.off[3]) + 20] ^= 1
    with pytest.raises(RuntimeError, match="verified 7 of 8"):
        ring.decrypt(1)


def test_no_ceiling_for_suites_without_a_raw_loop():
    from bench.ceilings import ceiling_available

    _ceilings()
    assert "no raw loop" in ceiling_available("openssl", "aes128ccm16")


# -- the Python alternative is a correct ESP -----------------------------------------------------------------

@pytest.mark.parametrize("suite", ["aes128gcm16", "chacha20poly1305", "aes256-sha256"])
def test_python_esp_interoperates_with_scapy(suite):
    require_module("scapy.layers.ipsec")
    from bench.alternatives import PythonEsp, ScapyEsp
    from bench.workloads import key_material, make_workload

    km = key_material(suite)
    ours = PythonEsp(suite, km.enc_key, km.integ_key, 0x1000)
    back = PythonEsp(suite, km.enc_key, km.integ_key, 0x1000)
    scapy_sa = ScapyEsp(suite, km.enc_key, km.integ_key, 0x1000)
    for p in make_workload("imix", count=6).packets:
        assert scapy_sa.decrypt(ours.encrypt(p)) == p
        assert back.decrypt(scapy_sa.encrypt(p)) == p


def test_python_esp_drops_replays_and_forgeries():
    from bench.alternatives import PythonEsp
    from bench.workloads import key_material, make_workload

    km = key_material("aes128gcm16")
    out = PythonEsp("aes128gcm16", km.enc_key, b"", 0x1000)
    inb = PythonEsp("aes128gcm16", km.enc_key, b"", 0x1000)
    pkts = [out.encrypt(p) for p in make_workload("64", count=3).packets]
    inb.decrypt(pkts[1])
    with pytest.raises(ValueError, match="replayed"):
        inb.decrypt(pkts[1])
    forged = bytearray(pkts[2])
    forged[-1] ^= 1
    with pytest.raises(ValueError, match="ICV"):
        inb.decrypt(bytes(forged))
    assert inb.decrypt(pkts[0])  # older but inside the window


def test_core_ring_output_decrypts_with_the_python_reference():
    from bench.alternatives import PythonEsp
    from bench.esp import CoreRing, core_available
    from bench.workloads import make_workload

    require(core_available() is None, core_available() or "")
    w = make_workload("imix", count=40)
    ring = CoreRing("aes128gcm16", "openssl", w, batch=16)
    ref = PythonEsp("aes128gcm16", ring.km.enc_key, b"", ring.spi)
    for i in (0, 17, 39):
        assert ref.decrypt(ring.esp_packet(i)) == w.packets[i]


# -- harness and report ------------------------------------------------------------------------------------

def test_interleave_reports_a_failing_sampler_without_losing_the_others():
    from bench.harness import interleave, ratio_spread

    calls = []

    def good(units):
        calls.append("good")
        return 10 * units, 0.001 * units

    def bad(units):
        raise RuntimeError("boom")

    out = interleave({"good": (good, 64.0), "bad": (bad, 64.0)}, repeats=3, target_s=0.001)
    assert out["good"].ok and len(out["good"].rates) == 3
    assert not out["bad"].ok and "boom" in out["bad"].error
    assert ratio_spread(out["good"], out["bad"]) is None
    r = ratio_spread(out["good"], out["good"])
    assert r.min == r.median == r.max == 1.0


def test_targets_say_not_measured_rather_than_pass():
    from bench.report import RunResult, evaluate_targets

    targets = evaluate_targets(RunResult(machine={}, config={}))
    assert targets and all(t.met is None for t in targets)


@pytest.mark.slow
def test_quick_run_writes_a_well_formed_result(tmp_path):
    """`python -m bench --quick` end to end as CI runs it: table, JSON, charts; shape only, no thresholds."""
    from bench.report import validate_json

    out = tmp_path / "bench.json"
    charts = tmp_path / "charts"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out), "--plot", str(charts),
                           "--markdown", str(tmp_path / "r.md"), "--repeats", "2", "--sample-time", "0.01"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "targets (issues 2 and 6)" in proc.stdout
    doc = json.loads(out.read_text())
    assert validate_json(doc) == []
    assert doc["machine"]["cpu_model"] and doc["machine"]["cores"] >= 1
    assert {c["size"] for c in doc["core"]} == {"64", "1400"}
    for name in ("e2e", "control", "pcap"):  # each runs or says why it cannot
        sec = doc["sections"][name]
        assert "unavailable" in sec or "summary" in sec
    assert "|" in (tmp_path / "r.md").read_text()
    if doc["core"] and any("unavailable" not in c["espresso"] for c in doc["core"]):
        assert (charts / "throughput-aes128gcm16.png").stat().st_size > 1000


def test_unknown_names_are_refused_before_running(capsys) -> None:
    from bench.__main__ import main

    assert main(["--only", "bogus"]) == 2
    assert main(["--suites", "aes999", "--quiet"]) == 2
    assert "unknown aes999" in capsys.readouterr().err
