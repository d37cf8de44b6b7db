"""Wireshark key log: IKE_SA keys as ``ikev2_decryption_table`` (ISAKMP SAs as ``ikev1_decryption_table``) and
CHILD_SA keys as ``esp_sa``.

Why: a network engineer debugging a tunnel opens the capture in Wireshark and wants the IKE_AUTH payloads and the
ESP traffic in clear. Wireshark reads two UAT files from its profile directory; this module writes both, in the
column order and with the algorithm names Wireshark 4.0 expects (checked against tshark in the tests). It is
off by default: the daemon creates a :class:`KeyLog` only when the configuration names a directory, the files
are created with mode 0600, and nothing here logs the keys anywhere else.

Formats (one line per SA, comma-separated):

- ``ikev2_decryption_table``: ``SPIi,SPIr,SK_ei,SK_er,"encryption",SK_ai,SK_ar,"integrity"``; SPIs as 16
  hex digits, keys in hex (AEAD keys include the salt), algorithm names quoted.
- ``esp_sa``: ``"IPv4","src","dst","0xSPI","encryption","0xKEY","authentication","0xKEY"``, all quoted, one line
  per direction.

Algorithms Wireshark cannot decrypt (ChaCha20-Poly1305, AES-CCM and AES-GMAC for ESP; ChaCha20 for IKE) get a
``#`` comment line instead of an entry, so a single unsupported SA never makes Wireshark reject the whole table.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TextIO

from .events import ChildSaEstablished, IkeKeysDerived
from .v1.daemon_events import V1KeysDerived

__all__ = ["ESP_TABLE", "IKEV1_TABLE", "ikev1_line", "IKEV2_TABLE", "KeyLog", "KeyLogError", "esp_lines", "ikev2_line", "key_log_problem"]

IKEV2_TABLE = "ikev2_decryption_table"
IKEV1_TABLE = "ikev1_decryption_table"
ESP_TABLE = "esp_sa"

# IKEv2 ENCR transform IDs (RFC 7296 3.3.2, IANA) -> Wireshark's name, by key size where it matters.
_IKE_ENCR: dict[int, str] = {
    3: "3DES [RFC2451]",
    11: "NULL [RFC2410]",
    12: "AES-CBC-{bits} [RFC3602]",
    13: "AES-CTR-{bits} [RFC5930]",
    14: "AES-CCM-{bits} with 8 octet ICV [RFC5282]",
    15: "AES-CCM-{bits} with 12 octet ICV [RFC5282]",
    16: "AES-CCM-{bits} with 16 octet ICV [RFC5282]",
    18: "AES-GCM-{bits} with 8 octet ICV [RFC5282]",
    19: "AES-GCM-{bits} with 12 octet ICV [RFC5282]",
    20: "AES-GCM-{bits} with 16 octet ICV [RFC5282]",
}
# IKEv2 INTEG transform IDs -> Wireshark's name; 0 (none, AEAD) -> NONE.
_IKE_INTEG: dict[int, str] = {
    0: "NONE [RFC4306]",
    1: "HMAC_MD5_96 [RFC2403]",
    2: "HMAC_SHA1_96 [RFC2404]",
    12: "HMAC_SHA2_256_128 [RFC4868]",
    13: "HMAC_SHA2_384_192 [RFC4868]",
    14: "HMAC_SHA2_512_256 [RFC4868]",
}
# ESP: strongSwan suite token parts -> Wireshark's esp_sa names.
_ESP_INTEG: dict[str, str] = {
    "": "NULL",
    "sha1": "HMAC-SHA-1-96 [RFC2404]",
    "sha256": "HMAC-SHA-256-128 [RFC4868]",
    "sha384": "HMAC-SHA-384-192 [RFC4868]",
    "sha512": "HMAC-SHA-512-256 [RFC4868]",
}
_SUITE = re.compile(
    r"^(?:(?P<gcm>aes(?:128|192|256)gcm(?P<icv>8|12|16))|(?P<cbc>aes(?:128|192|256))|(?P<ctr>aes(?:128|192|256)ctr)"
    r"|(?P<tdes>3des)|(?P<null>null))(?:-(?P<integ>sha1|sha256|sha384|sha512)(?:_\d+)?)?$")


class UnsupportedByWireshark(ValueError):
    """The SA uses an algorithm Wireshark cannot decrypt; the caller writes a comment instead."""


def _ike_encr_name(encr: int, bits: int) -> str:
    try:
        return _IKE_ENCR[encr].format(bits=bits)
    except KeyError:
        raise UnsupportedByWireshark(f"IKE encryption transform {encr}") from None


def ikev1_line(cookie_i: bytes, enc_key: bytes) -> str:
    """One ``ikev1_decryption_table`` row: the initiator's cookie and the phase-1 encryption key, in hex
    (Wireshark derives the IVs itself from the exchange it sees)."""
    return f"{cookie_i.hex()},{enc_key.hex()}"


def ikev2_line(ev: IkeKeysDerived) -> str:
    """One ``ikev2_decryption_table`` row for an IKE_SA (raises UnsupportedByWireshark)."""
    enc = _ike_encr_name(ev.encr, ev.encr_key_bits)
    try:
        integ = _IKE_INTEG[ev.integ]
    except KeyError:
        raise UnsupportedByWireshark(f"IKE integrity transform {ev.integ}") from None
    return (f"{ev.spi_i:016x},{ev.spi_r:016x},{ev.sk_ei.hex()},{ev.sk_er.hex()},\"{enc}\","
            f"{ev.sk_ai.hex()},{ev.sk_ar.hex()},\"{integ}\"")


def _esp_names(suite: str) -> tuple[str, str]:
    m = _SUITE.match(suite.lower())
    if not m:
        raise UnsupportedByWireshark(f"ESP suite {suite}")
    integ = m.group("integ") or ""
    if m.group("gcm"):
        if integ:
            raise UnsupportedByWireshark(f"ESP suite {suite}")
        return f"AES-GCM with {m.group('icv')} octet ICV [RFC4106]", "NULL"
    if not integ:
        raise UnsupportedByWireshark(f"ESP suite {suite} (no integrity)")
    if m.group("cbc"):
        return "AES-CBC [RFC3602]", _ESP_INTEG[integ]
    if m.group("ctr"):
        return "AES-CTR [RFC3686]", _ESP_INTEG[integ]
    if m.group("tdes"):  # an IKEv1 SA whose configuration names 3DES (RFC 2451)
        return "TripleDES-CBC [RFC2451]", _ESP_INTEG[integ]
    return "NULL", _ESP_INTEG[integ]


def esp_lines(ev: ChildSaEstablished) -> list[str]:
    """Two ``esp_sa`` rows (outbound, inbound) for a CHILD_SA (raises UnsupportedByWireshark)."""
    enc, auth = _esp_names(ev.suite)
    local, remote = ev.local_addr[0], ev.remote_addr[0]
    family = "IPv4" if ipaddress.ip_address(local).version == 4 else "IPv6"

    def row(src: str, dst: str, spi: int, ekey: bytes, akey: bytes) -> str:
        return (f"\"{family}\",\"{src}\",\"{dst}\",\"0x{spi:08x}\",\"{enc}\",\"0x{ekey.hex()}\","
                f"\"{auth}\",\"0x{akey.hex()}\"")

    return [row(local, remote, ev.spi_out, ev.enc_key_out, ev.integ_key_out),
            row(remote, local, ev.spi_in, ev.enc_key_in, ev.integ_key_in)]


class KeyLogError(OSError):
    """The key-log directory cannot be used (the message names the path and why, on one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key log unusable"


def key_log_problem(directory: str | os.PathLike[str]) -> str | None:
    """Why ``directory`` cannot hold the key log, or None: checked by the configuration loader so that
    ``check-config`` and the daemon refuse a bad path before anything starts."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        return f"{d} exists and is not a directory (the key log is a directory for Wireshark's tables)"
    probe = d
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory, cannot create {d}"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" + ("" if probe == d else f", cannot create {d}")
    for table in (IKEV2_TABLE, IKEV1_TABLE, ESP_TABLE):
        f = d / table
        if f.exists() and (f.is_dir() or not os.access(f, os.W_OK)):
            return f"{f} is not a writable file"
    return None


def _open_private(path: Path) -> TextIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps no wider mode
    return os.fdopen(fd, "a", encoding="ascii", buffering=1)


class KeyLog:
    """Appends keys to the two Wireshark tables in ``directory`` (a Wireshark profile directory works).

    Feed it the core's :class:`IkeKeysDerived` and :class:`ChildSaEstablished` events; anything else is ignored.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        problem = key_log_problem(self.directory)
        if problem is not None:
            raise KeyLogError(f"key log: {problem}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._ike = _open_private(self.directory / IKEV2_TABLE)
            self._esp = _open_private(self.directory / ESP_TABLE)
            self._ikev1: TextIO | None = None  # created with the first ISAKMP SA
        except OSError as exc:
            raise KeyLogError(f"key log: {exc.filename or self.directory}: {exc.strerror or exc}") from None

    def __enter__(self) -> KeyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyLog({str(self.directory)!r})"

    def record(self, event: object) -> None:
        if isinstance(event, IkeKeysDerived):
            self.ike_keys(event)
        elif isinstance(event, ChildSaEstablished):
            self.child_keys(event)
        elif isinstance(event, V1KeysDerived):
            self.ikev1_keys(event)

    def ikev1_keys(self, ev: V1KeysDerived) -> None:
        if self._ikev1 is None:
            self._ikev1 = _open_private(self.directory / IKEV1_TABLE)
        self._ikev1.write(ikev1_line(ev.cookie_i, ev.enc_key) + "\n")

    def ike_keys(self, ev: IkeKeysDerived) -> None:
        try:
            self._ike.write(ikev2_line(ev) + "\n")
        except UnsupportedByWireshark as exc:
            self._ike.write(f"# IKE_SA {ev.spi_i:016x}_i {ev.spi_r:016x}_r: {exc} is not supported by Wireshark\n")

    def child_keys(self, ev: ChildSaEstablished) -> None:
        try:
            self._esp.write("".join(line + "\n" for line in esp_lines(ev)))
        except UnsupportedByWireshark as exc:
            self._esp.write(f"# CHILD_SA {ev.spi_in:08x}_i {ev.spi_out:08x}_o: {exc} is not supported by Wireshark\n")

    def close(self) -> None:
        self._ike.close()
        self._esp.close()
        if self._ikev1 is not None:
            self._ikev1.close()
