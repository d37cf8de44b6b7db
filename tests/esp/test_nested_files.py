"""``python -m esp``: a configuration or SA file nested deeper than a parser can follow is a one-line error with
exit status 2, like every other bad file, never a traceback (the static gateway's JSON, TOML SA files)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esp.pcap.sa_files import KeyFileError, parse_toml

ROOT = Path(__file__).resolve().parents[2]


def _esp(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "esp", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=env)


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


DEPTHS = [100, 5000, 100_000]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("where", ["top", "gateway"])
def test_gateway_static_json_nested_too_deep(tmp_path: Path, depth: int, where: str) -> None:
    path = tmp_path / "static.json"
    nest = "[" * depth + "]" * depth
    path.write_text(nest if where == "top" else '{"gateway": {"tun_name": ' + nest + '}, "sas": []}')
    path.chmod(0o600)
    _one_line_error(_esp("gateway", str(path)), str(path))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["array", "inline-table", "in-sa"])
def test_pcap_sa_toml_nested_too_deep(tmp_path: Path, depth: int, kind: str) -> None:
    sa = tmp_path / "sas.toml"
    if kind == "array":
        text = "a = " + "[" * depth + "]" * depth + "\n"
    elif kind == "inline-table":
        text = "a = " + "{b = " * depth + "1" + "}" * depth + "\n"
    else:
        text = "[[sa]]\nspi = " + "[" * depth + "1" + "]" * depth + "\n"
    sa.write_text(text)
    sa.chmod(0o600)
    _one_line_error(_esp("pcap", "decrypt", str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"), "--sa", str(sa)),
                    str(sa))
    with pytest.raises(KeyFileError):
        parse_toml(text, str(sa))


def test_static_json_nesting_that_parses_still_refused_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "static.json"
    path.write_text(json.dumps({"gateway": {"tun_name": [[[[["x"]]]]]}, "sas": []}))
    path.chmod(0o600)
    _one_line_error(_esp("gateway", str(path)), str(path))


def test_static_json_value_of_the_wrong_type_is_a_one_line_error(tmp_path: Path) -> None:
    """Found by tests/esp/test_fuzz_files.py: ``"suite": null`` raised AttributeError out of load_static."""
    from tests.esp.test_fuzz_files import STATIC

    doc = json.loads(json.dumps(STATIC))
    doc["sas"][0]["suite"] = None
    path = tmp_path / "static.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    _one_line_error(_esp("gateway", str(path)), str(path), "bad static configuration")
