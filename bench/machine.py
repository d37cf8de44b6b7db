"""What machine a result came from: a number without its CPU and library versions means nothing."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

__all__ = ["describe"]

#: CPU flags that decide crypto speed (AES-NI, carry-less multiply, vector widths, SHA extensions).
CRYPTO_FLAGS = ("aes", "pclmulqdq", "avx", "avx2", "vaes", "vpclmulqdq", "sha_ni", "avx512f", "avx512vl",
                "avx512bw", "bmi2", "adx")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def _hypervisor(flags: set[str]) -> str | None:
    if "hypervisor" not in flags:
        return None
    try:
        return Path("/sys/class/dmi/id/sys_vendor").read_text().strip() or "yes"
    except OSError:
        return "yes"


def describe() -> dict:
    """CPU model and flags, cores, OpenSSL versions (system libcrypto and cryptography's), Python, espresso,
    ipsec-mb version and the code path it picks on this CPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    d: dict = {
        "cpu_model": info.get("model name") or platform.processor() or "unknown",
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_mhz": info.get("cpu MHz"),
        "crypto_flags": [f for f in CRYPTO_FLAGS if f in flags],
        "missing_crypto_flags": [f for f in CRYPTO_FLAGS if f not in flags],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "hypervisor": _hypervisor(flags),
        "os": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
    }
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        d["cryptography"] = cryptography.__version__
        d["cryptography_openssl"] = backend.openssl_version_text()
    except Exception as exc:  # noqa: BLE001
        d["cryptography"] = f"not available: {exc}"
    try:
        from bench import _ceilings

        d["libcrypto"] = _ceilings.openssl_version()
        mb = _ceilings.ipsecmb_info()
        d["ipsecmb"] = f"{mb[0]} (code path: {mb[1]})" if mb else "not built"
    except ImportError as exc:
        d["libcrypto"] = d["ipsecmb"] = f"unknown (bench._ceilings not built: {exc})"
    try:
        import esp

        d["espresso"] = getattr(esp, "__version__", None)
        import esp._core as core

        d["espresso_core"] = "built"
        d["espresso_ipsecmb"] = bool(getattr(core, "HAVE_IPSECMB", False))
    except Exception as exc:  # noqa: BLE001
        d["espresso_core"] = f"not available: {exc}"
    if d.get("espresso") is None:
        try:
            from importlib.metadata import version

            d["espresso"] = version("espresso-ipsec")
        except Exception:  # noqa: BLE001
            d["espresso"] = "unknown"
    try:
        import subprocess

        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        if rev.returncode == 0:
            d["git_commit"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import numpy

        d["numpy"] = numpy.__version__
    except ImportError:
        pass
    return d
