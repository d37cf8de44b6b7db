"""End to end: two espresso peers negotiate with IKEv2 and certificates, then carry traffic through their ESP
SAs over loopback UDP; and the same I/O path unencrypted, which is the tunnel's ceiling."""
from __future__ import annotations

__all__ = ["run"]


def run(quick: bool = False, repeats: int = 3) -> dict:
    try:
        import ike.demo  # noqa: F401
    except ImportError as exc:
        return {"unavailable": f"ike.demo is not present yet ({exc})"}
    return {"unavailable": "end-to-end benchmark not wired yet"}
