"""A strongSwan (charon + swanctl) peer in a private network namespace, for interop tests.

Why this shape: strongSwan is the oracle the IKE and ESP code is judged against, and its charon must run as
root with userspace ESP (``kernel-libipsec``) because this kernel has no ESP. Every charon gets its own
work directory (``strongswan.conf``, ``swanctl/``, log, vici socket, a private ``/run`` for the PID file that
is compiled in), its own namespace and ports, so several can run side by side and nothing leaks into the host.

Everything here is bounded in time, and :class:`Lab` removes what it created (processes, namespaces, veth
links) whatever the outcome, so a failing test never leaves a charon or a namespace behind.

The facts it relies on are in ``/work/shared/interop/README.md``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = shutil.which("swanctl") or "/usr/sbin/swanctl"

#: Plugins a charon loads: kernel-libipsec must come before kernel-netlink (the kernel has no ESP).
PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 revocation constraints pubkey kdf "
    "aes sha1 sha2 hmac gcm chapoly curve25519 "
    "kernel-libipsec kernel-netlink socket-default vici"
)

#: Upper bound of any single wait in this module (seconds).
START_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name unique to this process and call, short enough for an interface name (15 chars)."""
    return f"{prefix}{os.getpid() % 100000:05d}{next(_counter) % 1000:03d}"


def run(cmd: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
        env: dict[str, str] | None = None, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


# --------------------------------------------------------------------------------------------------------
# Certificates


@dataclass
class Credential:
    """A private key and its certificate, with the identity the certificate carries."""

    name: str
    key: object
    cert: x509.Certificate
    identity: str  # an FQDN in the subjectAltName

    def key_pem(self) -> bytes:
        return self.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def write_key(self, path: Path) -> Path:
        """The key as a deployment keeps it: PKCS#8 PEM, mode 0600 from creation (daemons refuse wider)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem())
        os.chmod(path, 0o600)  # an existing file keeps its mode on O_TRUNC
        return path

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _new_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError(f"unknown key kind {kind!r}")


@dataclass
class LabPki:
    """A throwaway CA and end-entity certificates (made with ``cryptography``; strongSwan is the checker)."""

    kind: str = "ecdsa"
    name: str = "espresso test CA"  # distinct names for distinct CAs: strongSwan finds issuers by name
    parent: LabPki | None = None  # an intermediate CA issued by this one; None: a self-signed root
    #: the hash every signature of this CA uses (its certificate, what it issues, its CRLs): ``sha384`` for a
    #: peer whose ``remote.auth = pubkey-sha384`` constrains the trust chain too
    digest: str = "sha256"
    ca: Credential = field(init=False)

    def _hash(self) -> hashes.HashAlgorithm:
        return {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[self.digest]

    def __post_init__(self) -> None:
        key = _new_key(self.kind)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "espresso interop"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} {self.kind}")])
        now = _dt.datetime.now(_dt.timezone.utc)
        issuer_name, issuer_key = (name, key) if self.parent is None else \
            (self.parent.ca.cert.subject, self.parent.ca.key)
        b = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if self.parent is not None:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)  # type: ignore[attr-defined]
        digest = self._hash() if self.parent is None else self.parent._hash()
        cert = b.sign(issuer_key, digest)  # type: ignore[arg-type]
        self.ca = Credential("ca", key, cert, "")

    def intermediate(self, name: str, kind: str | None = None) -> LabPki:
        """An intermediate CA under this one (its ``ca`` is signed by this CA's key)."""
        return LabPki(kind or self.kind, name, parent=self, digest=self.digest)

    def crl(self, revoked: list[x509.Certificate], *, key_id: bool = False) -> x509.CertificateRevocationList:
        """A CRL of this CA, valid now, revoking ``revoked``. ``key_id`` adds the authorityKeyIdentifier
        (RFC 5280 5.2.1), by which charon finds a CRL it holds (x509crl/, or one it fetched before) for a
        certificate's issuer; without it charon only uses a CRL it fetches from the certificate's own
        distribution point, which the revocation-policy tests rely on."""
        now = _dt.datetime.now(_dt.timezone.utc)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.cert.subject)
             .last_update(now - _dt.timedelta(minutes=5)).next_update(now + _dt.timedelta(days=1))
             .add_extension(x509.CRLNumber(1), critical=False))
        if key_id:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca.key.public_key()), critical=False)  # type: ignore[attr-defined]
        for c in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(now - _dt.timedelta(minutes=1)).build())
        return b.sign(self.ca.key, self._hash())  # type: ignore[arg-type]

    def issue(self, name: str, fqdn: str, kind: str | None = None, *, valid_from: _dt.timedelta | None = None,
              valid_for: _dt.timedelta | None = None, crl_url: str | None = None) -> Credential:
        """An end-entity certificate for ``fqdn`` (SAN). ``valid_from``/``valid_for`` shift its validity
        (relative to now) to make expired or not-yet-valid certificates; ``crl_url`` is a CRL distribution
        point."""
        key = _new_key(kind or self.kind)
        now = _dt.datetime.now(_dt.timezone.utc)
        start = now + (valid_from if valid_from is not None else -_dt.timedelta(hours=1))
        end = start + (valid_for if valid_for is not None else _dt.timedelta(days=1, hours=1))
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "espresso interop"),
                             x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca.key.public_key()), critical=False)  # type: ignore[attr-defined]
        )
        if crl_url is not None:
            cert = cert.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
        return Credential(name, key, cert.sign(self.ca.key, self._hash()), fqdn)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Namespaces and links


@dataclass
class Netns:
    name: str

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
        return run(cmd, netns=self.name, **kw)

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"


# --------------------------------------------------------------------------------------------------------
# charon


@dataclass
class Child:
    """One ``children`` section of a swanctl connection."""

    name: str
    local_ts: str
    remote_ts: str
    esp_proposals: str = "aes128gcm16"
    start_action: str = "none"
    extra: str = ""  # raw swanctl.conf lines, e.g. "rekey_time = 0"


@dataclass
class Connection:
    """One swanctl connection with certificate (pubkey) authentication."""

    name: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    cert_file: str
    children: list[Child]
    proposals: str = "aes128gcm16-prfsha256-ecp256"
    local_port: int = 500
    remote_port: int = 500
    extra: str = ""  # raw lines in the connection section, e.g. "rekey_time = 0"
    local_auth: str = "pubkey"  # swanctl local.auth, e.g. "ike:rsa/pss-sha384"
    remote_auth: str = "pubkey"  # swanctl remote.auth, e.g. "ecdsa-384"
    remote_extra: str = ""  # raw lines in the remote section, e.g. "revocation = strict"

    def render(self) -> str:
        kids = "\n".join(
            f"""      {c.name} {{
        local_ts = {c.local_ts}
        remote_ts = {c.remote_ts}
        esp_proposals = {c.esp_proposals}
        start_action = {c.start_action}
        {c.extra}
      }}""" for c in self.children)
        return f"""  {self.name} {{
    version = 2
    local_addrs = {self.local_addr}
    remote_addrs = {self.remote_addr}
    local_port = {self.local_port}
    remote_port = {self.remote_port}
    proposals = {self.proposals}
    {self.extra}
    local {{
      auth = {self.local_auth}
      certs = {self.cert_file}
      id = {self.local_id}
    }}
    remote {{
      auth = {self.remote_auth}
      id = {self.remote_id}
      {self.remote_extra}
    }}
    children {{
{kids}
    }}
  }}"""


class Charon:
    """One charon daemon in a namespace, driven with swanctl through its own vici socket."""

    def __init__(self, workdir: Path, netns: Netns, *, port: int = 500, port_nat_t: int = 4500,
                 log_levels: dict[str, int] | None = None, settings: str = "", plugins: str = PLUGINS) -> None:
        self.workdir = workdir
        self.netns = netns
        self.port = port
        self.port_nat_t = port_nat_t
        self.log_levels = {"default": 1, "ike": 2, "cfg": 2, "chd": 2, "knl": 1, "net": 1, "enc": 1}
        self.log_levels.update(log_levels or {})
        self.settings = settings
        self.plugins = plugins  # e.g. PLUGINS + " curl" to fetch CRLs from distribution points
        self.proc: subprocess.Popen[bytes] | None = None
        self.connections: list[Connection] = []
        #: a swanctl.conf used as it is (e.g. a scenario of strongSwan's testing layout) instead of connections
        self.swanctl_conf: str | None = None
        self.swanctl_dir = workdir / "swanctl"
        for sub in ("x509", "x509ca", "private", "rsa", "ecdsa", "pkcs8", "conf.d"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "run").mkdir(parents=True, exist_ok=True)

    # -- files
    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.conf_path)
        env["SWANCTL_DIR"] = str(self.swanctl_dir)
        return env

    def add_ca(self, cred: Credential) -> None:
        tag = cred.cert.fingerprint(hashes.SHA256()).hex()[:12]  # several CAs may be trusted at once
        (self.swanctl_dir / "x509ca" / f"{cred.name}-{tag}.pem").write_bytes(cred.cert_pem())

    def add_credential(self, cred: Credential) -> str:
        """Install an end-entity key and certificate; returns the file name for ``certs =``."""
        (self.swanctl_dir / "x509" / f"{cred.name}.pem").write_bytes(cred.cert_pem())
        cred.write_key(self.swanctl_dir / "private" / f"{cred.name}.pem")
        return f"{cred.name}.pem"

    def write_config(self) -> None:
        levels = "\n".join(f"        {k} = {v}" for k, v in self.log_levels.items())
        self.conf_path.write_text(f"""charon {{
  port = {self.port}
  port_nat_t = {self.port_nat_t}
  load = {self.plugins}
  install_virtual_ip = no
  retransmit_tries = 3
  retransmit_timeout = 1.0
  {self.settings}
  filelog {{
    charon {{
      path = {self.log_path}
      time_format = %H:%M:%S
      ike_name = yes
      flush_line = yes
{levels}
    }}
  }}
  syslog {{
    identifier = charon-{self.netns.name}
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{self.vici_path}
    }}
  }}
}}
swanctl {{
  socket = unix://{self.vici_path}
}}
""")
        if self.swanctl_conf is not None:
            (self.swanctl_dir / "swanctl.conf").write_text(self.swanctl_conf)
            return
        body = "\n".join(c.render() for c in self.connections)
        (self.swanctl_dir / "swanctl.conf").write_text(f"connections {{\n{body}\n}}\n")

    # -- process
    def start(self) -> None:
        self.write_config()
        log = open(self.workdir / "charon.stdout", "wb")
        script = f"mount --bind {self.workdir / 'run'} /run && exec {CHARON}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns.name, "unshare", "-m", "sh", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.vici_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"charon did not open its vici socket in {START_TIMEOUT}s: {self.tail()}")
            time.sleep(0.02)
        # The socket file appears before vici listens; retry the first command briefly.
        for attempt in range(50):
            proc = self.swanctl("--load-all", "--noprompt", check=False)
            if proc.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"swanctl --load-all failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        """SIGTERM (charon sends DELETEs), then SIGKILL after a bounded wait; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        text = ""
        for p in (self.workdir / "charon.stdout", self.log_path):
            if p.exists():
                text += "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- swanctl
    def swanctl(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
                ) -> subprocess.CompletedProcess[str]:
        return run([SWANCTL, *args], check=check, timeout=timeout, env=self.env())

    def initiate(self, child: str, *, ike: str | None = None, timeout: int = 10) -> subprocess.CompletedProcess[str]:
        args = ["--initiate", "--child", child, "--timeout", str(timeout)]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, check=False, timeout=timeout + 10)

    def list_sas(self) -> list[dict]:
        """IKE_SAs as nested dicts (parsed from ``swanctl --list-sas --pretty``), keyed by connection name."""
        out = self.swanctl("--list-sas", "--pretty", "--noblock").stdout
        return [ev for ev in parse_pretty(out)]

    def wait_for(self, predicate, what: str, timeout: float = 10.0, interval: float = 0.1):
        """Poll ``predicate()`` until it returns something truthy; bounded."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.tail()}")
            time.sleep(interval)


# --------------------------------------------------------------------------------------------------------
# swanctl --pretty output

_KV = re.compile(r"^(\S+) = (.*)$")


def parse_pretty(text: str) -> list[dict]:
    """Parse the ``--pretty`` vici dump into one dict per event message (``list-sa event {...}``).

    The format is line oriented: ``name {`` opens a section, ``name [`` a list, ``}``/``]`` close them and
    ``key = value`` is a value, so values may contain spaces (distinguished names).
    """
    events: list[dict] = []
    stack: list[object] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.endswith("{"):
            name = line[:-1].strip().rstrip("=").strip()
            new: dict = {}
            if not stack:
                events.append(new)
            else:
                parent = stack[-1]
                assert isinstance(parent, dict)
                parent[name] = new
            stack.append(new)
        elif line.endswith("["):
            name = line[:-1].strip().rstrip("=").strip()
            lst: list = []
            parent = stack[-1]
            assert isinstance(parent, dict)
            parent[name] = lst
            stack.append(lst)
        elif line in ("}", "]"):
            stack.pop()
        elif stack and isinstance(stack[-1], list):
            stack[-1].append(line)
        else:
            m = _KV.match(line)
            if m and stack:
                parent = stack[-1]
                assert isinstance(parent, dict)
                parent[m.group(1)] = m.group(2)
    return events


def ike_sas(events: list[dict]) -> dict[str, dict]:
    """Flatten ``list-sa`` events into {connection name: IKE_SA dict}."""
    out: dict[str, dict] = {}
    for ev in events:
        for name, sa in ev.items():
            if isinstance(sa, dict):
                out[name] = sa
    return out


def child_sas(ike_sa: dict) -> list[dict]:
    kids = ike_sa.get("child-sas", {})
    return [v for v in kids.values() if isinstance(v, dict)]


# --------------------------------------------------------------------------------------------------------
# A lab: namespaces + veth + charons, with cleanup


@dataclass
class Site:
    netns: Netns
    outer: str   # address on the veth
    inner: str   # address on lo, inside the traffic selectors
    ifname: str


class Lab:
    """Creates namespaces joined by veth pairs and charons in them; ``close()`` removes everything.

    Use as a context manager (or the pytest fixture in conftest-free tests) so cleanup always runs.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespaces: list[Netns] = []
        self.charons: list[Charon] = []
        self._subnet = 0

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self) -> Netns:
        ns = Netns(unique("espns"))
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def pair(self, inner_a: str = "10.98.1.1", inner_b: str = "10.98.2.1",
             outer_net: str = "10.97.0.0/24") -> tuple[Site, Site]:
        """Two namespaces joined by a veth pair; inner addresses on ``lo``."""
        a, b = self.netns(), self.netns()
        if_a, if_b = unique("eva"), unique("evb")
        run(["ip", "link", "add", if_a, "netns", a.name, "type", "veth", "peer", "name", if_b, "netns", b.name])
        net = ipaddress.ip_network(outer_net)
        hosts = net.hosts()
        oa, ob = str(next(hosts)), str(next(hosts))
        for ns, ifname, outer, inner in ((a, if_a, oa, inner_a), (b, if_b, ob, inner_b)):
            ns.run(["ip", "addr", "add", f"{outer}/{net.prefixlen}", "dev", ifname])
            ns.run(["ip", "link", "set", ifname, "up"])
            ns.run(["ip", "addr", "add", f"{inner}/32", "dev", "lo"])
        return Site(a, oa, inner_a, if_a), Site(b, ob, inner_b, if_b)

    def charon(self, site: Site, name: str, **kw) -> Charon:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        ch = Charon(workdir, site.netns, **kw)
        self.charons.append(ch)
        return ch

    def close(self) -> None:
        for ch in reversed(self.charons):
            with contextlib.suppress(Exception):
                ch.stop()
        for ns in reversed(self.namespaces):
            # Deleting a namespace removes the veth ends inside it and any TUN device.
            # Kill stray processes still in it first (bounded), so the namespace really goes.
            with contextlib.suppress(Exception):
                pids = run(["ip", "netns", "pids", ns.name], check=False, timeout=5).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(Exception):
                run(["ip", "netns", "delete", ns.name], check=False, timeout=10)
        self.charons.clear()
        self.namespaces.clear()


def ping(site: Site, dst: str, *, count: int = 3, timeout: int = 5) -> subprocess.CompletedProcess[str]:
    """Ping ``dst`` from the site's inner address (so the packets match the traffic selectors)."""
    return site.netns.run(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(timeout),
                           "-I", site.inner, dst], check=False, timeout=timeout + 5)


def charon_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, charon)"
    for tool in (CHARON, SWANCTL, "/usr/sbin/ip", "/usr/bin/unshare"):
        if not Path(tool).exists() and not shutil.which(tool):
            return False, f"{tool} is not installed"
    if not Path("/dev/net/tun").exists():
        return False, "/dev/net/tun is missing (kernel-libipsec needs TUN)"
    return True, ""


def charon_lab(tmp_path: Path) -> Iterator[Lab]:
    """The body of the tests' ``lab`` fixture: a Lab, once charon can run here (else skip, or fail under
    ESPRESSO_REQUIRE_INTEROP=1, with the reason)."""
    from tests.support import require

    ok, reason = charon_available()
    require(ok, reason)
    with Lab(tmp_path) as lab_:
        yield lab_


# --------------------------------------------------------------------------------------------------------
# Keys charon logged (log level 4 for ``ike``/``chd``)

_DUMP_HEAD = re.compile(r"\[(?P<sub>[A-Z]{3})\] (?:<[^>]*> )?(?P<label>[^\n]+?) => (?P<n>\d+) bytes @ 0x[0-9a-f]+$")
_DUMP_LINE = re.compile(r"\]\s+(?:<[^>]*>)?\s*(?P<off>\d+): (?P<hex>(?:[0-9A-F]{2} ){1,16})")
_CHILD_UP = re.compile(r"CHILD_SA (?P<name>\S+)\{(?P<id>\d+)\} established with SPIs "
                       r"(?P<spi_i>[0-9a-f]{8})_i (?P<spi_o>[0-9a-f]{8})_o")


def parse_dumps(log: str) -> list[tuple[str, bytes, int]]:
    """Every ``label => N bytes`` hex dump in a charon log, as (label, bytes, line number)."""
    lines = log.splitlines()
    out: list[tuple[str, bytes, int]] = []
    i = 0
    while i < len(lines):
        m = _DUMP_HEAD.search(lines[i])
        if not m:
            i += 1
            continue
        n = int(m.group("n"))
        data = bytearray()
        j = i + 1
        while len(data) < n and j < len(lines):
            d = _DUMP_LINE.search(lines[j])
            if not d or int(d.group("off")) != len(data):
                break
            data += bytes.fromhex(d.group("hex"))[: n - len(data)]
            j += 1
        out.append((m.group("label"), bytes(data), i))
        i = j
    return out


@dataclass
class LoggedChildKeys:
    """CHILD_SA keys as charon logged them, with the SPIs it then reported (``_i`` inbound, ``_o`` outbound)."""

    name: str
    spi_in: int
    spi_out: int
    encr_i: bytes = b""
    encr_r: bytes = b""
    integ_i: bytes = b""
    integ_r: bytes = b""


def child_keys(log: str) -> list[LoggedChildKeys]:
    """CHILD_SA key material from a charon log at ``chd = 4``, in the order the CHILD_SAs came up."""
    labels = {"encryption initiator key": "encr_i", "encryption responder key": "encr_r",
              "integrity initiator key": "integ_i", "integrity responder key": "integ_r"}
    dumps = {line: (label, data) for label, data, line in parse_dumps(log)}
    result: list[LoggedChildKeys] = []
    pending: dict[str, bytes] = {}
    for no, line in enumerate(log.splitlines()):
        if no in dumps and dumps[no][0] in labels:
            pending[labels[dumps[no][0]]] = dumps[no][1]
            continue
        m = _CHILD_UP.search(line)
        if m:
            spis = (int(m.group("spi_i"), 16), int(m.group("spi_o"), 16))
            # a rekey responder logs "inbound CHILD_SA ... established" and later "outbound ...": one CHILD_SA
            if not pending and any((k.spi_in, k.spi_out) == spis for k in result):
                continue
            result.append(LoggedChildKeys(m.group("name"), *spis, **pending))
            pending = {}
    return result


def ike_keys(log: str) -> list[dict[str, bytes]]:
    """IKE_SA secrets (SKEYSEED, Sk_d, Sk_ai/ar, Sk_ei/er, Sk_pi/pr) per derivation, in log order."""
    result: list[dict[str, bytes]] = []
    for label, data, _ in parse_dumps(log):
        if label == "SKEYSEED":
            result.append({"SKEYSEED": data})
        elif label.startswith("Sk_") and label.endswith(" secret") and result:
            result[-1][label[:-len(" secret")]] = data
    return result


# --------------------------------------------------------------------------------------------------------
# Sockets inside a namespace, for an in-process peer (espresso) facing a charon

_CLONE_NEWNET = 0x40000000


def netns_sockets(netns: Netns, binds: list[tuple[str, int]], *, tcp: bool = False) -> list[socket.socket]:
    """UDP sockets (``tcp``: listening TCP sockets) bound inside ``netns`` (a socket keeps the namespace it was
    created in).

    ``setns`` switches only the calling thread, so a short-lived helper thread enters the namespace, creates
    and binds the sockets, and the rest of the process (and its asyncio loop) stays where it is.
    """
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            with open(netns.path, "rb") as f:
                if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns.name}) failed")
            for host, port in binds:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                if tcp:
                    s.listen(16)
                result.append(s)
        except BaseException as exc:  # reported in the caller's thread
            error.append(exc)
            for s in result:
                s.close()

    t = threading.Thread(target=work, name=f"netns-{netns.name}")
    t.start()
    t.join(timeout=10)
    if error:
        raise error[0]
    if len(result) != len(binds):
        raise RuntimeError(f"could not create sockets in {netns.name}")
    return result
