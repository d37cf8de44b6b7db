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
                 "secrets.eap-carol: not supported", "x509crl/corp.crl: cannot read CRL",
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


REVOCATION_CONF = """
connections {
   gw {
      local_addrs = 192.168.0.1
      remote_addrs = 192.168.0.2
      local { auth = pubkey-sha384
              certs = moonCert.pem
              id = moon.strongswan.org }
      remote { auth = %s
               id = sun.strongswan.org
               revocation = %s }
      children { net { local_ts = 10.1.0.0/16
                       remote_ts = 10.2.0.0/16 } }
   }
   sub {
      local_addrs = 192.168.0.1
      remote_addrs = 192.168.0.3
      local { auth = eap-md5 }
      children { net { } }
   }
   bysub {
      local_addrs = 192.168.0.1
      remote_addrs = 192.168.0.5
      local { certs = moonCert.pem }
      remote { cacerts = subCert.pem }
      children { net { } }
   }
   byroot {
      local_addrs = 192.168.0.1
      remote_addrs = 192.168.0.4
      local { auth = ecdsa-sha384
              certs = moonCert.pem }
      remote { auth = psk
               revocation = strict }
      children { net { } }
   }
}
secrets { ike { secret = a-long-enough-secret } }
authorities {
   sub { cacert = subCert.pem }
}
"""


def _root_and_intermediate(d: Path) -> tuple[LabPki, LabPki]:
    """A lab root and intermediate in the swanctl directory ``d`` (x509ca/), moon's certificate from the root
    and its key, and an empty x509crl/ for the CRLs each test writes."""
    root = LabPki("ecdsa", name="strongSwan Root CA")
    sub = root.intermediate("strongSwan Sub CA")
    (d / "x509ca" / "strongswanCert.pem").write_bytes(root.ca.cert_pem())
    (d / "x509ca" / "subCert.pem").write_bytes(sub.ca.cert_pem())
    moon = root.issue("moonCert", "moon.strongswan.org")
    (d / "x509" / "moonCert.pem").write_bytes(moon.cert_pem())
    moon.write_key(d / "private" / "moonKey.pem")
    (d / "x509crl").mkdir()
    return root, sub


@pytest.mark.parametrize("remote_auth,revocation", [("pubkey-sha384", "strict"), ("rsa/pss-sha384", "ifuri"),
                                                    ("ike:ecdsa-384-sha384", "relaxed")])
def test_crls_intermediates_revocation_and_auth_constraints_map(tmp_path: Path, remote_auth: str,
                                                                revocation: str) -> None:
    """What the configuration can now say is imported, not refused: x509crl/ files become [pki] crls, x509ca/
    keeps charon's meaning (a self-signed certificate is a trust anchor, any other CA certificate a trusted
    intermediate the chain goes on through: [pki] intermediates), remote.revocation the peer's revocation, and
    auth constraints keep swanctl's syntax. What still cannot be said is refused with its path."""
    from cryptography.hazmat.primitives import serialization

    conf = _swanctl_dir(tmp_path / "swanctl", REVOCATION_CONF % (remote_auth, revocation))
    d = tmp_path / "swanctl"
    root_pem = (d / "x509ca" / "strongswanCert.pem").read_bytes()
    root, sub = _root_and_intermediate(d)  # the real root is inside _swanctl_dir: make our own
    (d / "x509crl" / "root.crl").write_bytes(root.crl([sub.ca.cert]).public_bytes(serialization.Encoding.DER))
    (d / "x509crl" / "sub.crl").write_bytes(sub.crl([]).public_bytes(serialization.Encoding.PEM))
    assert root_pem != root.ca.cert_pem()

    imp = import_swanctl(conf, out_dir=tmp_path)
    assert imp.config["pki"] == {"intermediates": ["swanctl/x509ca/subCert.pem"],
                                 "crls": ["swanctl/x509crl/root.crl", "swanctl/x509crl/sub.crl"]}
    assert imp.config["ca-profiles"]["x509ca"]["ca_certs"] == ["swanctl/x509ca/strongswanCert.pem"]
    gw = imp.config["peers"]["gw"]
    assert gw["auth"] == "pubkey-sha384" and gw["remote_auth"] == remote_auth and gw["revocation"] == revocation
    assert imp.refused == [
        "authorities.sub.cacert: an intermediate CA certificate (not self-signed): espresso's authorities are "
        "trust anchors, as charon's are only self-signed ones; keep it in x509ca/ (held as an intermediate) and "
        "name the root",
        "connections.sub.local.auth: 'eap-md5' not supported (unknown key type or hash 'eap' in 'eap-md5' "
        "(key types: pubkey, rsa, rsa/pss, ecdsa, ed25519; hashes: sha1, sha256, sha384, sha512, identity))",
        "connections.bysub.remote.cacerts: an intermediate CA certificate: espresso constrains a peer by the "
        "trust anchors its chain ends at, not by intermediates",
        "connections.byroot.remote.revocation: applies to certificates (remote auth is not pubkey)",
    ], imp.refused
    assert "sub" not in imp.config["peers"]
    assert imp.config["peers"]["byroot"]["auth"] == "ecdsa-sha384"

    out = tmp_path / "gw.toml"
    out.write_text(dump_toml(imp.config))
    cfg = load_config(out)  # the daemon takes it: constraints parsed, CRLs loaded, the intermediate held
    gw_peer = next(p for p in cfg.core.peers if p.name == "gw")
    assert gw_peer.auth_constraints.text == "pubkey-sha384"
    assert gw_peer.remote_auth_constraints.text == remote_auth
    v = gw_peer.validator.validator  # type: ignore[union-attr]
    assert v.policy.revocation == revocation
    assert [c.subject for c in cfg.intermediates] == [sub.ca.cert.subject]
    assert sorted(c.issuer.rfc4514_string() for c in cfg.crls) == sorted(
        [root.ca.cert.subject.rfc4514_string(), sub.ca.cert.subject.rfc4514_string()])


def test_check_config_reports_constraints_revocation_intermediates_and_crls(tmp_path: Path) -> None:
    """check-config says, per peer, what the daemon will enforce (ports and NAT-T, auth constraints both ways,
    revocation, fragmentation) and which intermediates and CRLs it holds, for the TOML and the swanctl.conf."""
    from cryptography.hazmat.primitives import serialization

    d = tmp_path / "swanctl"
    conf = _swanctl_dir(d, REVOCATION_CONF.replace("      children { net { local_ts", "      fragmentation = accept\n"
                                                   "      remote_port = 1500\n      children { net { local_ts", 1)
                        % ("ecdsa-256-sha384", "strict"))
    root, sub = _root_and_intermediate(d)
    (d / "x509crl" / "root.crl").write_bytes(root.crl([sub.ca.cert]).public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "moon.toml"
    r = _ike("import-swanctl", str(conf), "-o", str(out))
    assert r.returncode == 1, r.stderr
    r = _ike("check-config", "--config", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert ("  peer gw: 192.168.0.1[500, NAT-T 4500] -> 192.168.0.2[1500, NAT-T 1500]; auth pubkey-sha384, "
            "remote_auth ecdsa-256-sha384; revocation strict; fragmentation accept") in lines, r.stdout
    assert ("  peer bysub: 192.168.0.1[500, NAT-T 4500] -> 192.168.0.5[500, NAT-T 4500]; auth pubkey, "
            "remote_auth pubkey; revocation per ca-profile (x509ca: crl, fail-open); fragmentation yes (fragments "
            "of at most 1280-byte IP datagrams)") in lines, r.stdout
    assert f"  intermediate (held, not trusted): {sub.ca.cert.subject.rfc4514_string()}" in lines, r.stdout
    assert any(ln.startswith(f"  crl: {root.ca.cert.subject.rfc4514_string()}, 1 revoked, next update 20")
               for ln in lines), r.stdout
    assert lines[-1].startswith(f"{out}: OK; peers: gw (1 children), bysub (1 children), byroot (1 children)")
    r = _ike("check-config", "--config", str(conf))  # the swanctl.conf itself: the same report, and the refusals
    assert r.returncode == 2 and "revocation strict; fragmentation accept" in r.stdout, r.stdout + r.stderr
    assert "error: connections.sub.local.auth: 'eap-md5' not supported" in r.stderr


def test_remote_cacerts_naming_an_intermediate_is_refused(tmp_path: Path) -> None:
    conf = _swanctl_dir(tmp_path, REVOCATION_CONF % ("pubkey", "strict"))
    sub = LabPki("ecdsa", name="other root").intermediate("other sub")
    (tmp_path / "x509ca" / "subCert.pem").write_bytes(sub.ca.cert_pem())
    (tmp_path / "x509ca" / "junk.pem").write_bytes(b"not a certificate")
    imp = import_swanctl(conf, out_dir=tmp_path)
    refused = "\n".join(imp.refused)
    assert "connections.bysub.remote.cacerts: an intermediate CA certificate" in refused, refused
    assert "x509ca/junk.pem: cannot read certificate" in refused, refused
    assert imp.config["pki"]["intermediates"] == ["x509ca/subCert.pem"]


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
