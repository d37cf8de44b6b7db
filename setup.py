"""Builds espresso's compiled modules.

libcrypto (OpenSSL 3) is required. Intel's ipsec-mb is linked when its header is found on an x86-64 host;
without it the OpenSSL backend alone is built and every suite still works. Set ESPRESSO_NO_IPSECMB=1 to
build without it, ESPRESSO_ASAN=1 for an AddressSanitizer build (tests of malformed input).
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
INCLUDE_DIRS = ["/usr/include", "/usr/local/include"]


def have_ipsecmb() -> bool:
    if os.environ.get("ESPRESSO_NO_IPSECMB") == "1":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return any(Path(d, "intel-ipsec-mb.h").exists() for d in INCLUDE_DIRS)


IPSECMB = have_ipsecmb()

extra_compile = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-deprecated-declarations", "-Wno-sign-compare"]
extra_link: list[str] = []
if os.environ.get("ESPRESSO_ASAN") == "1":
    extra_compile += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]
    extra_link += ["-fsanitize=address"]

crypto_libs = ["crypto"] + (["IPSec_MB"] if IPSECMB else [])
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + ([("ESPRESSO_HAVE_IPSECMB", "1")] if IPSECMB else [])

# Every compiled module, built only where its source exists.
MODULES = {
    "esp._core": ("esp/_core.pyx", crypto_libs),
    "esp._classify": ("esp/_classify.pyx", []),
    "esp.gateway._io": ("esp/gateway/_io.pyx", []),
    "esp.pcap._pcapio": ("esp/pcap/_pcapio.pyx", []),
    "esp.gateway._offload": ("esp/gateway/_offload.pyx", []),
    "esp.gateway._loop": ("esp/gateway/_loop.pyx", []),
    "bench._ceilings": ("bench/_ceilings.pyx", crypto_libs),
    "ike._modp": ("ike/_modp.pyx", ["crypto"]),
}

extensions = [
    Extension(
        name,
        [src],
        include_dirs=[numpy.get_include(), str(HERE / "esp")],
        libraries=libs,
        define_macros=macros,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    for name, (src, libs) in MODULES.items()
    if (HERE / src).exists()
]

if "--quiet-ipsecmb" not in sys.argv:
    print(f"espresso: ipsec-mb backend {'enabled' if IPSECMB else 'not available (OpenSSL only)'}", file=sys.stderr)

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
