"""The daemon's TOML configuration, validated whole at start.

Why a loader of its own: the protocol core takes frozen dataclasses (``ike.core_config``) and never reads
files; the daemon must turn one operator-written file into those objects and refuse a bad one *before*
binding a socket, with the key path and the reason (``peers.branch.children.lan.esp_proposals[1]: unknown
algorithm 'aes128gcm17'``), as ``swanctl --load-all`` does. Proposals are parsed with the core's own parser,
identities typed, certificates and keys loaded and matched with each other and with ``local_id``, and trust
anchors turned into a :class:`pki.validate.Validator` per ca-profile.

Example (the keys are swanctl's where they exist)::

    [daemon]
    addresses = ["192.0.2.1"]          # where to bind; default all IPv4 addresses
    port = 500                          # IKE without the non-ESP marker (charon's port)
    nat_port = 4500
    control_socket = "/run/espresso/ike.sock"
    key_log = "/var/lib/espresso/wireshark"   # off unless set: Wireshark ikev2_decryption_table + esp_sa

    [pki]
    store = "/var/lib/espresso/pki"     # optional: ca-profiles and local certificates of `python -m pki`
    fetch_revocation = true             # download CRLs (CRL distribution points / crl_url); false: loaded ones only
    passphrase_file = "/etc/espresso/pki.pass"  # for encrypted store keys: first line, line ending removed
    intermediates = ["corp-sub.pem"]    # CA certificates to build peers' paths with, never trust anchors
    crls = ["corp-root.crl"]            # CRL files (swanctl x509crl/); fetched ones are preferred when fresh

    [ca-profiles.corp]                  # or a ca-profile of the store, by name
    ca_certs = ["corp-root.pem"]        # trust anchors; paths relative to this file
    revocation = "disable"              # "crl" (default), "ocsp" or "disable"; crl_url / ocsp_url / fail_open

    [certificates.gw1]                  # or a local certificate (certificate-id) of the store, by name
    cert = "gw1.pem"
    key = "gw1.key"
    chain = ["corp-sub.pem"]            # intermediates we send
    passphrase_file = "gw1.pass"        # if gw1.key is encrypted (same rule as python -m pki)

    [gateway]                           # optional (root): TUN device + ESP threads of esp.gateway
    tun_name = "esp0"
    tun_addresses = ["10.1.0.1/16"]     # routes default to every child's remote_ts
    offload = true                      # UDP GSO/GRO + TUN TSO/USO where probed OK; false: one packet a call
    # mtu = 1400                        # TUN MTU; unset: follow outer_mtu less the SAs' ESP overhead
    # outer_mtu = 1500                  # unset: the MTU of the interface holding daemon.addresses[0]
    # batch_size = 64                   # packets per data-thread cycle (1-1024)

    [metrics]                           # optional: Prometheus text at http://127.0.0.1:9745/metrics
    listen = "127.0.0.1:9745"           # HOST:PORT or [IPv6]:PORT (pip install 'espresso-ipsec[metrics]')

    [peers.branch]
    local_addr = "192.0.2.1"
    remote_addr = "198.51.100.7"        # or "%any" (responder only)
    # remote_port = 500                 # the peer's IKE port; remote_nat_port: where the IKE_SA floats
    # remote_nat_port = 4500            # (default 4500 after port 500, else remote_port: swanctl's rule)
    local_id = "gw1.example.net"        # default: the certificate's first subjectAltName
    remote_id = "branch.example.net"    # default: any identity the peer's certificate proves
    certificate = "gw1"
    ca_profiles = ["corp"]              # who may sign the peer's certificate (default: all profiles)
    # trusted_ca_group = "partners"     # and/or a pki store group (python -m pki trusted-ca-group/ca-profile-group)
    auth = "rsa/pss-sha384"             # swanctl local.auth: pubkey, psk, or the signature we make
    remote_auth = "ecdsa-384"           # swanctl remote.auth: what the peer (and its chain) must sign with
    revocation = "strict"               # swanctl remote.revocation: strict, ifuri, relaxed (unset: the profile's)
    ike_proposals = ["aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp2048"]
    rekey_time = "4h"
    start_action = "start"              # initiate at start, and again whenever the IKE_SA is lost
    fragmentation = "yes"               # RFC 7383: "yes", "accept" (announce, send whole) or "no" (swanctl's)
    fragment_size = 1280                # largest IP datagram of a fragment (IP+UDP+marker+IKE), charon's meaning

    [peers.branch.children.lan]
    local_ts = ["10.1.0.0/16"]
    remote_ts = ["10.2.0.0/16"]
    esp_proposals = ["aes128gcm16", "aes256-sha256"]
    rekey_time = "1h"
    life_time = "66m"
    rekey_bytes = "4G"
"""
from __future__ import annotations

from ..errors import ConfigError
from .load import MAX_NESTING, load_config, parse_config, parse_toml
from .pki import make_validator
from .schema import DEFAULT_CONTROL_SOCKET, CaProfileConfig, CertificateConfig, DaemonConfig, GatewaySettings
from .values import parse_duration, parse_size

__all__ = [
    "DEFAULT_CONTROL_SOCKET",
    "MAX_NESTING",
    "CaProfileConfig",
    "CertificateConfig",
    "ConfigError",
    "DaemonConfig",
    "GatewaySettings",
    "load_config",
    "make_validator",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_toml",
]
