"""The files a configuration names, refused the way an operator expects, through the real CLI verbs.

A private key (or the passphrase that unlocks one) readable by group or others, or owned by another user, is
refused with one line naming the file and its mode, as OpenSSH does ("UNPROTECTED PRIVATE KEY FILE"), by both
``check-config`` and ``daemon`` and for keys in the pki store too. A TOML file nested deeper than a parser can
follow is the same one-line error, exit 2, as every other bad configuration: never a traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.strongswan import LabPki
from tests.support import require_root

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30

CONF = """
[daemon]
addresses = ["127.0.0.1"]
port = 50500
nat_port = 54500
control_socket = "{sock}"

[ca-profiles.corp]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.gw]
cert = "gw.pem"
key = "gw.key"
{extra}

[peers.branch]
local_addr = "127.0.0.1"
remote_addr = "127.0.0.2"
remote_id = "branch.test"
certificate = "gw"
ca_profiles = ["corp"]

[peers.branch.children.lan]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.2.0.0/16"]
"""


def _ike(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ike", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


@pytest.fixture(scope="module")
def lab() -> LabPki:
    return LabPki("ecdsa")


def _write(d: Path, lab: LabPki, *, key_mode: int = 0o600, passphrase: bytes | None = None,
           pass_mode: int = 0o600) -> Path:
    from cryptography.hazmat.primitives import serialization

    gw = lab.issue("gw", "gw.test")
    (d / "ca.pem").write_bytes(lab.ca.cert_pem())
    (d / "gw.pem").write_bytes(gw.cert_pem())
    extra = ""
    if passphrase is None:
        gw.write_key(d / "gw.key")
    else:
        pem = gw.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(passphrase))
        (d / "gw.pass").write_bytes(passphrase + b"\n")
        os.chmod(d / "gw.pass", pass_mode)
        extra = 'passphrase_file = "gw.pass"'
        (d / "gw.key").write_bytes(pem)
    os.chmod(d / "gw.key", key_mode)
    conf = d / "gw.toml"
    conf.write_text(CONF.format(sock=d / "ike.sock", extra=extra))
    return conf


def _refused(conf: Path, *needles: str) -> None:
    """check-config and daemon both exit 2 with one line that says why; the daemon binds nothing."""
    for verb in ("check-config", "daemon"):
        r = _ike(verb, "--config", str(conf))
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (verb, r.stderr)
        assert "Traceback" not in r.stderr
        for n in needles:
            assert n in lines[0], (verb, lines[0])


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700], ids=lambda m: f"{m:04o}")
def test_protected_key_is_accepted(tmp_path: Path, lab: LabPki, mode: int) -> None:
    conf = _write(tmp_path, lab, key_mode=mode)
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 0 and "OK; peers: branch" in r.stdout, r.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601], ids=lambda m: f"{m:04o}")
def test_key_readable_by_others_is_refused(tmp_path: Path, lab: LabPki, mode: int) -> None:
    conf = _write(tmp_path, lab, key_mode=mode)
    _refused(conf, str(tmp_path / "gw.key"), f"{mode:04o}", "UNPROTECTED PRIVATE KEY FILE", "too open")


def test_passphrase_file_readable_by_others_is_refused(tmp_path: Path, lab: LabPki) -> None:
    conf = _write(tmp_path, lab, passphrase=b"correct horse", pass_mode=0o644)
    _refused(conf, str(tmp_path / "gw.pass"), "0644", "too open")
    os.chmod(tmp_path / "gw.pass", 0o600)
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr


def test_key_owned_by_another_user_is_refused(tmp_path: Path, lab: LabPki) -> None:
    require_root()  # only root can give a file away
    conf = _write(tmp_path, lab)
    os.chown(tmp_path / "gw.key", 65534, 65534)
    _refused(conf, str(tmp_path / "gw.key"), "owned by uid 65534")


def test_key_in_the_pki_store_readable_by_others_is_refused(tmp_path: Path, lab: LabPki) -> None:
    from pki.store import Store

    _write(tmp_path, lab)
    store = Store(tmp_path / "store")
    store.import_key_pair("gw1", (tmp_path / "gw.key").read_bytes())
    store.load_local_certificate("gw1", (tmp_path / "gw.pem").read_bytes())
    conf = tmp_path / "store.toml"
    conf.write_text(CONF.format(sock=tmp_path / "ike.sock", extra="")
                    .replace('[certificates.gw]\ncert = "gw.pem"\nkey = "gw.key"\n', '[pki]\nstore = "store"\n')
                    .replace('certificate = "gw"', 'certificate = "gw1"'))
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    os.chmod(store.key_path("gw1"), 0o644)
    _refused(conf, f"certificate-id 'gw1': key {tmp_path / 'store' / 'local' / 'gw1' / 'key.pem'}: UNPROTECTED",
             "0644", "too open")


def _deep_toml(depth: int, kind: str) -> str:
    if kind == "array":
        return "a = " + "[" * depth + "]" * depth + "\n"
    if kind == "inline-table":
        return "a = " + "{b = " * depth + "1" + "}" * depth + "\n"
    return "[daemon]\nport = " + "[" * depth + "1" + "]" * depth + "\n"  # under a known key


@pytest.mark.parametrize("kind", ["array", "inline-table", "value"])
@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_deeply_nested_toml_is_a_one_line_error(tmp_path: Path, kind: str, depth: int) -> None:
    conf = tmp_path / "deep.toml"
    conf.write_text(_deep_toml(depth, kind))
    _refused(conf, str(conf))


def test_deeply_nested_store_file_is_a_one_line_error(tmp_path: Path, lab: LabPki) -> None:
    """The router store's ca-profiles.json, damaged into deep nesting, is refused like any corrupt store file."""
    from pki.store import Store

    conf = _write(tmp_path, lab)
    Store(tmp_path / "store")
    (tmp_path / "store" / "ca-profiles.json").write_text("[" * 100_000 + "]" * 100_000)
    conf.write_text(conf.read_text().replace("[ca-profiles.corp]", '[pki]\nstore = "store"\n\n[ca-profiles.corp]'))
    _refused(conf, "ca-profiles.json: corrupt JSON")
    r = subprocess.run([sys.executable, "-m", "pki", "--store", str(tmp_path / "store"), "show", "ca-profile"],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "corrupt JSON" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["x" * 300 + ".key", "a/" * 3000 + "gw.key"], ids=["name-too-long", "path-too-long"])
def test_key_name_the_os_refuses_is_a_one_line_error(tmp_path: Path, lab: LabPki, name: str) -> None:
    """Found by tests/ike/test_fuzz_config.py: a file name the OS refuses (ENAMETOOLONG) raised OSError."""
    conf = _write(tmp_path, lab)
    conf.write_text(conf.read_text().replace('key = "gw.key"', f'key = "{name}"'))
    _refused(conf, "certificates.gw.key")


def test_check_config_with_gateway_knobs(tmp_path: Path, lab: LabPki) -> None:
    """check-config accepts the [gateway] knobs the static gateway has and says what the daemon will run;
    a bad one is one line naming the key (exit 2)."""
    conf = _write(tmp_path, lab)
    base = conf.read_text() + '\n[gateway]\ntun_name = "esp0"\n'
    conf.write_text(base + "offload = false\nouter_mtu = 1500\nbatch_size = 32\n")
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    want = "gateway esp0 (offload off, MTU following the path, outer MTU 1500, batch 32)"
    assert want in r.stdout, r.stdout
    conf.write_text(base + "offload = \"yes\"\n")
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "gateway.offload: expected true or false, got 'yes'" in r.stderr, r.stderr
