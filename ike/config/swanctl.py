"""strongSwan's swanctl.conf, read directly: what an administrator moving from charon already has.

Why here: the daemon's own format is TOML (:mod:`ike.config.load`); an operator with a working swanctl.conf should
not translate it by hand. :func:`parse_settings` reads strongSwan's settings syntax (``name { ... }`` sections,
``key = value`` lines, quoted values, ``#`` comments, ``include`` globs relative to the including file), and
:func:`import_swanctl` maps ``connections``, their ``children``, ``secrets`` and ``authorities`` to the espresso
TOML tree that :func:`ike.config.parse_config` takes. Files are found where swanctl finds them: certificates in
``x509/``, CA certificates in ``x509ca/``, CRLs in ``x509crl/``, private keys in ``private/`` (and ``rsa/``,
``ecdsa/``, ``pkcs8/``), relative to the directory of swanctl.conf. Every key espresso cannot express is refused
with its path (``connections.home.children.net.updown: not supported``) instead of being dropped silently; what
is imported then still goes through the daemon's own validation.

``x509ca/`` as charon means it: every CA certificate there is trusted, but charon accepts only a *self-signed*
one as the end of a trust chain (credential_manager.c, verify_trust_chain: "accept only self-signed CAs as trust
anchor"); an intermediate found there is a "trusted intermediate ca certificate" the chain goes on through, up
to a self-signed root, whose CRL then covers the intermediate. So self-signed ``x509ca/`` certificates become
the trust anchors of the ``x509ca`` ca-profile, and the others ``[pki] intermediates`` (held to build paths,
never anchors), which is the same behaviour. ``x509crl/`` files become ``[pki] crls``; ``local.auth`` and
``remote.auth`` keep swanctl's constraint syntax (``pubkey-sha384``, ``rsa/pss-sha384``, ``ike:ecdsa-384``), and
``remote.revocation`` (strict, ifuri, relaxed) becomes the peer's ``revocation``.
"""
from __future__ import annotations

import base64
import binascii
import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["SwanctlImport", "dump_toml", "import_swanctl", "parse_settings"]

#: bounds on what a settings file can make us read (includes are globs)
MAX_FILE_SIZE = 1 << 20
MAX_FILES = 64
MAX_INCLUDE_DEPTH = 8
MAX_SECTION_DEPTH = 16

Settings = dict[str, Any]  # key -> str, section name -> Settings


# --------------------------------------------------------------------------------------------------------
# strongSwan's settings syntax


class _Parser:
    def __init__(self) -> None:
        self.files = 0

    def parse_file(self, path: Path, into: Settings, depth: int = 0) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise ConfigError(f"{path}: more than {MAX_FILES} files included")
        try:
            if not path.is_file():  # a device or a FIFO could be read forever
                raise ConfigError(f"{path}: not a regular file")
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_SIZE + 1)
            if len(raw) > MAX_FILE_SIZE:
                raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE} bytes")
            text = raw.decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        self._parse(text, path, into, depth)

    def _parse(self, text: str, path: Path, root: Settings, depth: int) -> None:
        stack: list[Settings] = [root]
        i, n, line = 0, len(text), 1

        def err(msg: str) -> ConfigError:
            return ConfigError(f"{path}:{line}: {msg}")

        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
                i += 1
            elif c.isspace():
                i += 1
            elif c == "#":
                while i < n and text[i] != "\n":
                    i += 1
            elif c == "}":
                if len(stack) == 1:
                    raise err("'}' without a section to close")
                stack.pop()
                i += 1
            elif c in "{=":
                raise err(f"{c!r} without a name before it")
            else:
                m = re.compile(r"[^\s{}=#:\"]+").match(text, i)
                if m is None:
                    raise err(f"unexpected {c!r}")
                word, i = m.group(), m.end()
                j = i
                while j < n and text[j] in " \t":
                    j += 1
                if j < n and text[j] == "=":
                    value, i, line = self._value(text, j + 1, line, err)
                    stack[-1][word] = value  # a later value replaces an earlier one, as in strongSwan
                    continue
                if word == "include" and j < n and text[j] not in "{\n#:":
                    end = text.find("\n", j)
                    end = n if end < 0 else end
                    pattern = text[j:end].split("#", 1)[0].strip().strip('"')
                    i = end
                    self._include(pattern, path, stack[-1], depth, err)
                    continue
                while j < n and text[j].isspace():  # the "{" may follow on the next line
                    if text[j] == "\n":
                        line += 1
                    j += 1
                if j < n and text[j] == ":":
                    raise err(f"section {word!r}: references to other sections (name : template) are not supported")
                if j >= n or text[j] != "{":
                    raise err(f"expected '=' or '{{' after {word!r}")
                if len(stack) > MAX_SECTION_DEPTH:
                    raise err(f"sections nested deeper than {MAX_SECTION_DEPTH}")
                sub = stack[-1].get(word)
                if not isinstance(sub, dict):  # sections of one name merge, as in strongSwan
                    sub = stack[-1][word] = {}
                stack.append(sub)
                i = j + 1
        if len(stack) != 1:
            raise ConfigError(f"{path}: section not closed at the end of the file")

    @staticmethod
    def _value(text: str, i: int, line: int, err: Any) -> tuple[str, int, int]:
        n = len(text)
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            out, i = [], i + 1
            while True:
                if i >= n:
                    raise err("quoted value not closed")
                c = text[i]
                if c == '"':
                    return "".join(out), i + 1, line
                if c == "\\" and i + 1 < n:
                    out.append({"n": "\n", "t": "\t", "r": "\r"}.get(text[i + 1], text[i + 1]))
                    i += 2
                    continue
                if c == "\n":
                    line += 1
                out.append(c)
                i += 1
        end = i
        while end < n and text[end] not in "\n#}":  # a "}" closes the section, as in "local { auth = psk }"
            end += 1
        return text[i:end].strip(), end, line

    def _include(self, pattern: str, path: Path, into: Settings, depth: int, err: Any) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise err(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        full = pattern if os.path.isabs(pattern) else str(path.parent / pattern)
        for name in sorted(glob.glob(full)):  # no match is no error, as in strongSwan
            self.parse_file(Path(name), into, depth + 1)


def parse_settings(path: str | os.PathLike[str]) -> Settings:
    """The settings tree of a strongSwan settings file (includes resolved). ConfigError with file:line."""
    root: Settings = {}
    _Parser().parse_file(Path(path), root)
    return root


# --------------------------------------------------------------------------------------------------------
# The mapping to espresso's TOML


@dataclass
class SwanctlImport:
    """The espresso configuration tree and every swanctl key it could not express (``path: reason``)."""

    config: dict[str, Any]
    refused: list[str] = field(default_factory=list)
    source: Path | None = None


#: connection keys that carry over unchanged in meaning (swanctl name -> espresso name, converter)
_CONN_KEYS = {
    "local_port": ("local_port", int), "remote_port": ("remote_port", int),
    "rekey_time": ("rekey_time", str), "dpd_delay": ("dpd_delay", str),
    "fragmentation": ("fragmentation", str), "send_certreq": ("send_certreq", "bool"),
    "send_cert": ("send_cert", str), "encap": ("encap", "bool"), "keep_alive": ("keepalive", str),
}
_CHILD_KEYS = {
    "rekey_time": str, "life_time": str, "rekey_bytes": str, "life_bytes": str, "rekey_packets": str,
    "life_packets": str, "mode": str,
}
#: keys whose swanctl default is what espresso does: accepted when set to that value, refused otherwise
_NEUTRAL = {
    "version": {"0", "2"}, "mobike": {"no"}, "reauth_time": {"0"}, "unique": {"no", "never"},
    "keyingtries": {"1"}, "aggressive": {"no"}, "pull": {"yes"}, "childless": {"allow", "never"},
    "hostaccess": {"no"}, "dpd_action": {"clear", "none"}, "close_action": {"none"}, "ipcomp": {"no"},
    "policies": {"yes"}, "install_policy": {"yes"}, "start_action": set(),
}
_KEY_DIRS = ("private", "rsa", "ecdsa", "pkcs8")
_BOOL = {"yes": True, "true": True, "no": False, "false": False}


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class _Mapper:
    def __init__(self, tree: Settings, swanctl_dir: Path, out_dir: Path) -> None:
        self.tree = tree
        self.dir = swanctl_dir
        self.out_dir = out_dir
        self.refused: list[str] = []
        self.config: dict[str, Any] = {}
        self.certs: dict[str, dict[str, str]] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.addresses: list[str] = []
        self.pki: dict[str, Any] = {}
        self._ca_kinds: dict[Path, str | None] = {}

    def refuse(self, path: str, why: str = "not supported") -> None:
        self.refused.append(f"{path}: {why}")

    def rel(self, p: Path) -> str:
        try:
            return os.path.relpath(p, self.out_dir)
        except ValueError:
            return str(p)

    # -- files
    def file(self, sub: str, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.dir / sub / p

    def certificate(self, path: str, name: str) -> str | None:
        """[certificates.X] for a local certificate of x509/, with the private key that matches it."""
        cert_path = self.file("x509", name)
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(name).stem) or "cert"
        if stem in self.certs:
            return stem
        try:
            from cryptography import x509 as cx509
            data = cert_path.read_bytes()
            cert = cx509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else cx509.load_der_x509_certificate(data)
        except (OSError, ValueError) as exc:
            self.refuse(path, f"cannot read certificate {cert_path}: {getattr(exc, 'strerror', None) or exc}")
            return None
        key = self._matching_key(cert.public_key())
        if key is None:
            self.refuse(path, f"no unencrypted private key for {cert_path.name} in "
                              f"{', '.join(d + '/' for d in _KEY_DIRS)}")
            return None
        self.certs[stem] = {"cert": self.rel(cert_path), "key": self.rel(key)}
        return stem

    def _matching_key(self, public: Any) -> Path | None:
        from cryptography.hazmat.primitives import serialization

        want = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for sub in _KEY_DIRS:
            d = self.dir / sub
            for p in sorted(d.iterdir()) if d.is_dir() else ():
                try:
                    data = p.read_bytes()
                    key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
                           else serialization.load_der_private_key(data, None))
                except (OSError, ValueError, TypeError):
                    continue  # encrypted, not a key, unreadable: not this one
                got = key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
                if got == want:
                    return p
        return None

    def _dir_files(self, sub: str) -> list[Path]:
        d = self.dir / sub
        return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def ca_kind(self, path: Path, where: str) -> str | None:
        """``anchor`` (a self-signed CA certificate), ``intermediate`` (a CA certificate another CA issued) or
        None, refused at ``where`` (unreadable, or not a CA certificate)."""
        path = path.resolve()
        if path in self._ca_kinds:
            return self._ca_kinds[path]
        from cryptography import x509 as cx509

        kind: str | None = None
        try:
            data = path.read_bytes()[:MAX_FILE_SIZE]
            cert = cx509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else cx509.load_der_x509_certificate(data)
        except (OSError, ValueError) as exc:
            self.refuse(where, f"cannot read certificate {path}: {getattr(exc, 'strerror', None) or exc}")
            cert = None
        if cert is not None:
            try:
                ca = cert.extensions.get_extension_for_class(cx509.BasicConstraints).value.ca
            except cx509.ExtensionNotFound:
                ca = cert.issuer == cert.subject  # a v1 root
            if not ca:
                self.refuse(where, f"{cert.subject.rfc4514_string()} is not a CA certificate")
            else:
                kind = "anchor" if _self_signed(cert) else "intermediate"
        self._ca_kinds[path] = kind
        return kind

    def crl(self, path: Path, where: str) -> bool:
        """Whether ``path`` is a CRL espresso can load (refused at ``where`` if not)."""
        from cryptography import x509 as cx509

        try:
            data = path.read_bytes()[:MAX_FILE_SIZE]
            if b"-----BEGIN" in data:
                cx509.load_pem_x509_crl(data)
            else:
                cx509.load_der_x509_crl(data)
        except (OSError, ValueError) as exc:
            self.refuse(where, f"cannot read CRL {path}: {getattr(exc, 'strerror', None) or exc}")
            return False
        return True

    def profile(self, name: str, files: Iterable[Path], **extra: Any) -> str:
        self.profiles[name] = {"ca_certs": [self.rel(f) for f in files], "revocation": "crl",
                               # strongSwan's default revocation policy is "relaxed": a CRL that cannot be
                               # fetched does not refuse the peer
                               "fail_open": True, **extra}
        return name

    # -- sections
    def run(self) -> dict[str, Any]:
        for key, value in self.tree.items():
            if key not in ("connections", "secrets", "authorities"):
                self.refuse(key)
        anchors, intermediates = [], []
        for p in self._dir_files("x509ca"):
            kind = self.ca_kind(p, f"x509ca/{p.name}")
            if kind == "anchor":
                anchors.append(p)
            elif kind == "intermediate":
                intermediates.append(self.rel(p))
        if anchors:
            self.profile("x509ca", anchors)
        if intermediates:
            self.pki["intermediates"] = intermediates
        for name, sec in self._sections("authorities"):
            self.authority(name, sec)
        crls = [self.rel(p) for p in self._dir_files("x509crl") if self.crl(p, f"x509crl/{p.name}")]
        if crls:
            self.pki["crls"] = crls
        psks = self.secrets()
        peers: dict[str, Any] = {}
        for name, sec in self._sections("connections"):
            peer = self.connection(name, sec, psks)
            if peer is not None:
                peers[name] = peer
        if self.addresses:
            self.config["daemon"] = {"addresses": list(dict.fromkeys(self.addresses))}
        if self.pki:
            self.config["pki"] = self.pki
        if self.profiles:
            self.config["ca-profiles"] = self.profiles
        if self.certs:
            self.config["certificates"] = self.certs
        if peers:
            self.config["peers"] = peers
        return self.config

    def _sections(self, top: str) -> list[tuple[str, Settings]]:
        sec = self.tree.get(top, {})
        if not isinstance(sec, dict):
            self.refuse(top, "expected a section")
            return []
        out = []
        for name, value in sec.items():
            if isinstance(value, dict):
                out.append((name, value))
            else:
                self.refuse(f"{top}.{name}", "expected a section")
        return out

    def authority(self, name: str, sec: Settings) -> None:
        path = f"authorities.{name}"
        extra: dict[str, Any] = {}
        files = []
        for key, value in sec.items():
            if key == "cacert" and isinstance(value, str):
                f = self.file("x509ca", value)
                kind = self.ca_kind(f, f"{path}.cacert")
                if kind == "intermediate":
                    self.refuse(f"{path}.cacert", _INTERMEDIATE_AUTHORITY)
                elif kind == "anchor":
                    files.append(f)
            elif key == "crl_uris" and isinstance(value, str) and _list(value):
                extra["crl_url"] = _list(value)[0]
                if len(_list(value)) > 1:
                    self.refuse(f"{path}.crl_uris", "only the first URI is supported")
            elif key == "ocsp_uris" and isinstance(value, str) and _list(value):
                extra.update(revocation="ocsp", ocsp_url=_list(value)[0], ocsp_fallback_crl=True)
            else:
                self.refuse(f"{path}.{key}")
        if not files:
            if "cacert" not in sec:
                self.refuse(path, "needs cacert (a file in x509ca/)")
            return
        self.profile(name, files, **extra)

    def secrets(self) -> list[tuple[list[str], str]]:
        out = []
        for name, sec in self._sections("secrets"):
            path = f"secrets.{name}"
            if not name.startswith("ike"):
                self.refuse(path, "not supported (only ike secrets, the pre-shared keys)")
                continue
            ids = [v for k, v in sec.items() if k.startswith("id") and isinstance(v, str)]
            secret = sec.get("secret")
            for k in sec:
                if not (k.startswith("id") or k == "secret"):
                    self.refuse(f"{path}.{k}")
            if not isinstance(secret, str) or not secret:
                self.refuse(f"{path}.secret", "missing")
                continue
            out.append((ids, _psk_text(secret)))
        return out

    def connection(self, name: str, sec: Settings, psks: list[tuple[list[str], str]]) -> dict[str, Any] | None:
        path = f"connections.{name}"
        peer: dict[str, Any] = {}
        local = remote = None
        for key, value in sec.items():
            kp = f"{path}.{key}"
            if key in ("local", "remote") or (isinstance(value, dict) and re.fullmatch(r"(local|remote)-.+", key)):
                side = key.split("-", 1)[0]
                if (local if side == "local" else remote) is not None:
                    self.refuse(kp, "not supported (more than one authentication round)")
                elif side == "local":
                    local = (key, value)
                else:
                    remote = (key, value)
            elif key == "children" and isinstance(value, dict):
                continue
            elif isinstance(value, dict):
                self.refuse(kp)
            elif key == "local_addrs":
                addrs = _list(value)
                if len(addrs) == 1 and _is_ip(addrs[0]):
                    peer["local_addr"] = addrs[0]
                    self.addresses.append(addrs[0])
                elif addrs and addrs != ["%any"]:
                    self.refuse(kp, "only one IP address is supported")
            elif key == "remote_addrs":
                addrs = _list(value)
                if len(addrs) == 1 and (_is_ip(addrs[0]) or addrs[0] in ("%any", "%any4", "%any6")):
                    peer["remote_addr"] = addrs[0]
                else:
                    self.refuse(kp, "only one IP address or %any is supported")
            elif key == "proposals":
                props = [p for p in _list(value) if p != "default"]
                if props:
                    peer["ike_proposals"] = props
            elif key in _CONN_KEYS:
                target, conv = _CONN_KEYS[key]
                if conv == "bool":
                    if value.lower() not in _BOOL:
                        self.refuse(kp, f"expected yes or no, got {value!r}")
                        continue
                    peer[target] = _BOOL[value.lower()]
                else:
                    peer[target] = int(value) if conv is int and value.isdigit() else value
            elif key == "version" and value == "1":
                peer["version"] = 1  # IKEv1 (ike.v1); the loader refuses what it cannot run with its path
            elif key in _NEUTRAL and value in _NEUTRAL[key]:
                continue
            else:
                self.refuse(kp)
        if local is None:
            self.refuse(f"{path}.local", "missing (how we authenticate)")
            return None
        if not self.local(f"{path}.{local[0]}", local[1], peer):
            return None
        if remote is not None:
            self.remote(f"{path}.{remote[0]}", remote[1], peer)
        if "psk" in (peer.get("auth"), peer.get("remote_auth")):
            psk = _find_psk(psks, peer.get("local_id"), peer.get("remote_id"))
            if psk is None:
                self.refuse(f"{path}.local.auth", "psk without a matching secrets.ike* section")
                return None
            peer["psk"] = psk
        children: dict[str, Any] = {}
        for cname, csec in (sec.get("children") or {}).items():
            if not isinstance(csec, dict):
                self.refuse(f"{path}.children.{cname}", "expected a section")
                continue
            child = self.child(f"{path}.children.{cname}", csec, peer)
            if child is not None:
                children[cname] = child
        if not children:
            self.refuse(f"{path}.children", "no CHILD_SA espresso can express")
            return None
        if any(c.pop("_start", False) for c in children.values()):
            peer["start_action"] = "start"
        peer["children"] = children
        return peer

    def local(self, path: str, sec: Settings, peer: dict[str, Any]) -> bool:
        auth = _auth(sec.get("auth", "pubkey"))
        if auth.startswith("!"):
            self.refuse(f"{path}.auth", auth[1:])
            return False
        peer["auth"] = auth
        for key, value in sec.items():
            if key == "auth":
                continue
            if key == "id" and isinstance(value, str):
                if value != "%any":
                    peer["local_id"] = value
            elif key == "certs" and isinstance(value, str) and peer["auth"] != "psk":
                names = [n for n in (self.certificate(f"{path}.certs", c) for c in _list(value)) if n]
                if not names:
                    return False
                peer["certificates" if len(names) > 1 else "certificate"] = names if len(names) > 1 else names[0]
            else:
                self.refuse(f"{path}.{key}")
        if peer["auth"] != "psk" and "certificate" not in peer and "certificates" not in peer:
            self.refuse(f"{path}.certs", "missing (pubkey authentication needs our certificate)")
            return False
        return True

    def remote(self, path: str, sec: Settings, peer: dict[str, Any]) -> None:
        auth = _auth(sec.get("auth", "pubkey"))
        if auth.startswith("!"):
            self.refuse(f"{path}.auth", auth[1:])
        else:
            peer["remote_auth"] = auth
        for key, value in sec.items():
            if key == "auth":
                continue
            if key == "id" and isinstance(value, str):
                if value != "%any":
                    peer["remote_id"] = value
            elif key == "cacerts" and isinstance(value, str):
                files = [self.file("x509ca", c) for c in _list(value)]
                kinds = [self.ca_kind(f, f"{path}.cacerts") for f in files]
                if "intermediate" in kinds:
                    self.refuse(f"{path}.cacerts", "an intermediate CA certificate: espresso constrains a peer "
                                                   "by the trust anchors its chain ends at, not by intermediates")
                elif all(kinds):
                    name = "cacerts-" + re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(Path(f).stem for f in files))
                    peer["ca_profiles"] = [self.profile(name, files)]
            elif key == "revocation" and isinstance(value, str):
                if value not in ("strict", "ifuri", "relaxed"):
                    self.refuse(f"{path}.revocation", f"{value!r} not supported (strict, ifuri or relaxed)")
                elif peer.get("remote_auth", "psk") == "psk":
                    self.refuse(f"{path}.revocation", "applies to certificates (remote auth is not pubkey)")
                else:
                    peer["revocation"] = value
            else:
                self.refuse(f"{path}.{key}")

    def child(self, path: str, sec: Settings, peer: dict[str, Any]) -> dict[str, Any] | None:
        child: dict[str, Any] = {}
        for key, value in sec.items():
            kp = f"{path}.{key}"
            if isinstance(value, dict):
                self.refuse(kp)
            elif key in ("local_ts", "remote_ts"):
                ts = []
                for t in _list(value):
                    if t == "dynamic":
                        addr = peer.get("local_addr" if key == "local_ts" else "remote_addr")
                        if addr is None or not _is_ip(addr):
                            self.refuse(kp, "dynamic needs a fixed address on that side")
                            return None
                        t = addr
                    ts.append(t)
                child[key] = ts
            elif key == "esp_proposals":
                props = [p for p in _list(value) if p != "default"]
                if props:
                    child["esp_proposals"] = props
            elif key in _CHILD_KEYS:
                child[key] = value
            elif key == "start_action":
                if value == "start" and not _is_ip(str(peer.get("remote_addr"))):
                    self.refuse(kp, "start needs a fixed remote_addrs to initiate to")
                elif value == "start":
                    child["_start"] = True
                elif value != "none":
                    self.refuse(kp, f"{value!r} not supported (none or start)")
            elif key in _NEUTRAL and value in _NEUTRAL[key]:
                continue
            else:
                self.refuse(kp)
        for key in ("local_ts", "remote_ts"):  # swanctl's default: the IKE address of that side
            if key not in child:
                addr = peer.get("local_addr" if key == "local_ts" else "remote_addr")
                if addr is None or not _is_ip(addr):
                    self.refuse(f"{path}.{key}", "missing, and no fixed address to default to")
                    return None
                child[key] = [addr]
        return child


_INTERMEDIATE_AUTHORITY = ("an intermediate CA certificate (not self-signed): espresso's authorities are trust "
                           "anchors, as charon's are only self-signed ones; keep it in x509ca/ (held as an "
                           "intermediate) and name the root")


def _self_signed(cert: Any) -> bool:
    """Whether the certificate names itself as issuer and its own key verifies its signature."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _auth(value: str) -> str:
    """swanctl ``auth`` as espresso's value (the same syntax), or ``!reason`` when espresso cannot express it."""
    from ..auth_constraints import parse_auth

    if value in ("pubkey", "psk"):
        return value
    try:
        c = parse_auth(value)
    except (TypeError, ValueError) as exc:
        return f"!{value!r} not supported ({exc})"
    return c.text or value


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _psk_text(secret: str) -> str:
    """swanctl's secret encodings (``0x`` hex, ``0s`` base64, else the text) as espresso's psk value."""
    if secret.startswith("0s"):
        try:
            return "0x" + base64.b64decode(secret[2:], validate=True).hex()
        except (binascii.Error, ValueError):
            return secret
    return secret


def _find_psk(psks: list[tuple[list[str], str]], local_id: str | None, remote_id: str | None) -> str | None:
    """strongSwan's choice: the secret whose ids match both identities best; one without ids matches all."""
    best, score = None, -1
    for ids, secret in psks:
        s = (2 if local_id in ids else 0) + (2 if remote_id in ids else 0) if ids else 1
        if ids and not ({local_id, remote_id} & set(ids)):
            continue
        if s > score:
            best, score = secret, s
    return best


def import_swanctl(path: str | os.PathLike[str], *, out_dir: str | os.PathLike[str] | None = None) -> SwanctlImport:
    """The espresso configuration tree for a swanctl.conf and the keys it refused. File paths in the tree are
    relative to ``out_dir`` (where the TOML will live; default: the current directory). A file that is not
    valid settings syntax raises ConfigError."""
    src = Path(path)
    tree = parse_settings(src)
    mapper = _Mapper(tree, src.resolve().parent, Path(out_dir or ".").resolve())
    config = mapper.run()
    return SwanctlImport(config, mapper.refused, src)


# --------------------------------------------------------------------------------------------------------
# TOML out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in esc) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dump_toml(config: dict[str, Any], header: str = "") -> str:
    """TOML text for a tree of tables, strings, integers, booleans and lists of those."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []

    def table(prefix: list[str], data: dict[str, Any]) -> None:
        scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
        tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
        if prefix and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables:
            table([*prefix, k], v)

    table([], config)
    return "\n".join(lines).lstrip("\n") + "\n"
