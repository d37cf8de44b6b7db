"""Typed values of the TOML file (durations, sizes, ports, identities, selectors) and the keyed section reader
that puts the key path into every error."""
from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core_config import (
    Identity,
    TrafficSelector,
)
from ..errors import ConfigError
from ..proposal import parse_proposal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: object) -> float:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"4h"``, ``"1d"`` (strongSwan's suffixes)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 3600, \"90s\", \"30m\", \"4h\" or \"1d\", got {value!r}")


def parse_size(value: object) -> int:
    """Bytes or packets from ``1000``, ``"500k"``, ``"4G"`` (binary multiples, as strongSwan)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count cannot be negative: {value!r}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZES[m.group(2).lower()]
    raise ValueError(f"expected a count such as 1000, \"500k\" or \"4G\", got {value!r}")


# --------------------------------------------------------------------------------------------------------
# A section reader that knows its key path and refuses unknown keys


class _Section:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'configuration'}: expected a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {reason}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def get(self, name: str, conv: Callable[[Any], Any], default: Any = None, *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self._missing(name)
            return default
        try:
            return conv(self.data[name])
        except ConfigError as exc:
            raise self.error(name, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc)) from None

    def strings(self, name: str, default: Sequence[str] = (), *, required: bool = False) -> tuple[str, ...]:
        """A list of strings; a single string may hold comma-separated items (as swanctl allows)."""
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self._missing(name)
            return tuple(default)
        v = self.data[name]
        if isinstance(v, str):
            items = [s.strip() for s in v.split(",") if s.strip()]
        elif isinstance(v, list) and all(isinstance(s, str) for s in v):
            items = [s.strip() for s in v]
        else:
            raise self.error(name, f"expected a string or a list of strings, got {v!r}")
        if not items and required:
            raise self.error(name, "must not be empty")
        return tuple(items)

    def sub(self, name: str) -> dict[str, _Section]:
        """Named sub-tables ``name.X`` as sections (empty if absent)."""
        self.used.add(name)
        tables = self.data.get(name, {})
        if not isinstance(tables, Mapping):
            raise self.error(name, "expected a table of named tables")
        out: dict[str, _Section] = {}
        for k, v in tables.items():
            if not isinstance(v, Mapping):
                raise ConfigError(f"{self.key(name)}.{k}: expected a table")
            out[k] = _Section(v, f"{self.key(name)}.{k}")
        return out

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._unknown(unknown)

    def _missing(self, name: str) -> ConfigError:
        # a typo of this very key ("local_tss") is the likelier story than a missing key: say that
        typo = difflib.get_close_matches(name, [k for k in self.data if k not in self.used], 1, 0.75)
        return self._unknown(typo) if typo else self.error(name, "is required")

    def _unknown(self, keys: Sequence[str]) -> ConfigError:
        """``peers.b.children.net: unknown key 'local_tss' (did you mean 'local_ts'?)``"""
        first = keys[0]
        hint = difflib.get_close_matches(first, sorted(self.used), 1, 0.75)
        also = f" (also: {', '.join(repr(k) for k in keys[1:])})" if keys[1:] else ""
        return ConfigError(f"{self.path or 'top level'}: unknown key {first!r}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else "") + also)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"expected a UDP port 1-65535, got {v!r}")
    return v


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected an integer {lo}-{hi}, got {v!r}")
        return v
    return conv


def _address(v: Any) -> str:
    return str(ipaddress.ip_address(_str(v).strip()))


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
        return str(v)
    return conv


# --------------------------------------------------------------------------------------------------------
# Identities, selectors, proposals


def _identity(text: Any) -> Identity:
    ident = Identity.parse(_str(text))
    if not ident.value:
        raise ValueError("empty identity")
    if ident.kind in ("ipv4", "ipv6"):
        addr = ipaddress.ip_address(ident.value)
        if (addr.version == 4) != (ident.kind == "ipv4"):
            raise ValueError(f"{ident.value!r} is not an {ident.kind} address")
    elif ident.kind == "dn":
        from pki.certs import parse_subject
        parse_subject(ident.value)
    elif ident.kind == "email":
        if ident.value.count("@") != 1:
            raise ValueError(f"{ident.value!r} is not an e-mail address")
    elif ident.kind == "keyid":
        bytes.fromhex(ident.value)
    elif ident.kind == "fqdn":
        if any(c.isspace() for c in ident.value) or len(ident.value) > 253:
            raise ValueError(f"{ident.value!r} is not a DNS name")
    return ident


def _selector(text: str) -> TrafficSelector:
    """``10.1.0.0/16``, ``10.1.0.1``, ``10.1.0.0/16[udp/53]``, ``fd00::/64[6/443]`` (swanctl syntax)."""
    m = re.match(r"^([^\[\]]+?)(?:\[(\w*)(?:/(\d+(?:-\d+)?))?\])?$", text.strip())
    if not m:
        raise ValueError(f"bad traffic selector {text!r}")
    addr, proto_s, port_s = m.group(1).strip(), m.group(2) or "", m.group(3)
    protos = {"": 0, "any": 0, "icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}
    if proto_s.isdigit():
        proto = int(proto_s)
    elif proto_s.lower() in protos:
        proto = protos[proto_s.lower()]
    else:
        raise ValueError(f"unknown protocol {proto_s!r} in traffic selector {text!r}")
    start_port, end_port = 0, 65535
    if port_s:
        a, _, b = port_s.partition("-")
        start_port, end_port = int(a), int(b or a)
    if ".." in addr:
        lo, _, hi = addr.partition("..")
        return TrafficSelector(str(ipaddress.ip_address(lo.strip())), str(ipaddress.ip_address(hi.strip())),
                               proto, start_port, end_port)
    try:
        net = ipaddress.ip_network(addr, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad traffic selector {text!r}: {exc}") from None
    return TrafficSelector(str(net.network_address), str(net.broadcast_address), proto, start_port, end_port)


def _selectors(sec: _Section, name: str) -> tuple[TrafficSelector, ...]:
    texts = sec.strings(name, required=True)
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(_selector(t))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{sec.key(name)}[{i}]: {exc}") from None
    return tuple(out)


def _proposals(sec: _Section, name: str, protocol: int, default: Sequence[str],
               version: int = 2) -> tuple[str, ...]:
    """Proposal strings checked by the parser of the peer's IKE version: IKEv1's (ike.v1.profile) accepts what
    a legacy peer needs and IKEv2's refuses, 3DES where named (unset, an IKEv1 peer gets the profile's own
    defaults, so the IKEv2 ones are not checked against it)."""
    texts = sec.strings(name, default, required=False)
    if not texts:
        raise sec.error(name, "must not be empty")
    if version == 1 and not sec.has(name):
        return texts
    for i, t in enumerate(texts):
        try:
            if version == 1:
                from ..v1.profile import parse_v1_proposal  # local: ike.v1 imports this package's users

                parse_v1_proposal(t, esp=protocol == 3)
            else:
                parse_proposal(t, protocol)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{sec.key(name)}[{i}]: {exc}") from None
    return texts


# --------------------------------------------------------------------------------------------------------
# PKI


def _path(base: Path, name: str, key: str) -> Path:
    """A file the configuration names, relative to the configuration's directory, ``~`` and ``~user`` expanded."""
    try:
        return (base / name).expanduser()
    except RuntimeError as exc:  # ~user of a user this host does not know
        raise ConfigError(f"{key}: {name!r}: {exc}") from None


def _exists(path: Path, what: str, key: str, *, directory: bool = False) -> None:
    """ConfigError unless ``path`` is a file (a directory): also for names the OS refuses (too long, a loop)."""
    try:
        ok = path.is_dir() if directory else path.is_file()
    except OSError as exc:
        raise ConfigError(f"{key}: {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not ok:
        raise ConfigError(f"{key}: {what} {str(path)!r} " + ("is not a directory" if directory else "does not exist"))


def _read(path: Path, what: str, key: str) -> bytes:
    from pki._files import read_bounded
    _exists(path, f"{what} file", key)
    try:
        return read_bounded(path)
    except Exception as exc:  # PkiError (too large) or OSError
        raise ConfigError(f"{key}: cannot read {what} file {str(path)!r}: {exc}") from None


