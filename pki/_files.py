"""File helpers shared by the PKI: bounded reads and crash-safe writes.

Writes go to a temporary file in the same directory, created with its final mode (0600 for secrets) from the first
byte, fsynced, then renamed over the target: a reader sees the old file or the new one, never half of either.
"""
from __future__ import annotations

import os
from pathlib import Path

from pki.errors import InputTooLargeError, PkiError

__all__ = ["MAX_INPUT_BYTES", "PUBLIC_MODE", "SECRET_MODE", "read_bounded", "write_atomic"]

#: The largest certificate, chain, CSR, CRL or key file we accept. A CRL of ~30k entries fits.
MAX_INPUT_BYTES = 1 << 20
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> bytes:
    """Read a whole file, refusing anything above ``limit`` before reading it into memory."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise PkiError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise PkiError(f"{p}: is a directory") from None
    except PermissionError:
        raise PkiError(f"{p}: permission denied") from None
    if len(data) > limit:
        raise InputTooLargeError(f"{p}: larger than {limit} bytes")
    return data


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its creation."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(p.parent, p.name, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(p.parent)


def _create_temp(directory: Path, stem: str, mode: int) -> tuple[int, str]:
    # mkstemp creates 0600; for public files we open our own name with the wanted mode (umask still applies,
    # which only ever removes permissions).
    for _ in range(100):
        name = directory / f".{stem}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        except FileExistsError:
            continue
        return fd, str(name)
    raise PkiError(f"{directory}: cannot create a temporary file")  # pragma: no cover


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


