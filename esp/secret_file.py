"""Files that hold secrets (SA keys, private keys): who may read them, and writing them so no one else can.

Neutral ground for every part of esp that reads or writes keys (the gateway's configuration, the capture tools'
SA files), so none of them imports another for it.
"""
from __future__ import annotations

import os

try:  # the package's error base, once esp/errors.py exists
    from esp.errors import EspError as _Base
except ImportError:  # pragma: no cover - during bring-up only
    _Base = Exception  # type: ignore[misc,assignment]

__all__ = ["SecretFileError", "check_secret_file", "write_secret_file"]


class SecretFileError(_Base):  # type: ignore[misc,valid-type]
    """A file of secrets that must not be used; ``str()`` is ``file: reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def check_secret_file(path: str | os.PathLike[str]) -> None:
    """OpenSSH's rule for a file of keys: refused when group or others have any permission on it, or when
    someone other than the running user owns it. Keys others could read are already compromised; running on
    with them would hide that (Wireshark does not mind an esp_sa file of mode 600)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SecretFileError(os.fspath(path), f"cannot read: {exc.strerror or exc}") from None
    mode = st.st_mode & 0o7777
    if mode & 0o077:
        raise SecretFileError(os.fspath(path), f"UNPROTECTED KEY FILE: permissions {mode:04o} are too open; it "
                                               f"must not be accessible by group or others (chmod 600 it)")
    if st.st_uid != os.geteuid():
        raise SecretFileError(os.fspath(path), f"UNPROTECTED KEY FILE: owned by uid {st.st_uid}, not by the "
                                               f"user running this (uid {os.geteuid()}); chown it")


def write_secret_file(path: str | os.PathLike[str], text: str) -> None:
    """Write a file readable by its owner only (created 0600, never briefly wider; an existing file is
    narrowed to 0600 before anything is written into it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
