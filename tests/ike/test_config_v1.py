"""``version = 1`` in the daemon's configuration: what the IKEv1 core runs, what it refuses (with the key path),
check-config's line, and swanctl.conf's ``version = 1`` imported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ike.config import ConfigError, load_config, parse_config
from ike.config.swanctl import dump_toml, import_swanctl
from ike.v1.profile import v1_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[daemon]
addresses = ["127.0.0.1"]
control_socket = "ike.sock"

[peers.branch]
version = 1
local_addr = "127.0.0.1"
remote_addr = "127.0.0.2"
local_id = "hq.test"
remote_id = "branch.test"
auth = "psk"
psk = "v1-lab-secret-0123"
{peer}

[peers.branch.children.net]
local_ts = ["10.0.1.0/24"]
remote_ts = ["10.0.2.0/24"]
{child}
"""


def _conf(peer: str = "", child: str = "") -> str:
    return BASE.format(peer=peer, child=child)


def test_version_1_peer_maps_to_the_ikev1_core():
    cfg = parse_config(_conf('ike_proposals = ["aes256-sha1-modp3072"]\nencap = true',
                             'esp_proposals = ["aes128-sha256-modp2048"]\nlife_time = "30m"\nrekey_time = "20m"'))
    (p,) = cfg.core.peers
    assert p.version == 1
    v = v1_config(p, ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert (v.enc_key_bits, v.hash, v.group, v.esp_key_bits, v.esp_auth, v.pfs_group) == (256, "sha1", 15, 128, 5, 14)
    assert (v.local_id, v.remote_id, v.local_ts, v.remote_ts, v.encap) == ("hq.test", "branch.test", "10.0.1.0/24",
                                                                           "10.0.2.0/24", True)
    assert v.esp_lifetime == 1800
    # RFC 3706 DPD from the same key as IKEv2's; kilobyte lifetimes from the child's life_bytes
    v = v1_config(parse_config(_conf('dpd_delay = "10s"', 'life_bytes = 2000000')).core.peers[0],
                  ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert (v.dpd_delay, v.esp_life_kb) == (10.0, 1954)
    # unset proposals: IKEv1's defaults (the IKEv2 ones are AEAD), no PFS unless the ESP proposal names a group
    v = v1_config(parse_config(_conf()).core.peers[0], ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert (v.enc_key_bits, v.hash, v.group, v.esp_auth, v.pfs_group) == (128, "sha256", 14, 5, 14)
    assert parse_config(_conf().replace("version = 1\n", "")).core.peers[0].version == 2
    # ESP with AES-GCM (RFC 4106: transform 20, no authentication attribute) and HMAC-SHA-384/512 (RFC 4868)
    from ike.v1.session import ESP_AES, ESP_AES_GCM_16, esp_suite
    for text, want in (("aes256gcm16-ecp256", (256, 0, ESP_AES_GCM_16, 19, ("aes256gcm16", 36, 0))),
                       ("aes128-sha384", (128, 6, ESP_AES, None, ("aes128-sha384", 16, 48))),
                       ("aes256-sha512-modp4096", (256, 7, ESP_AES, 16, ("aes256-sha512", 32, 64)))):
        v = v1_config(parse_config(_conf("", f'esp_proposals = ["{text}"]')).core.peers[0], ("127.0.0.1", 500),
                      ("127.0.0.2", 500), 1.0)
        assert (v.esp_key_bits, v.esp_auth, v.esp_transform, v.pfs_group,
                esp_suite(v.esp_transform, v.esp_key_bits, v.esp_auth)) == want, text
    # DPD (RFC 3706) is the peer's dpd_delay, as for IKEv2
    v = v1_config(parse_config(_conf('dpd_delay = "10s"')).core.peers[0], ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert v.dpd_delay == 10.0 and v.signature is None


@pytest.mark.parametrize("peer,child,error", [
    ('fragmentation = "yes"', "", "peers.branch.fragmentation: is not available for IKEv1 (version = 1) here"),
    ('send_cert = "never"', "", "peers.branch.send_cert: is not available for IKEv1"),
    ('ike_proposals = ["aes128gcm16-prfsha256-ecp256"]', "", "peers.branch.ike_proposals[0]: 'aes128gcm16-prfsha256"),
    ('ike_proposals = ["aes128-sha256"]', "", "peers.branch.ike_proposals[0]: 'aes128-sha256': phase 1 needs a DH group"),
    ('ike_proposals = ["aes128-sha256-modp2048", "aes256-sha256-modp2048"]', "",
     "peers.branch.ike_proposals: IKEv1 offers one proposal here"),
    ("", 'esp_proposals = ["chacha20poly1305"]', "peers.branch.children.net.esp_proposals[0]: 'chacha20poly1305'"),
    ("", 'mode = "transport"', "peers.branch.children.net.mode: IKEv1 runs tunnel mode only so far"),
    ('remote_id = "dn:CN=x"'.replace("remote_id", "remote_id"), "", None),
    ("version = 3", "", "peers.branch.version: expected an integer 1-2, got 3"),
])
def test_what_ikev1_cannot_run_is_refused_with_its_path(peer, child, error):
    text = _conf(peer, child)
    if peer.startswith("version"):
        text = text.replace("version = 1\n", "")
    if peer.startswith("remote_id"):
        text = text.replace('remote_id = "branch.test"\n', "").replace(peer, 'remote_id = "dn:CN=x"')
        error = "peers.branch.remote_id: IKEv1 identities with psk are fqdn, ipv4 here, not dn"
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert str(exc.value).startswith(error), str(exc.value)


def test_ikev1_only_keys_are_refused_for_ikev2():
    with pytest.raises(ConfigError, match=r"^peers\.branch\.aggressive: applies to IKEv1 only \(version = 1\)"):
        parse_config(_conf("aggressive = false").replace("version = 1\n", ""))
    with pytest.raises(ConfigError, match=r"^peers\.branch\.aggressive: applies to IKEv1 only \(version = 1\)"):
        parse_config(_conf("aggressive = true").replace("version = 1\n", ""))


def test_aggressive_mode_is_an_explicit_ikev1_option():
    (p,) = parse_config(_conf()).core.peers
    assert not p.aggressive and not v1_config(p, ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0).aggressive
    (p,) = parse_config(_conf("aggressive = true")).core.peers
    assert p.aggressive and v1_config(p, ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0).aggressive


def test_check_config_shows_the_version(tmp_path: Path):
    conf = tmp_path / "v1.toml"
    conf.write_text(_conf())
    r = subprocess.run([sys.executable, "-m", "ike", "check-config", "--config", str(conf)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK; peers: branch (IKEv1, 1 children)" in r.stdout, r.stdout + r.stderr
    conf.write_text(_conf("fragmentation = \"no\""))
    r = subprocess.run([sys.executable, "-m", "ike", "check-config", "--config", str(conf)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "peers.branch.fragmentation: is not available for IKEv1" in r.stderr


SWANCTL = """
connections {
   branch {
      version = 1
      local_addrs = 192.0.2.1
      remote_addrs = 192.0.2.2
      proposals = aes128-sha256-modp2048
      local { auth = psk
              id = hq.test }
      remote { auth = psk
               id = branch.test }
      children {
         net { local_ts = 10.1.0.0/16
               remote_ts = 10.2.0.0/16
               esp_proposals = aes128-sha256-modp2048 }
      }
   }
}
secrets {
   ike-v1 { id-1 = hq.test
            id-2 = branch.test
            secret = v1-lab-secret-0123 }
}
"""


def test_swanctl_version_1_is_imported(tmp_path: Path):
    d = tmp_path / "swanctl"
    d.mkdir()
    (d / "swanctl.conf").write_text(SWANCTL)
    imp = import_swanctl(d / "swanctl.conf", out_dir=tmp_path)
    assert imp.refused == [] and imp.config["peers"]["branch"]["version"] == 1
    out = tmp_path / "branch.toml"
    out.write_text(dump_toml(imp.config))
    (p,) = load_config(out).core.peers
    assert p.version == 1 and p.psk == b"v1-lab-secret-0123" and not p.aggressive
    # aggressive = yes carries over for version 1 (and only there: the loader refuses it for IKEv2 with its path)
    (d / "swanctl.conf").write_text(SWANCTL.replace("version = 1", "version = 1\n      aggressive = yes"))
    imp = import_swanctl(d / "swanctl.conf", out_dir=tmp_path)
    assert imp.refused == [] and imp.config["peers"]["branch"]["aggressive"] is True
    out.write_text(dump_toml(imp.config))
    assert load_config(out).core.peers[0].aggressive
    (d / "swanctl.conf").write_text(SWANCTL.replace("version = 1", "aggressive = yes"))
    imp = import_swanctl(d / "swanctl.conf", out_dir=tmp_path)
    out.write_text(dump_toml(imp.config))
    with pytest.raises(ConfigError, match=r"peers\.branch\.aggressive: applies to IKEv1 only"):
        load_config(out)
    # version = 2 (and 0, "any") stay IKEv2
    (d / "swanctl.conf").write_text(SWANCTL.replace("version = 1", "version = 2"))
    imp = import_swanctl(d / "swanctl.conf", out_dir=tmp_path)
    assert "version" not in imp.config["peers"]["branch"]


def test_3des_is_accepted_for_ikev1_where_a_configuration_names_it():
    """Issue 17: 3DES (and SHA-1) only where named: ``3des`` as the cipher of a version = 1 peer's phase 1
    (OAKLEY 5) and quick mode (ESP_3DES), strongSwan syntax; the defaults stay AES/SHA-256."""
    from ike.v1 import keymat as km
    from ike.v1.session import ESP_3DES, esp_suite
    cfg = parse_config(_conf('ike_proposals = ["3des-sha1-modp2048"]', 'esp_proposals = ["3des-sha1-modp2048"]'))
    v = v1_config(cfg.core.peers[0], ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert (v.enc_alg, v.hash, v.group) == (km.OAKLEY_3DES_CBC, "sha1", 14)
    assert (v.esp_transform, v.esp_auth, v.pfs_group) == (ESP_3DES, 2, 14)
    assert esp_suite(v.esp_transform, v.esp_key_bits, v.esp_auth) == ("3des-sha1", 24, 20)
    for text, suite in (("3des-sha256", "3des-sha256"), ("3des-sha384-ecp256", "3des-sha384"),
                        ("3des-sha512", "3des-sha512")):
        v = v1_config(parse_config(_conf("", f'esp_proposals = ["{text}"]')).core.peers[0], ("127.0.0.1", 500),
                      ("127.0.0.2", 500), 1.0)
        assert esp_suite(v.esp_transform, v.esp_key_bits, v.esp_auth)[0] == suite
        assert v.enc_alg == km.OAKLEY_AES_CBC  # phase 1 keeps its default
    v = v1_config(parse_config(_conf()).core.peers[0], ("127.0.0.1", 500), ("127.0.0.2", 500), 1.0)
    assert (v.enc_alg, v.esp_transform) == (km.OAKLEY_AES_CBC, 12)


@pytest.mark.parametrize("peer,child,error", [
    ('ike_proposals = ["des-sha1-modp2048"]', "", "peers.branch.ike_proposals[0]: 'des-sha1-modp2048': IKEv1 supports"),
    ('ike_proposals = ["3des-modp2048"]', "", "peers.branch.ike_proposals[0]: '3des-modp2048': IKEv1 needs a hash"),
    ("", 'esp_proposals = ["3des"]', "peers.branch.children.net.esp_proposals[0]: '3des': IKEv1 needs an integrity"),
])
def test_ikev1_cipher_errors_name_3des(peer, child, error):
    with pytest.raises(ConfigError) as exc:
        parse_config(_conf(peer, child))
    assert str(exc.value).startswith(error), str(exc.value)
    if "supports" in error:
        assert "3des (only when named)" in str(exc.value)


def test_3des_stays_refused_for_ikev2():
    with pytest.raises(ConfigError, match="3des is weak and not supported"):
        parse_config(_conf('ike_proposals = ["3des-sha1-modp2048"]').replace("version = 1\n", ""))
    with pytest.raises(ConfigError, match="3des is weak and not supported"):
        parse_config(_conf("", 'esp_proposals = ["3des-sha1"]').replace("version = 1\n", ""))


def test_swanctl_version_1_with_3des_is_imported(tmp_path: Path):
    d = tmp_path / "swanctl"
    d.mkdir()
    (d / "swanctl.conf").write_text(SWANCTL.replace("aes128-sha256-modp2048", "3des-sha1-modp2048"))
    imp = import_swanctl(d / "swanctl.conf", out_dir=tmp_path)
    out = tmp_path / "branch.toml"
    out.write_text(dump_toml(imp.config))
    (p,) = load_config(out).core.peers
    assert p.ike_proposals == ("3des-sha1-modp2048",) and p.children[0].esp_proposals == ("3des-sha1-modp2048",)
