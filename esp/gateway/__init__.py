"""The router-facing side of the data plane: TUN devices, batched UDP/raw-ESP socket I/O and the gateway
runtime that moves batches between them and :class:`esp.Dataplane`.

It sits beside the core (SA, batch, suites, ``_core``) and the SPD/SAD, which know nothing of devices or
sockets; only this package does I/O. ``python -m esp gateway`` and the IKE daemon's ``[gateway]`` run it.
"""
from esp.gateway.runtime import Gateway, GatewayConfig, GatewayError
from esp.gateway.static import apply_static, load_static, run_static
from esp.gateway.stats import GatewayStats, QueueStats
from esp.gateway.tun import TUN_PATH, Tun, TunError, open_tun

__all__ = [
    "Gateway", "GatewayConfig", "GatewayError", "GatewayStats", "QueueStats", "apply_static", "load_static",
    "run_static", "TUN_PATH", "Tun", "TunError", "open_tun",
]
