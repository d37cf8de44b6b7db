"""RFC 5280 name constraints (4.2.1.10, 6.1.3 (b)-(c), 6.1.4 (g)), evaluated over a built path.

Enterprise PKIs hand a branch office or a partner an intermediate CA constrained to its own names (``permitted
DNS:.branch.example``, ``excluded IP:10.0.0.0/8``); an IKE peer must refuse a certificate that intermediate issued
for anyone else's name, whatever the extension's criticality.

Forms evaluated: dNSName, rfc822Name (also the subject's legacy emailAddress attribute), iPAddress and
directoryName (the subject DN and directoryName SANs). For any other form (URI, otherName...) a constraint is
honoured by refusal: a certificate that carries a name of that form below such a constraint is rejected, as
RFC 5280 requires of an implementation that does not process the form. Matching:

- dNSName ``example.net`` matches ``example.net`` and every name under it; ``.example.net`` (OpenSSL's and
  Windows' spelling) only names under it. Case-insensitive, a trailing dot ignored.
- rfc822Name ``ops@example.net`` is one mailbox; ``example.net`` every mailbox at that host; ``.example.net``
  every mailbox at a host under it. The domain part compares case-insensitively, the local part exactly.
- iPAddress: the address lies in the constraint's network of the same family.
- directoryName: the constraint's RDNs are the first RDNs of the name, compared as :func:`dn_equal` does.

Every CA certificate in the path constrains the certificates below it, the trust anchor's own constraints
included (OpenSSL does the same); self-issued intermediates are not themselves checked (6.1.4), the leaf always.
A subject CN is not read as a dNSName (browsers do that; IKE matches FQDN identities against subjectAltNames
only, so a CN cannot smuggle a name past a constraint). Pure: no I/O, no clock.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["NameConstraintViolation", "check_path", "dn_equal"]

_FORMS: dict[type, str] = {
    x509.DNSName: "DNS", x509.RFC822Name: "email", x509.IPAddress: "IP", x509.DirectoryName: "dirName",
    x509.UniformResourceIdentifier: "URI", x509.OtherName: "otherName", x509.RegisteredID: "registeredID",
}
_EVALUATED = (x509.DNSName, x509.RFC822Name, x509.IPAddress, x509.DirectoryName)


class NameConstraintViolation(Exception):
    """A name of a certificate is outside a permitted or inside an excluded subtree (message: which, whose)."""


def _rdn_key(rdn: x509.RelativeDistinguishedName) -> list[tuple[str, str]]:
    return sorted((a.oid.dotted_string, " ".join(str(a.value).split()).casefold()) for a in rdn)


def dn_equal(a: x509.Name, b: x509.Name) -> bool:
    """RFC 5280 7.1-ish comparison: same RDN sequence, attribute values compared case-insensitively with
    collapsed whitespace (string types ignored)."""
    ra, rb = list(a.rdns), list(b.rdns)
    return len(ra) == len(rb) and all(_rdn_key(x) == _rdn_key(y) for x, y in zip(ra, rb))


def _dn_within(name: x509.Name, base: x509.Name) -> bool:
    n, b = list(name.rdns), list(base.rdns)
    return len(b) <= len(n) and all(_rdn_key(x) == _rdn_key(y) for x, y in zip(n, b))


def _dns_within(name: str, base: str) -> bool:
    n, b = name.lower().rstrip("."), base.lower().rstrip(".")
    if not b:
        return True  # an empty dNSName constraint is every name
    if b.startswith("."):
        return n.endswith(b)
    return n == b or n.endswith("." + b)


def _email_within(name: str, base: str) -> bool:
    local, at, host = name.rpartition("@")
    if not at:
        return False
    if "@" in base:  # a whole mailbox
        blocal, _, bhost = base.rpartition("@")
        return local == blocal and host.lower() == bhost.lower()
    if base.startswith("."):
        return host.lower().endswith(base.lower())
    return host.lower() == base.lower()


def _ip_within(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, net: object) -> bool:
    return isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and addr.version == net.version \
        and addr in net


def _within(name: x509.GeneralName, base: x509.GeneralName) -> bool:
    if isinstance(name, x509.DNSName):
        return _dns_within(name.value, base.value)
    if isinstance(name, x509.RFC822Name):
        return _email_within(name.value, base.value)
    if isinstance(name, x509.IPAddress):
        return _ip_within(name.value, base.value)  # type: ignore[arg-type]
    if isinstance(name, x509.DirectoryName):
        return _dn_within(name.value, base.value)
    return False


def _names(cert: x509.Certificate) -> list[x509.GeneralName]:
    """The names a constraint applies to: the subject DN (if not empty), its emailAddress attributes as
    rfc822Names, and every subjectAltName."""
    out: list[x509.GeneralName] = []
    if list(cert.subject.rdns):
        out.append(x509.DirectoryName(cert.subject))
        for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
            out.append(x509.RFC822Name(str(a.value)))
    try:
        out.extend(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        pass
    return out


def _show(name: x509.GeneralName) -> str:
    label = _FORMS.get(type(name), type(name).__name__)
    if isinstance(name, x509.DirectoryName):
        return f"{label}:{name.value.rfc4514_string()}"
    return f"{label}:{getattr(name, 'value', name)}"


def _check(cert: x509.Certificate, nc: x509.NameConstraints, ca: x509.Certificate) -> None:
    whose, by = cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}", ca.subject.rfc4514_string()
    permitted: Sequence[x509.GeneralName] = nc.permitted_subtrees or ()
    excluded: Sequence[x509.GeneralName] = nc.excluded_subtrees or ()
    for name in _names(cert):
        form = type(name)
        same_p = [b for b in permitted if type(b) is form]
        same_x = [b for b in excluded if type(b) is form]
        if not isinstance(name, _EVALUATED):
            if same_p or same_x:
                raise NameConstraintViolation(
                    f"{whose}: {_show(name)} is under a {_FORMS.get(form, form.__name__)} name constraint of {by} "
                    f"that is not evaluated, so it cannot be accepted")
            continue
        for b in same_x:
            if _within(name, b):
                raise NameConstraintViolation(f"{whose}: {_show(name)} is excluded by {_show(b)} in the name "
                                              f"constraints of {by}")
        if same_p and not any(_within(name, b) for b in same_p):
            allowed = ", ".join(_show(b) for b in same_p)
            raise NameConstraintViolation(f"{whose}: {_show(name)} is outside the permitted {allowed} of {by}")


def _constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def check_path(path: Iterable[x509.Certificate]) -> None:
    """``path`` is leaf first, trust anchor last (as the validator builds it)."""
    chain = list(path)
    for k in range(1, len(chain)):
        nc = _constraints(chain[k])
        if nc is None:
            continue
        for i in range(k - 1, -1, -1):  # everything below the constraining CA, nearest first
            c = chain[i]
            if i > 0 and c.subject == c.issuer:
                continue  # a self-issued intermediate (key rollover) is exempt; the leaf never is
            _check(c, nc, chain[k])
