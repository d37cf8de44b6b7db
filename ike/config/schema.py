"""What a loaded configuration is: the daemon's settings around the core's own frozen dataclasses."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core_config import (
    CoreConfig,
    Credential,
)

DEFAULT_CONTROL_SOCKET = "/run/espresso/ike.sock"
#: A configuration file larger than this is refused (it is operator input, but still bounded).
MAX_CONFIG_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CaProfileConfig:
    """One ``[ca-profiles.NAME]``: trust anchors for validating peers and their revocation policy."""

    name: str
    ca_certs: tuple[Any, ...]
    revocation: Any  # pki.profile.RevocationPolicy


@dataclass(frozen=True)
class CertificateConfig:
    """One ``[certificates.NAME]``: our key, certificate and the intermediates we send."""

    name: str
    credential: Credential
    path: Path | None = None


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: run esp's TUN gateway in the daemon (root), so CHILD_SAs carry real traffic.

    ``routes`` are the remote inner prefixes routed into the TUN device (default: every child's remote_ts);
    ``tun_addresses`` the addresses the device gets (e.g. this site's inner gateway address). The other
    knobs are esp.gateway.GatewayConfig's, so the daemon runs the same probed, offloaded path as
    ``python -m esp gateway``: ``mtu`` None follows the path (``outer_mtu`` less the installed SAs' ESP
    overhead, with ICMP "too big" for what does not fit); ``offload`` false is the static gateway's
    ``--no-offload``."""

    tun_name: str = "esp%d"
    tun_addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    mtu: int | None = None
    outer_mtu: int | None = None
    offload: bool = True
    batch_size: int = 64
    raw_esp: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs: the core's configuration plus what only the I/O side uses."""

    core: CoreConfig
    addresses: tuple[str, ...]
    port: int
    nat_port: int
    control_socket: Path
    key_log: Path | None
    #: peer name -> our address for it (None: whichever address the socket uses)
    local_addrs: Mapping[str, str | None] = field(default_factory=dict)
    ca_profiles: Mapping[str, CaProfileConfig] = field(default_factory=dict)
    certificates: Mapping[str, CertificateConfig] = field(default_factory=dict)
    source: Path | None = None
    gateway: GatewaySettings | None = None
    #: peers with ``start_action = "start"``: initiated when the daemon starts and again (with backoff)
    #: whenever their IKE_SA goes away other than by an operator's terminate
    auto_start: tuple[str, ...] = ()
    #: ``[metrics] listen``: where the Prometheus endpoint listens (address, port); None: no endpoint
    metrics_listen: tuple[str, int] | None = None
    #: ``[pki] intermediates`` (CA certificates held to build peers' paths, never trust anchors) and
    #: ``[pki] crls`` (CRL files), as loaded: check-config reports them
    intermediates: tuple[Any, ...] = ()
    crls: tuple[Any, ...] = ()

    def bind_ports(self) -> tuple[int, ...]:
        """Every local UDP port some peer uses (sorted): the daemon opens one socket per address and port."""
        ports = {self.port, self.nat_port}
        for p in self.core.peers:
            ports.update((p.local_port, p.local_nat_port))
        return tuple(sorted(ports))


# --------------------------------------------------------------------------------------------------------
# Scalars

