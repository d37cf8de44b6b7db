"""espresso's ESP data plane (RFC 4303): SAs, batches and the compiled per-packet core."""
from esp.batch import DEFAULT_SLOT, PacketBatch, Verdict
from esp.sa import Counters, Direction, Lifetime, Mode, Sa, SaParams, UdpEncap, available_backends, best_backend
from esp.suites import SUITES, Cipher, Integ, Suite, parse_suite

__all__ = [
    "Sa", "SaParams", "Mode", "Direction", "Lifetime", "UdpEncap", "Counters", "PacketBatch", "Verdict",
    "DEFAULT_SLOT", "Suite", "SUITES", "Cipher", "Integ", "parse_suite", "available_backends", "best_backend",
]
__version__ = "0.1.0"
