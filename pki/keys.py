"""Key pairs: generate, save (PKCS#8 PEM, mode 0600, optionally encrypted), load and describe.

JUNOS offers ``generate-key-pair type rsa|ecdsa size N``; the same names are accepted here, plus ``ed25519``.
A key file is created with mode 0600 before any byte is written (never chmod'ed afterwards), so a secret is
never readable by others even for an instant.
"""
from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass
from typing import Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki._files import MAX_INPUT_BYTES, SECRET_MODE, read_bounded, write_atomic
from pki.errors import CorruptInputError, InputTooLargeError, KeyFileError, PassphraseError

__all__ = [
    "check_private_file",
    "read_passphrase_file",
    "read_private_file",
    "KeySpec",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "describe_public_key",
    "generate_private_key",
    "load_private_key",
    "parse_key_spec",
    "private_key_to_pem",
    "read_private_key",
    "save_private_key",
]

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]


class KeyType(str, enum.Enum):
    RSA = "rsa"
    ECDSA = "ecdsa"
    ED25519 = "ed25519"


_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
_RSA_SIZES = (2048, 3072, 4096)
_DEFAULT_SIZE = {KeyType.RSA: 2048, KeyType.ECDSA: 256, KeyType.ED25519: 256}


@dataclass(frozen=True)
class KeySpec:
    """A key type and size that :func:`generate_private_key` can make."""

    type: KeyType
    size: int

    def __str__(self) -> str:
        return f"{self.type.value}-{self.size}"


def parse_key_spec(type: str | KeyType, size: int | None = None) -> KeySpec:
    """Validate a (type, size) pair as JUNOS spells it; ``size`` None picks the default for the type."""
    try:
        kt = KeyType(type.lower() if isinstance(type, str) else type)
    except ValueError:
        raise ValueError(f"unknown key type {type!r} (rsa, ecdsa or ed25519)") from None
    sz = _DEFAULT_SIZE[kt] if size is None else int(size)
    if kt is KeyType.RSA and sz not in _RSA_SIZES:
        raise ValueError(f"RSA key size {sz} not supported (2048, 3072 or 4096)")
    if kt is KeyType.ECDSA and sz not in _CURVES:
        raise ValueError(f"ECDSA key size {sz} not supported (256, 384 or 521)")
    if kt is KeyType.ED25519 and sz != 256:
        raise ValueError("Ed25519 keys have size 256")
    return KeySpec(kt, sz)


def generate_private_key(spec: KeySpec) -> PrivateKey:
    if spec.type is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    if spec.type is KeyType.ECDSA:
        return ec.generate_private_key(_CURVES[spec.size])
    return ed25519.Ed25519PrivateKey.generate()


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def load_private_key(data: bytes, passphrase: bytes | None = None, *, source: str = "key") -> PrivateKey:
    """Parse a PEM or DER private key (PKCS#8, or traditional RSA/EC), refusing unsupported types."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=passphrase)
        else:
            key = serialization.load_der_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography: "Password was not given but private key is encrypted" / "...given but not encrypted"
        if "not given" in str(exc) or passphrase is None:
            raise PassphraseError(f"{source}: encrypted, a passphrase is needed") from None
        raise PassphraseError(f"{source}: not encrypted, but a passphrase was given") from None
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"{source}: unsupported key algorithm ({exc})") from None
    except ValueError as exc:
        if passphrase is not None and _looks_encrypted(data):
            raise PassphraseError(f"{source}: wrong passphrase") from None
        raise CorruptInputError(f"{source}: not a valid private key ({_short(exc)})") from None
    except Exception as exc:  # anything else from parsing untrusted bytes
        raise CorruptInputError(f"{source}: not a valid private key ({_short(exc)})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def save_private_key(
    path: str | os.PathLike[str], key: PrivateKey, passphrase: bytes | None = None, *, overwrite: bool = False
) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600 from creation, atomically."""
    if not overwrite and os.path.exists(path):
        raise KeyFileError(f"{path}: exists already")
    write_atomic(path, private_key_to_pem(key, passphrase), SECRET_MODE)


def read_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    if not os.path.exists(path):
        raise KeyFileError(f"{path}: no such key file")
    return load_private_key(read_private_file(path), passphrase, source=str(path))


def check_private_file(path: str | os.PathLike[str], st: os.stat_result) -> None:
    """OpenSSH's rule for a file that holds a secret (a private key, a passphrase): refuse it when group or
    others have any permission on it, or when someone other than the running user owns it (they could read or
    swap it). A secret that others could read is already compromised; running on with it would hide that."""
    mode = st.st_mode & 0o7777
    if mode & 0o077:
        raise KeyFileError(f"{os.fspath(path)}: UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} are too open; "
                           f"it must not be accessible by group or others (chmod 600 it)")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise KeyFileError(f"{os.fspath(path)}: UNPROTECTED PRIVATE KEY FILE: owned by uid {st.st_uid}, not by the "
                           f"user running this (uid {euid}); chown it")


def read_private_file(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> bytes:
    """The one way a secret is read from disk: bounded, and checked (:func:`check_private_file`) on the very
    file that is read (fstat of the open descriptor, so a swap between the check and the read cannot slip by)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyFileError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:  # pragma: no cover - Linux opens directories read-only; caught below
        raise KeyFileError(f"{os.fspath(path)}: is a directory") from None
    except PermissionError:
        raise KeyFileError(f"{os.fspath(path)}: permission denied") from None
    except OSError as exc:
        raise KeyFileError(f"{os.fspath(path)}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{os.fspath(path)}: not a regular file")
        check_private_file(path, st)
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise KeyFileError(f"{os.fspath(path)}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputTooLargeError(f"{os.fspath(path)}: larger than {limit} bytes")
    return data


def describe_public_key(key: PublicKey | PrivateKey) -> tuple[str, int]:
    """(type name, size in bits) as ``show`` prints it: ("RSA", 2048), ("ECDSA", 384), ("Ed25519", 256)."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA", key.key_size
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ECDSA", key.curve.key_size
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "Ed25519", 256
    return type(key).__name__, 0


def _looks_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED" in data[:200] or not data.lstrip().startswith(b"-----BEGIN")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split(": ParseError", 1)[0].split(" {", 1)[0]  # drop the parser's debug dump
    text = re.sub(r"\s*See https?://\S+ for more details\.", "", text)  # cryptography's FAQ pointer
    if len(text) > 160:  # cut at a word boundary, never mid-word
        text = text[:160].rsplit(" ", 1)[0] + " ..."
    return text


def read_passphrase_file(path: str | os.PathLike[str], *, protected: bool = False) -> bytes:
    """The one rule for passphrase (and challenge) files: the first line minus its line ending (LF or CRLF) only.

    Blanks are kept, since a passphrase may end with a space; an empty first line is refused, because an empty
    passphrase would silently mean "write the key unencrypted". Every reader of such files (pki CLI, ike config)
    should use this function so one file gives one passphrase everywhere. ``protected`` applies the private key
    file rule (:func:`check_private_file`), as a daemon's configuration does.
    """
    data = read_private_file(path, 4096) if protected else read_bounded(path, 4096)
    line = data.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        raise PassphraseError(f"{os.fspath(path)}: empty first line: refusing an empty passphrase (it would leave "
                              "the key unencrypted); omit the passphrase file for no passphrase")
    return line
