"""swanctl.conf read directly: strongSwan's settings syntax, the mapping to espresso's TOML, the CLI verbs.

The interop proof (the imported file establishing against charon running the scenario's other host) is in
tests/interop/test_ike_strongswan.py; here: the syntax (comments, quoted values, includes, merged sections,
errors with file:line), what maps and what is refused with its path, that the written TOML loads, and that
hostile input is a clear error (a bounded fuzz: ESPRESSO_FUZZ_EXAMPLES, the suite's convention).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.config import ConfigError, load_config
from ike.config.swanctl import dump_toml, import_swanctl, parse_settings
from tests.interop.strongswan import LabPki
from tests.mutate import mutate_text

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "data" / "swanctl" / "ikev2-net2net-cert" / "hosts"
EXAMPLES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "60"))
ALPHABET = "{}=#\"\n ,:-./*0123456789abcdefxyz%@\\\x00\u00e9"
SNIPPETS = ["include *", "include /dev/zero", " { ", "}", " = ", '"', "\n}\n", "connections {", "children { c {",
            "local_ts = dynamic", "auth = psk", "certs = ../../../etc/passwd", "secret = 0s!!", "remote_addrs = ",
            "x509ca", "a : b {", "include swanctl.conf"]


def _swanctl_dir(tmp: Path, conf: str, *, with_cert: bool = True) -> Path:
    """A swanctl directory as swanctl reads it: swanctl.conf, x509/, x509ca/, private/."""
    for sub in ("x509", "x509ca", "private"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    if with_cert:
        pki = LabPki("ecdsa", name="strongSwan Root CA")
        cred = pki.issue("moonCert", "moon.strongswan.org")
        (tmp / "x509" / "moonCert.pem").write_bytes(cred.cert_pem())
        cred.write_key(tmp / "private" / "moonKey.pem")
        (tmp / "x509ca" / "strongswanCert.pem").write_bytes(pki.ca.cert_pem())
    (tmp / "swanctl.conf").write_text(conf)
    return tmp / "swanctl.conf"


# -- syntax -----------------------------------------------------------------------------------------------

def test_settings_syntax(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("connections { b { version = 2 } }\n")
    (tmp_path / "conf.d" / "a.conf").write_text("connections {\n a { remote_addrs = 192.0.2.9 }\n}\n")
    (tmp_path / "swanctl.conf").write_text("""# a comment
connections
{
   a {   # sections of one name merge
      local_addrs = 192.0.2.1  # comment after a value
      remote_addrs = 192.0.2.8
      quoted = "two words # not a comment"
      multi = "line one
line two \\"quoted\\""
      empty =
   }
}
include conf.d/*.conf
include missing/*.conf
secrets { }
""")
    tree = parse_settings(tmp_path / "swanctl.conf")
    a = tree["connections"]["a"]
    assert a["local_addrs"] == "192.0.2.1"
    assert a["remote_addrs"] == "192.0.2.9"  # the included file came later: its value replaces
    assert a["quoted"] == "two words # not a comment"
    assert a["multi"] == 'line one\nline two "quoted"'
    assert a["empty"] == ""
    assert tree["connections"]["b"] == {"version": "2"}
    assert tree["secrets"] == {}


@pytest.mark.parametrize("text,where,what", [
    ("connections {\n a {\n", ":", "not closed"),
    ("}\n", ":1:", "without a section"),
    ("connections {\n = 3\n}\n", ":2:", "without a name"),
    ("connections {\n a : b {\n }\n}\n", ":2:", "references"),
    ("connections {\n a\n}\n", ":3:", "expected '=' or '{'"),
    ('a = "open\n', ":1:", "not closed"),
])
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, where: str, what: str) -> None:
    (tmp_path / "swanctl.conf").write_text(text)
    with pytest.raises(ConfigError, match=what) as e:
        parse_settings(tmp_path / "swanctl.conf")
    assert str(e.value).startswith(str(tmp_path / "swanctl.conf")) and where in str(e.value)


def test_include_loop_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "swanctl.conf").write_text("include swanctl.conf\n")
    with pytest.raises(ConfigError, match="nested deeper|more than"):
        parse_settings(tmp_path / "swanctl.conf")


# -- mapping ------------------------------------------------------------------------------------------------

def test_strongswan_scenario_imports_and_loads(tmp_path: Path) -> None:
    conf = _swanctl_dir(tmp_path / "swanctl", (SCENARIO / "moon" / "swanctl.conf").read_text())
    imp = import_swanctl(conf, out_dir=tmp_path)
    assert imp.refused == ["connections.gw-gw.reauth_time: not supported",
                           "connections.gw-gw.children.net-net.updown: not supported"]
    peer = imp.config["peers"]["gw-gw"]
    assert peer["local_addr"] == "192.168.0.1" and peer["remote_addr"] == "192.168.0.2"
    assert peer["local_id"] == "moon.strongswan.org" and peer["remote_id"] == "sun.strongswan.org"
    assert peer["ike_proposals"] == ["aes128-sha256-x25519"] and peer["certificate"] == "moonCert"
    assert peer["children"]["net-net"]["esp_proposals"] == ["aes128gcm128-x25519"]
    assert imp.config["certificates"]["moonCert"] == {"cert": "swanctl/x509/moonCert.pem",
                                                      "key": "swanctl/private/moonKey.pem"}
    out = tmp_path / "moon.toml"
    out.write_text(dump_toml(imp.config))
    cfg = load_config(out)
    (p,) = cfg.core.peers
    assert p.name == "gw-gw" and str(p.local_id) == "moon.strongswan.org" and p.credential is not None
    (c,) = p.children
    assert c.rekey_time == 5400 and c.rekey_bytes == 500000000 and c.rekey_packets == 1000000
    assert [str(t) for t in c.local_ts] == ["10.1.0.0/16"]


PSK_CONF = """
connections {
   rw {
      local_addrs = 192.0.2.1
      remote_addrs = %any
      proposals = aes256-sha256-modp2048, default
      fragmentation = accept
      encap = yes
      dpd_delay = 30s
      pools = rw-pool
      local { auth = psk
              id = gw.example.org }
      remote { auth = psk
               id = road.example.org }
      remote-2 { auth = eap-md5 }
      children {
         net { local_ts = 10.1.0.0/16, 10.3.0.0/16
               remote_ts = 10.2.0.0/16
               start_action = trap
               hostaccess = no
               mode = transport }
         host { start_action = start
                remote_ts = 10.2.0.7 }
         any { }
      }
   }
   multi {
      local_addrs = 192.0.2.1, 192.0.2.5
      local { auth = pubkey
              certs = missing.pem }
   }
}
secrets {
   ike-rw { id-1 = gw.example.org
            id-2 = road.example.org
            secret = 0sc2VjcmV0LXNlY3JldC1zZWNyZXQ= }
   eap-carol { id = carol
               secret = x }
}
authorities {
   corp { cacert = strongswanCert.pem
          crl_uris = http://crl.example.org/corp.crl }
}
pools { rw-pool { addrs = 10.3.0.0/24 } }
"""


def test_what_cannot_be_expressed_is_refused_with_its_path(tmp_path: Path) -> None:
    conf = _swanctl_dir(tmp_path, PSK_CONF)
    (tmp_path / "x509crl").mkdir()
    (tmp_path / "x509crl" / "corp.crl").write_bytes(b"")
    imp = import_swanctl(conf, out_dir=tmp_path)
    refused = "\n".join(imp.refused)
    for path in ("pools: not supported", "connections.rw.pools: not supported",
                 "connections.rw.remote-2: not supported (more than one authentication round)",
                 "connections.rw.children.net.start_action: 'trap' not supported",
                 "connections.multi.local_addrs: only one IP address is supported",
                 "connections.multi.local.certs: cannot read certificate",
                 "secrets.eap-carol: not supported", "x509crl/corp.crl: not supported",
                 "connections.rw.children.any.remote_ts: missing, and no fixed address to default to",
                 "connections.rw.children.host.start_action: start needs a fixed remote_addrs"):
        assert path in refused, refused
    rw = imp.config["peers"]["rw"]
    assert rw["psk"] == "0x" + b"secret-secret-secret".hex() and rw["auth"] == rw["remote_auth"] == "psk"
    assert rw["remote_addr"] == "%any" and rw["fragmentation"] == "accept" and rw["encap"] is True
    assert rw["ike_proposals"] == ["aes256-sha256-modp2048"] and "start_action" not in rw
    assert rw["children"]["net"]["local_ts"] == ["10.1.0.0/16", "10.3.0.0/16"]
    assert rw["children"]["host"]["local_ts"] == ["192.0.2.1"]  # swanctl's default: the IKE address
    assert "multi" not in imp.config["peers"]
    assert imp.config["ca-profiles"]["corp"]["crl_url"] == "http://crl.example.org/corp.crl"
    out = tmp_path / "rw.toml"
    out.write_text(dump_toml(imp.config))
    cfg = load_config(out)  # what was imported is a valid espresso configuration
    assert cfg.core.peers[0].psk == b"secret-secret-secret" and cfg.auto_start == ()


def test_toml_writer_round_trips() -> None:
    import tomllib

    data = {"daemon": {"addresses": ["192.0.2.1"]}, "peers": {"a b": {"psk": 'q"uote\\ \n', "port": 500,
                                                                      "on": True, "children": {"x.y": {}}}}}
    assert tomllib.loads(dump_toml(data, "header\nline two")) == data


# -- the CLI -------------------------------------------------------------------------------------------------

def _ike(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ike", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_import_swanctl_and_check_config_verbs(tmp_path: Path) -> None:
    conf = _swanctl_dir(tmp_path / "swanctl", (SCENARIO / "moon" / "swanctl.conf").read_text())
    out = tmp_path / "etc" / "moon.toml"
    out.parent.mkdir()
    r = _ike("import-swanctl", str(conf), "-o", str(out))
    assert r.returncode == 1, r.stderr  # written, but not everything could be expressed
    assert r.stderr.splitlines() == ["connections.gw-gw.reauth_time: not supported",
                                     "connections.gw-gw.children.net-net.updown: not supported"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert "#   connections.gw-gw.children.net-net.updown: not supported" in out.read_text()
    r = _ike("check-config", "--config", str(out))
    assert r.returncode == 0 and "OK; peers: gw-gw (1 children)" in r.stdout, r.stderr
    r = _ike("check-config", "--config", str(conf))  # the swanctl.conf itself: the same refusals
    assert r.returncode == 2
    assert "error: connections.gw-gw.children.net-net.updown: not supported" in r.stderr
    assert r.stderr.strip().endswith("2 key(s) espresso cannot express; the rest is valid") and "Traceback" not in r.stderr
    r = _ike("import-swanctl", str(conf))  # stdout
    assert r.stdout.startswith("# imported from ") and "[peers.gw-gw.children.net-net]" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("connections {\n")
    r = _ike("import-swanctl", str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {bad}") and "Traceback" not in r.stderr


@given(st.data())
@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_fuzz_mangled_swanctl_is_a_clear_error(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Mutations of a real swanctl.conf: a tree and refusals, or ConfigError; never another exception."""
    d = tmp_path_factory.mktemp("fz")
    text = mutate_text(data, PSK_CONF, ALPHABET, SNIPPETS)
    conf = _swanctl_dir(d, text, with_cert=False)
    try:
        imp = import_swanctl(conf, out_dir=d)
    except ConfigError:
        return
    dump_toml(imp.config)
