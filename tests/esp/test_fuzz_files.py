"""Fuzz the files esp reads from an operator: TOML SA files (``pcap --sa``) and the static gateway's JSON.

Every input must end as loaded SAs / a configuration or as the package's error (KeyFileError, GatewayError:
the one-line ``python -m esp: error:``), never another exception. Inputs are seeded mutations of valid files
(character edits from each format's alphabet, line splices, deep nesting, type swaps in the JSON tree). CI
budget ESPRESSO_FUZZ_EXAMPLES (default 60 per test); a longer run by hand:
ESPRESSO_FUZZ_EXAMPLES=5000 python -m pytest tests/esp/test_fuzz_files.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.gateway import GatewayError, load_static
from esp.pcap.sa_files import KeyFileError, parse_toml

from tests.mutate import mutate_text

from .test_keyfile import TOML

EXAMPLES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ALPHABET = '[]{}="\',.#\n \t-_0123456789abcdefxyz:/\\\x00\u00e9'
SNIPPETS = ["[[sa]]", "[[", "]]", "= [", "{ a = 1 }", '"""', "0x", "1e400", "-1", "inf", "true", "[" * 300,
            "{ a = " * 300, "selector = {", "spi = 0x0", "::", "/129"]

STATIC = {
    "gateway": {"local_addr": "127.0.0.1", "tun_name": "fz%d", "routes": ["10.2.0.0/16"], "mtu": 1400},
    "policies": [{"name": "site", "src": "10.1.0.0/16", "dst": "10.2.0.0/16"}],
    "sas": [{"policy": "site", "spi": 4097, "direction": "out", "suite": "aes128gcm16", "enc_key": "00" * 20,
             "src": "127.0.0.1", "dst": "127.0.0.2"},
            {"policy": "site", "spi": 4098, "direction": "in", "suite": "aes128-sha256", "enc_key": "11" * 16,
             "integ_key": "22" * 32, "src": "127.0.0.2", "dst": "127.0.0.1", "encap": None, "esn": True}],
}
ODD_VALUES: list[Any] = [None, True, 0, -1, 2 ** 64, 1.5, "", "x", "zz", [], {}, [[[]]], {"a": {"b": {}}},
                         "10.0.0.0/33", "::1", "aes128gcm16"]


@FUZZ
@given(st.data())
def test_mutated_sa_toml(data: st.DataObject) -> None:
    try:
        parse_toml(mutate_text(data, TOML, ALPHABET, SNIPPETS), "fuzz.toml")
    except KeyFileError as exc:
        assert str(exc).startswith("fuzz.toml")


def _paths(node: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, at + (i,))
    return out


@FUZZ
@given(st.data())
def test_mutated_static_json(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    doc = json.loads(json.dumps(STATIC))
    for _ in range(data.draw(st.integers(1, 4), label="tree edits")):
        at = data.draw(st.sampled_from(_paths(doc)))
        value = json.loads(json.dumps(data.draw(st.sampled_from(ODD_VALUES))))  # a copy: edits may nest
        if not at:
            doc = value
            continue
        parent = doc
        for k in at[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(at[-1], None)
        else:
            parent[at[-1]] = value
    text = json.dumps(doc)
    if data.draw(st.booleans(), label="text edits"):
        text = mutate_text(data, text, ALPHABET, SNIPPETS)
    path = tmp_path_factory.mktemp("static") / "static.json"
    path.write_text(text)
    path.chmod(0o600)
    try:
        load_static(path)
    except GatewayError as exc:
        assert str(exc).startswith(str(path))


def test_seeds_load(tmp_path: Path) -> None:
    assert len(parse_toml(TOML).entries) == 2
    path = tmp_path / "static.json"
    path.write_text(json.dumps(STATIC))
    path.chmod(0o600)
    _, pols, sas = load_static(path)
    assert len(pols) == 1 and len(sas) == 2
