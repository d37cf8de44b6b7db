"""Control plane: IKE_SA + CHILD_SA establishments per second (RSA-2048 and ECDSA P-256 certificates) through
the sans-I/O core in memory, and CRL-checked certificate validations per second through pki.validate."""
from __future__ import annotations

__all__ = ["run"]


def run(quick: bool = False, repeats: int = 3) -> dict:
    try:
        from ike.dispatcher import Dispatcher  # noqa: F401
    except ImportError as exc:
        return {"unavailable": f"ike.dispatcher is not present yet ({exc})"}
    return {"unavailable": "control-plane benchmark not wired yet"}
