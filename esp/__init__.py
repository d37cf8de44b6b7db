"""espresso's ESP data plane (RFC 4303): SAs, batches and the compiled per-packet core."""
try:
    from esp import _core  # noqa: F401  (the compiled core; everything below needs it)
except ImportError as exc:  # pragma: no cover - depends on how espresso was installed
    from pathlib import Path as _Path

    _here = _Path(__file__).resolve().parent
    raise ImportError(
        f"espresso's compiled core (esp._core) is not built in {_here}. Python is importing the source tree "
        f"rather than the installed package: install it in place with `pip install -e .`, or run from another "
        f"directory. ({exc})"
    ) from exc
from esp.batch import DEFAULT_SLOT, PacketBatch, Verdict
from esp.dataplane import Dataplane
from esp.events import SaAcquire, SaExpired
from esp.spd import Action, Policy, Selector
from esp.sa import Counters, Direction, Lifetime, Mode, Sa, SaParams, UdpEncap, available_backends, best_backend
from esp.suites import SUITES, Cipher, Integ, Suite, parse_suite

__all__ = [
    "Sa", "SaParams", "Mode", "Direction", "Lifetime", "UdpEncap", "Counters", "PacketBatch", "Verdict",
    "DEFAULT_SLOT", "Suite", "SUITES", "Cipher", "Integ", "parse_suite", "available_backends", "best_backend",
    "Dataplane", "Policy", "Selector", "Action", "SaExpired", "SaAcquire",
]
__version__ = "0.1.0"
