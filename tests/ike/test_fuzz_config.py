"""Fuzz the daemon's configuration loader with mutated TOML and mutated key files, in-process.

Every input must end as a loaded configuration or as ConfigError (the one-line error check-config prints),
never another exception. Inputs are seeded mutations of a valid configuration (character edits from TOML's own
alphabet, line splices, deep nesting) and of PEM/DER key files (byte flips, truncation, insertion, random
modes, encrypted keys with passphrase files). The CI budget is ESPRESSO_FUZZ_EXAMPLES (default 60 per test,
a few seconds); a longer run by hand: ESPRESSO_FUZZ_EXAMPLES=5000 python -m pytest tests/ike/test_fuzz_config.py
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.config import ConfigError, DaemonConfig, parse_config
from tests.ike.test_config import GOOD  # the seed: a complete configuration
from tests.interop.strongswan import LabPki
from tests.mutate import mutate_text

EXAMPLES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CONF = GOOD + """
[peers.psk]
remote_addr = "192.0.2.3"
auth = "psk"
psk = "0x00112233445566778899"
local_id = "gw.test"
remote_id = "psk.test"

[peers.psk.children.net]
local_ts = "10.1.0.0/16"
remote_ts = "10.4.0.0/16"
"""

#: What TOML is made of: edits from this alphabet reach the parser's and the validator's corners.
ALPHABET = '[]{}="\',.#\n \t-_0123456789abcdefxyz%:/\\\x00\u00e9'
SNIPPETS = ["[[", "]]", "= [", "{a = 1}", '"""', "'''", "0x", "1e400", "-0", "inf", "nan", "true", "1979-05-27",
            "[peers.x]", "[peers.branch.children.y]", "[" * 200, "{a = " * 200, "\\u0000", "%any", "::1", "10/8"]


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzzcfg")
    pki = LabPki("ecdsa")
    gw = pki.issue("gw", "gw.test")
    (d / "ca.pem").write_bytes(pki.ca.cert_pem())
    (d / "gw.pem").write_bytes(gw.cert_pem())
    gw.write_key(d / "gw.key")
    (d / "gw.der").write_bytes(gw.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    (d / "gw.enc").write_bytes(gw.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.BestAvailableEncryption(b"fuzz pass")))
    return d


def _load(text: str, base: Path) -> DaemonConfig | None:
    """The property: a configuration or ConfigError; anything else propagates and fails the test."""
    try:
        return parse_config(text, base=base, source=base / "fuzz.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() or "not valid TOML" in str(exc), str(exc)  # one line (TOML's own
        return None                                                                     # message may quote)


def test_the_seed_configuration_loads(lab_dir: Path) -> None:
    assert _load(CONF, lab_dir) is not None


@FUZZ
@given(st.data())
def test_mutated_toml(lab_dir: Path, data: st.DataObject) -> None:
    text = mutate_text(data, CONF, ALPHABET, SNIPPETS)
    _load(text, lab_dir)


@FUZZ
@given(st.data())
def test_mutated_key_files(lab_dir: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    d = tmp_path_factory.mktemp("key")
    for name in ("ca.pem", "gw.pem"):
        (d / name).write_bytes((lab_dir / name).read_bytes())
    source = data.draw(st.sampled_from(["gw.key", "gw.der", "gw.enc"]), label="form")
    key = bytearray((lab_dir / source).read_bytes())
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        pos = data.draw(st.integers(0, max(len(key) - 1, 0)))
        if kind == "flip" and key:
            key[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del key[pos:]
        elif kind == "insert":
            key[pos:pos] = data.draw(st.binary(max_size=16))
        else:
            key[pos:pos] = data.draw(st.sampled_from([b"-----BEGIN PRIVATE KEY-----\n", b"-----END ",
                                                      b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n", b"\x30\x82\xff\xff"]))
    (d / "gw.key").write_bytes(bytes(key))
    mode = data.draw(st.sampled_from([0o600, 0o400, 0o640, 0o644, 0o000, 0o606]), label="mode")
    os.chmod(d / "gw.key", mode)
    text = CONF
    passphrase = data.draw(st.sampled_from([None, b"fuzz pass", b"wrong", b""]), label="passphrase")
    if passphrase is not None:
        (d / "gw.pass").write_bytes(passphrase + b"\n")
        os.chmod(d / "gw.pass", data.draw(st.sampled_from([0o600, 0o644]), label="pass mode"))
        text = text.replace('key = "gw.key"\n', 'key = "gw.key"\npassphrase_file = "gw.pass"\n')
    cfg = _load(text, d)
    if cfg is not None:  # only a protected key loads (mode 0400 and 0000 are readable by root, the owner)
        assert mode & 0o077 == 0
