"""ike.config: a good file becomes the core's objects; every bad one is refused with its key path and reason."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ike.config import ConfigError, DaemonConfig, load_config, parse_config, parse_duration, parse_size
from ike.core_config import Identity, TrafficSelector
from tests.interop.strongswan import LabPki

GOOD = """
[daemon]
port = 500
nat_port = 4500
control_socket = "ike.sock"

[ca-profiles.corp]
ca_certs = ["ca.pem"]
revocation = "disable"

[certificates.gw]
cert = "gw.pem"
key = "gw.key"

[peers.branch]
local_addr = "192.0.2.1"
remote_addr = "192.0.2.2"
remote_id = "branch.test"
certificate = "gw"
ca_profiles = ["corp"]
ike_proposals = ["aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"]
rekey_time = "4h"

[peers.branch.children.lan]
local_ts = ["10.1.0.0/16"]
remote_ts = "10.2.0.0/16, 10.3.0.1[udp/53]"
esp_proposals = ["aes128gcm16", "aes256-sha256"]
rekey_time = "1h"
rekey_bytes = "1G"
"""


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    pki = LabPki("ecdsa")
    gw = pki.issue("gw", "gw.test")
    branch = pki.issue("branch", "branch.test")
    other = LabPki("ecdsa").issue("x", "branch.test")
    (d / "ca.pem").write_bytes(pki.ca.cert_pem())
    (d / "gw.pem").write_bytes(gw.cert_pem())
    gw.write_key(d / "gw.key")
    (d / "branch.pem").write_bytes(branch.cert_pem())
    branch.write_key(d / "branch.key")
    (d / "other.pem").write_bytes(other.cert_pem())
    return d


def _load(pki_dir: Path, text: str) -> DaemonConfig:
    return parse_config(text, base=pki_dir)


def test_good_config(pki_dir: Path) -> None:
    cfg = _load(pki_dir, GOOD)
    (peer,) = cfg.core.peers
    assert peer.name == "branch" and peer.remote_addr == "192.0.2.2"
    assert peer.local_id == Identity("fqdn", "gw.test")  # from the certificate's SAN
    assert peer.remote_id == Identity("fqdn", "branch.test")
    assert peer.ike_proposals == ("aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048")
    assert peer.rekey_time == 4 * 3600 and peer.keepalive_interval == 20.0
    (child,) = peer.children
    assert child.local_ts == (TrafficSelector.from_cidr("10.1.0.0/16"),)
    assert child.remote_ts == (TrafficSelector.from_cidr("10.2.0.0/16"), TrafficSelector("10.3.0.1", "10.3.0.1", 17, 53, 53))
    assert child.rekey_time == 3600 and child.life_time == pytest.approx(3960)
    assert child.rekey_bytes == 1 << 30 and child.life_bytes > child.rekey_bytes
    assert cfg.addresses == ("192.0.2.1",) and cfg.bind_ports() == (500, 4500)
    assert cfg.control_socket == pki_dir / "ike.sock" and cfg.key_log is None and not cfg.core.key_log
    assert cfg.local_addrs == {"branch": "192.0.2.1"}


def test_validator_checks_chain_and_identity(pki_dir: Path) -> None:
    from cryptography import x509

    from pki.errors import CertificateRejected, RejectReason

    peer = _load(pki_dir, GOOD).core.peers[0]
    at = dt.datetime.now(dt.timezone.utc)
    branch = x509.load_pem_x509_certificate((pki_dir / "branch.pem").read_bytes())
    other = x509.load_pem_x509_certificate((pki_dir / "other.pem").read_bytes())
    assert peer.validator is not None
    peer.validator(branch, [], at, Identity("fqdn", "branch.test"))
    with pytest.raises(CertificateRejected) as err:
        peer.validator(branch, [], at, Identity("fqdn", "gw.test"))
    assert err.value.reason is RejectReason.IDENTITY_MISMATCH
    with pytest.raises(CertificateRejected) as err:
        peer.validator(other, [], at, Identity("fqdn", "branch.test"))
    assert err.value.reason is RejectReason.UNTRUSTED
    with pytest.raises(CertificateRejected) as err:
        peer.validator(branch, [], at + dt.timedelta(days=30), Identity("fqdn", "branch.test"))
    assert err.value.reason is RejectReason.EXPIRED


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BAD = [
    ("typo in a key", _edit('remote_id = "branch.test"', 'remote_idd = "branch.test"'),
     "peers.branch: unknown key 'remote_idd' (did you mean 'remote_id'?)"),
    ("unknown IKE algorithm", _edit('"aes256-sha256-modp2048"]', '"aes256-sha256-modp2049"]'),
     "peers.branch.ike_proposals[1]: proposal 'aes256-sha256-modp2048'"[:35]),
    ("IKE proposal without DH", _edit('"aes256-sha256-modp2048"]', '"aes256-sha256"]'),
     "peers.branch.ike_proposals[1]"),
    ("unknown ESP algorithm", _edit('esp_proposals = ["aes128gcm16",', 'esp_proposals = ["aes128gcm17",'),
     "peers.branch.children.lan.esp_proposals[0]: proposal 'aes128gcm17': unknown algorithm"),
    ("bad selector", _edit('local_ts = ["10.1.0.0/16"]', 'local_ts = ["10.1.0.1/16"]'),
     "peers.branch.children.lan.local_ts[0]: bad traffic selector '10.1.0.1/16'"),
    ("missing selector", _edit('local_ts = ["10.1.0.0/16"]\n', ''),
     "peers.branch.children.lan.local_ts: is required"),
    ("bad duration", _edit('rekey_time = "1h"', 'rekey_time = "1 hour"'),
     "peers.branch.children.lan.rekey_time: expected a duration"),
    ("life below rekey", _edit('rekey_time = "1h"', 'rekey_time = "1h"\nlife_time = "30m"'),
     "peers.branch.children.lan.life_time: must be larger than rekey_time"),
    ("missing certificate file", _edit('cert = "gw.pem"', 'cert = "nope.pem"'),
     "certificates.gw.cert: certificate file"),
    ("key of another certificate", _edit('key = "gw.key"', 'key = "branch.key"'),
     "certificates.gw.key: "),
    ("local_id the certificate does not prove", _edit('certificate = "gw"', 'certificate = "gw"\nlocal_id = "branch.test"'),
     "peers.branch.local_id: fqdn:branch.test is neither the subject nor a subjectAltName"),
    ("undefined ca-profile", _edit('ca_profiles = ["corp"]', 'ca_profiles = ["corp2"]'),
     "peers.branch.ca_profiles: no [ca-profiles.corp2] defined"),
    ("undefined certificate", _edit('certificate = "gw"', 'certificate = "gw2"'),
     "peers.branch.certificate: no [certificates.gw2] defined"),
    ("bad port", _edit("port = 500", "port = 70000"), "daemon.port: expected a UDP port"),
    ("same ports", _edit("nat_port = 4500", "nat_port = 500"), "daemon.nat_port: must differ"),
    ("bad remote address", _edit('remote_addr = "192.0.2.2"', 'remote_addr = "192.0.2.300"'),
     "peers.branch.remote_addr: expected an IP address or %any"),
    ("mixed families", _edit('remote_addr = "192.0.2.2"', 'remote_addr = "2001:db8::2"'),
     "peers.branch.remote_addr: local_addr and remote_addr must be of one address family"),
    ("bad identity", _edit('remote_id = "branch.test"', 'remote_id = "ipv4:300.1.1.1"'),
     "peers.branch.remote_id: "),
    ("psk without key", _edit('certificate = "gw"', 'certificate = "gw"\nauth = "psk"'),
     "peers.branch.psk: is required"),
    ("short psk", _edit('certificate = "gw"', 'certificate = "gw"\nauth = "psk"\npsk = "abc"'),
     "peers.branch.psk: a pre-shared key must have at least 8 characters"),
    ("wrong type", _edit('rekey_time = "4h"', 'rekey_time = true'), "peers.branch.rekey_time: expected a duration"),
    ("typo of a required key", _edit('local_ts = ["10.1.0.0/16"]', 'local_tss = ["10.1.0.0/16"]'),
     "peers.branch.children.lan: unknown key 'local_tss' (did you mean 'local_ts'?)"),
    ("unknown section", GOOD + "\n[peer.x]\nfoo = 1\n", "top level: unknown key 'peer' (did you mean 'peers'?)"),
    ("revocation mode", _edit('revocation = "disable"', 'revocation = "sometimes"'),
     "ca-profiles.corp.revocation: expected one of"),
    ("not TOML", GOOD + "\n[[[", "not valid TOML"),
    ("no peers", GOOD.split("[peers.branch]")[0], "peers: at least one"),
    ("CA file is a leaf", _edit('ca_certs = ["ca.pem"]', 'ca_certs = ["gw.pem"]'),
     "ca-profiles.corp.ca_certs: "),
    ("mode", _edit('rekey_bytes = "1G"', 'rekey_bytes = "1G"\nmode = "tunel"'),
     "peers.branch.children.lan.mode: expected one of 'tunnel', 'transport'"),
]


@pytest.mark.parametrize("what,text,message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_refused_with_key_path(pki_dir: Path, what: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(pki_dir, text)
    assert message in str(err.value), str(err.value)


def test_load_config_names_the_file(pki_dir: Path) -> None:
    f = pki_dir / "ike.toml"
    f.write_text(_edit("port = 500", "port = 0"))
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}: daemon.port: ")
    f.write_text(GOOD.replace('key_log', 'x'))
    assert load_config(f).source == f
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(pki_dir / "missing.toml")
    f.write_text("[daemon]\nport = = 5\n")  # QA: a syntax error named the file twice
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == f"{f}: not valid TOML: Invalid value (at line 2, column 8)"


def test_ike_on_a_nat_t_port_is_marked(pki_dir: Path) -> None:
    """A peer whose IKE starts on the NAT-T port (local_port = nat_port, as charon needs for non-500 ports) gets the
    non-ESP marker there; only the IKE ports proper carry IKE plain."""
    text = GOOD.replace("port = 500\nnat_port = 4500", "port = 1500\nnat_port = 14500").replace(
        'remote_id = "branch.test"', 'remote_id = "branch.test"\nlocal_port = 14500\nremote_port = 14500')
    cfg = _load(pki_dir, text)
    assert cfg.core.plain_ports == frozenset({1500}) and cfg.bind_ports() == (1500, 14500)
    assert _load(pki_dir, GOOD).core.plain_ports == frozenset({500})


def test_key_log_and_overrides(pki_dir: Path) -> None:
    cfg = parse_config(GOOD, base=pki_dir, overrides={"key_log": "keys", "control_socket": "/tmp/x.sock"})
    assert cfg.key_log == pki_dir / "keys" and cfg.core.key_log
    assert cfg.control_socket == Path("/tmp/x.sock")


def test_psk_peer_and_responder_any(pki_dir: Path) -> None:
    text = """
[peers.road]
remote_addr = "%any"
auth = "psk"
psk = "0x00112233445566778899"
local_id = "gw.test"
[peers.road.children.c]
local_ts = "10.0.0.0/8"
remote_ts = "0.0.0.0/0"
"""
    cfg = parse_config(text, base=pki_dir)
    (peer,) = cfg.core.peers
    assert peer.remote_addr is None and peer.psk == bytes.fromhex("00112233445566778899")
    assert peer.validator is None and cfg.addresses == ("0.0.0.0",)
    assert "0011" not in repr(peer)


@pytest.mark.parametrize("value,seconds", [(3600, 3600), ("90s", 90), ("30m", 1800), ("4h", 14400), ("1d", 86400),
                                           ("1.5h", 5400), (0, 0)])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "1w", "-5", "h", -1, True, None, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value,count", [(1000, 1000), ("500k", 500 << 10), ("4G", 4 << 30), ("2m", 2 << 20)])
def test_parse_size(value: object, count: int) -> None:
    assert parse_size(value) == count


@pytest.mark.parametrize("value", ["1.5G", "x", -3, False, 1.0])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_names_resolve_through_the_pki_store(pki_dir: Path, tmp_path: Path) -> None:
    """ca-profile and certificate names may live in a `python -m pki` store instead of TOML tables."""
    from cryptography import x509

    from pki.profile import CaProfile, RevocationPolicy
    from pki.store import Store

    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("corp", revocation=RevocationPolicy(mode="disable")))
    store.load_ca_certificate("corp", (pki_dir / "ca.pem").read_bytes())
    store.import_key_pair("gw1", (pki_dir / "gw.key").read_bytes())
    store.load_local_certificate("gw1", (pki_dir / "gw.pem").read_bytes())
    store.add_profile(CaProfile("empty"))
    text = f"""
[pki]
store = "{tmp_path / 'store'}"
[peers.branch]
remote_addr = "192.0.2.2"
certificate = "gw1"
ca_profiles = ["corp"]
[peers.branch.children.lan]
local_ts = "10.1.0.0/16"
remote_ts = "10.2.0.0/16"
"""
    cfg = parse_config(text, base=pki_dir)
    (peer,) = cfg.core.peers
    assert peer.local_id == Identity("fqdn", "gw.test") and peer.credential is not None
    branch = x509.load_pem_x509_certificate((pki_dir / "branch.pem").read_bytes())
    peer.validator(branch, [], dt.datetime.now(dt.timezone.utc), Identity("fqdn", "branch.test"))
    with pytest.raises(ConfigError, match=r"peers.branch.certificate: no \[certificates.gw2\] defined nor a local "):
        parse_config(text.replace('"gw1"', '"gw2"'), base=pki_dir)
    with pytest.raises(ConfigError, match=r"ca-profile 'empty' has no CA certificate in the store"):
        parse_config(text.replace('["corp"]', '["empty"]'), base=pki_dir)
    with pytest.raises(ConfigError, match=r"pki.store: .* is not a directory"):
        parse_config(text.replace("/store", "/nostore"), base=pki_dir)


def test_passphrase_protected_key_in_the_pki_store(pki_dir: Path, tmp_path: Path) -> None:
    """[pki] passphrase_file unlocks a store key; the file rule is pki's (first line, only its line ending
    removed: blanks are part of the passphrase); a wrong or missing passphrase names the key, not 'unknown'."""
    from pki.profile import CaProfile, RevocationPolicy
    from pki.store import Store

    secret = b" pass phrase with blanks "
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("corp", revocation=RevocationPolicy(mode="disable")))
    store.load_ca_certificate("corp", (pki_dir / "ca.pem").read_bytes())
    store.import_key_pair("gw1", (pki_dir / "gw.key").read_bytes(), store_passphrase=secret)
    store.load_local_certificate("gw1", (pki_dir / "gw.pem").read_bytes(), secret)
    (tmp_path / "pass").write_bytes(secret + b"\r\nsecond line ignored\n")
    (tmp_path / "stripped").write_bytes(secret.strip() + b"\n")
    for name in ("pass", "stripped"):
        (tmp_path / name).chmod(0o600)  # secrets: refused when others could read them (test_config_files.py)
    text = f"""
[pki]
store = "{tmp_path / 'store'}"
passphrase_file = "{tmp_path / 'pass'}"
[peers.branch]
remote_addr = "192.0.2.2"
certificate = "gw1"
ca_profiles = ["corp"]
[peers.branch.children.lan]
local_ts = "10.1.0.0/16"
remote_ts = "10.2.0.0/16"
"""
    (peer,) = parse_config(text, base=pki_dir).core.peers
    assert peer.credential is not None
    key_path = tmp_path / "store" / "local" / "gw1" / "key.pem"
    with pytest.raises(ConfigError) as e:  # .strip() would have been the wrong rule
        parse_config(text.replace("/pass", "/stripped"), base=pki_dir)
    assert str(e.value).startswith(f"pki.store: certificate-id 'gw1': key {key_path}: ")
    with pytest.raises(ConfigError, match=r"certificate-id 'gw1': key .*key.pem: .*set pki.passphrase_file"):
        parse_config(text.replace(f'passphrase_file = "{tmp_path / "pass"}"\n', ""), base=pki_dir)
    (tmp_path / "empty").write_bytes(b"\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(ConfigError, match=r"pki.passphrase_file: .*empty first line"):
        parse_config(text.replace("/pass", "/empty"), base=pki_dir)


def test_gateway_section(pki_dir: Path) -> None:
    text = GOOD.replace("[daemon]\n", '[daemon]\naddresses = ["192.0.2.1"]\n') + """
[gateway]
tun_name = "esp0"
tun_addresses = ["10.1.0.1/16"]
mtu = 1380
"""
    cfg = parse_config(text, base=pki_dir)
    g = cfg.gateway
    assert g is not None and (g.tun_name, g.tun_addresses, g.mtu, g.raw_esp) == ("esp0", ("10.1.0.1/16",), 1380, False)
    assert g.routes == ("10.2.0.0/16", "10.3.0.1/32")  # every child's remote_ts by default
    assert parse_config(GOOD, base=pki_dir).gateway is None
    for edit, message in [
        (('addresses = ["192.0.2.1"]', 'addresses = ["0.0.0.0"]'),
         "gateway.tun_name: the gateway needs exactly one local address"),
        (('tun_name = "esp0"', 'tun_name = "a-very-long-interface-name"'), "gateway.tun_name: "),
        (('mtu = 1380', 'mtu = 1380\nroutes = ["10.9.0.1/8"]'), "gateway.routes[0]: "),
        (('mtu = 1380', 'mtu = 100'), "gateway.mtu: expected an integer 576-9000"),
        (('mtu = 1380', 'mtu = 1380\ntun = "x"'), "gateway: unknown key 'tun'"),
    ]:
        bad = text.replace(*edit)
        with pytest.raises(ConfigError) as err:
            parse_config(bad, base=pki_dir)
        assert message in str(err.value), str(err.value)


def test_gateway_section_knobs(pki_dir: Path) -> None:
    """[gateway] takes the static gateway's knobs (offload, outer_mtu, mtu unset = follow the path MTU,
    batch_size), and the daemon's gateway is built from them: the same probed, offloaded path."""
    from esp.dataplane import ESP_OVERHEAD_MAX
    from ike.daemon import make_gateway
    base = GOOD.replace("[daemon]\n", '[daemon]\naddresses = ["192.0.2.1"]\n')
    base += '\n[gateway]\ntun_name = "esp0"\n'
    g = parse_config(base, base=pki_dir).gateway
    assert g is not None and (g.mtu, g.outer_mtu, g.offload, g.batch_size) == (None, None, True, 64)
    gc = make_gateway(parse_config(base, base=pki_dir)).config
    assert (gc.mtu, gc.outer_mtu, gc.offload, gc.batch_size, gc.ike_socket) == (None, None, True, 64, True)
    text = base + "offload = false\nouter_mtu = 9000\nbatch_size = 128\n"
    cfg = parse_config(text, base=pki_dir)
    assert cfg.gateway is not None
    assert (cfg.gateway.mtu, cfg.gateway.outer_mtu, cfg.gateway.offload, cfg.gateway.batch_size) == \
        (None, 9000, False, 128)
    gc = make_gateway(cfg).config
    assert (gc.mtu, gc.outer_mtu, gc.offload, gc.batch_size) == (None, 9000, False, 128)
    assert gc.slot_size >= 9000 + ESP_OVERHEAD_MAX  # a jumbo path is followed, not capped at 2 KB slots
    gc = make_gateway(parse_config(base + "mtu = 9000\n", base=pki_dir)).config  # was a ValueError at start
    assert gc.mtu == 9000 and gc.slot_size >= 9000 + ESP_OVERHEAD_MAX
    for extra, message in [
        ("offload = 1\n", "gateway.offload: expected true or false, got 1"),
        ("outer_mtu = 100\n", "gateway.outer_mtu: expected an integer 576-9000, got 100"),
        ("outer_mtu = \"auto\"\n", "gateway.outer_mtu: expected an integer 576-9000, got 'auto'"),
        ("batch_size = 0\n", "gateway.batch_size: expected an integer 1-1024, got 0"),
        ("mtu = 1500\nouter_mtu = 1400\n", "gateway.mtu: 1500 does not fit gateway.outer_mtu 1400"),
        ("ofload = false\n", "gateway: unknown key 'ofload' (did you mean 'offload'?)"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(base + extra, base=pki_dir)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_start_action(pki_dir: Path) -> None:
    cfg = parse_config(GOOD.replace('rekey_time = "4h"', 'rekey_time = "4h"\nstart_action = "start"'), base=pki_dir)
    assert cfg.auto_start == ("branch",)
    assert parse_config(GOOD, base=pki_dir).auto_start == ()
    with pytest.raises(ConfigError, match=r"peers.branch.start_action: \"start\" needs a remote_addr"):
        parse_config(GOOD.replace('remote_addr = "192.0.2.2"', 'remote_addr = "%any"\nstart_action = "start"'),
                     base=pki_dir)


def test_listen_addresses_follow_the_peers(pki_dir: Path) -> None:
    v6 = GOOD.replace('local_addr = "192.0.2.1"\n', "").replace('remote_addr = "192.0.2.2"', 'remote_addr = "2001:db8::2"')
    assert parse_config(v6, base=pki_dir).addresses == ("::",)
    assert parse_config(GOOD.replace('local_addr = "192.0.2.1"\n', ""), base=pki_dir).addresses == ("0.0.0.0",)
    with pytest.raises(ConfigError, match=r"peers.branch.remote_addr: no IPv6 address among daemon.addresses"):
        parse_config(v6.replace("[daemon]\n", '[daemon]\naddresses = ["192.0.2.1"]\n'), base=pki_dir)
