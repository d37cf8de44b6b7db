"""Certificate path validation for IKE peers.

Usage (what IKE calls for every peer certificate)::

    from pki.validate import Validator, ValidationPolicy, IdType, VerifiedChain
    from pki.errors import CertificateRejected, RejectReason

    validator = Validator(store)                       # a pki.store.Store, or a list of TrustAnchor / x509.Certificate
    try:
        chain: VerifiedChain = validator.verify(leaf, intermediates, at, identity=(IdType.FQDN, "r1.example.net"))
    except CertificateRejected as exc:
        exc.reason    # a RejectReason member, one per check
        exc.detail    # one line for the log

``verify`` builds a path from ``leaf`` through ``intermediates`` (any order, extras ignored) to a trust anchor (the CA
certificate of a ca-profile), then checks, in this order: signatures (RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519),
validity at ``at`` for every certificate, basicConstraints/keyUsage of every issuer and path length, RFC 5280 name
constraints (:mod:`pki._nameconstraints`), unknown critical extensions, the leaf's keyUsage and extended key usage against :class:`ValidationPolicy`, revocation of every
non-anchor certificate as the anchor's profile says (CRL from a :class:`~pki.revocation.CrlSource`, OCSP from an
:class:`~pki.revocation.OcspSource`; failures fail closed unless the profile is ``fail_open``), and finally the IKE
identity against the subject DN or a subjectAltName (dNSName, iPAddress, rfc822Name).

The validator does no I/O and reads no clock: ``at`` is given, CRLs and OCSP answers come from injected sources.
Those sources may block (``Store.validator()`` wires HTTP CRL/OCSP fetching with timeouts, ``fetch=None`` disables
it): an event loop should call ``verify`` in an executor. ``verify`` raises only :class:`CertificateRejected` for
anything about the certificates or identity, and ``ValueError`` for caller mistakes (``at`` missing or naive).
"""
from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pki._nameconstraints import NameConstraintViolation, check_path, dn_equal
from pki.certs import parse_subject, sans_of
from pki.errors import CertificateRejected, PkiError, RejectReason, RevocationUnavailable
from pki.profile import RevocationMode, RevocationPolicy
from pki.revocation import (
    CrlCache,
    CrlSource,
    OcspSource,
    RevocationAnswer,
    RevocationStatus,
    check_crl,
    crl_urls,
    ocsp_urls,
)

__all__ = [
    "IKE_INTERMEDIATE",
    "IPSEC_IKE",
    "RFC4945_EKUS",
    "AnchorSource",
    "CertificateRejected",
    "IdType",
    "RejectReason",
    "TrustAnchor",
    "ValidationPolicy",
    "Validator",
    "VerifiedChain",
]

#: id-kp-ipsecIKE (RFC 4945 5.1.3.12)
IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")
#: iKEIntermediate (1.3.6.1.5.5.8.2.2), which strongSwan's ``--flag ikeIntermediate`` and Windows gateways use
IKE_INTERMEDIATE = ObjectIdentifier("1.3.6.1.5.5.8.2.2")
#: EKUs accepted by default when a leaf has the extension: RFC 4945's ipsecIKE and anyExtendedKeyUsage, plus
#: serverAuth/clientAuth/iKEIntermediate which Windows/macOS-oriented CAs put on gateway and user certificates.
RFC4945_EKUS = frozenset({IPSEC_IKE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, IKE_INTERMEDIATE,
                          ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})
#: Bounds on what a peer can make us examine: certificates sent, and path-building steps per verify().
MAX_INTERMEDIATES = 16
MAX_PATH_STEPS = 64


class IdType(enum.IntEnum):
    """IKEv2 identification types (RFC 7296 3.5) that can be matched against a certificate."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_KEY_ID = 11

    # short aliases
    IPV4 = 1
    FQDN = 2
    EMAIL = 3
    IPV6 = 5
    DN = 9
    KEYID = 11


_ID_NAMES = {"ipv4": IdType.IPV4, "ipv4_addr": IdType.IPV4, "fqdn": IdType.FQDN, "dns": IdType.FQDN,
             "email": IdType.EMAIL, "rfc822": IdType.EMAIL, "rfc822_addr": IdType.EMAIL, "user_fqdn": IdType.EMAIL,
             "ipv6": IdType.IPV6, "ipv6_addr": IdType.IPV6, "ip": IdType.IPV4, "dn": IdType.DN, "asn1dn": IdType.DN,
             "der_asn1_dn": IdType.DN, "keyid": IdType.KEYID, "key_id": IdType.KEYID}


@dataclass(frozen=True)
class ValidationPolicy:
    """What a leaf must carry beyond a valid path.

    ``accepted_ekus``: if the leaf has an extendedKeyUsage, it must contain one of these (RFC 4945: no EKU is
    always fine). ``required_eku``: if set, the leaf must have an EKU containing it.
    ``check_revocation``: False skips revocation whatever the profiles say (lab use).
    """

    accepted_ekus: frozenset[ObjectIdentifier] = RFC4945_EKUS
    required_eku: ObjectIdentifier | None = None
    require_digital_signature: bool = True
    max_chain_length: int = 8  # certificates in the path, leaf and anchor included
    check_revocation: bool = True
    #: strongSwan's per-connection ``revocation`` (None: each profile's ``fail_open`` decides). ``strict``: the
    #: status must be known good; ``ifuri``: fail only when the certificate (or profile) names a CRL/OCSP URI
    #: and no answer could be had; ``relaxed``: fail only when revoked. When set, a profile whose mode is
    #: ``disable`` is checked by CRL all the same (the connection's policy asked for a check).
    revocation: str | None = None

    def __post_init__(self) -> None:
        if self.revocation not in (None, "strict", "ifuri", "relaxed"):
            raise ValueError(f"revocation must be strict, ifuri or relaxed, not {self.revocation!r}")


@dataclass(frozen=True)
class TrustAnchor:
    """A trusted CA certificate and the revocation policy of its ca-profile."""

    certificate: x509.Certificate
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)
    profile: str = ""


@runtime_checkable
class AnchorSource(Protocol):
    """Something that lists trust anchors (``pki.store.Store`` does)."""

    def trust_anchors(self) -> Sequence[TrustAnchor]: ...


@dataclass(frozen=True)
class VerifiedChain:
    chain: tuple[x509.Certificate, ...]  # leaf first, anchor last
    anchor: TrustAnchor
    revocation: tuple[RevocationAnswer, ...]  # one per non-anchor certificate, leaf first
    identity: str | None  # which name matched the IKE identity, e.g. "DNS:r1.example.net"

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def profile(self) -> str:
        return self.anchor.profile


def _reject(reason: RejectReason, detail: str) -> CertificateRejected:
    return CertificateRejected(reason, detail)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


class Validator:
    """Verifies peer certificates against trust anchors; immutable apart from the revocation sources' caches."""

    def __init__(
        self,
        anchors: AnchorSource | Iterable[TrustAnchor | x509.Certificate],
        policy: ValidationPolicy | None = None,
        *,
        crl_source: CrlSource | None = None,
        ocsp: OcspSource | None = None,
        ocsp_factory: Callable[[RevocationPolicy], OcspSource] | None = None,
        intermediates: Iterable[x509.Certificate] = (),
    ) -> None:
        """``ocsp`` answers for every profile; ``ocsp_factory`` (used when ``ocsp`` is None) builds one source per
        distinct revocation policy, so each ca-profile's OCSP URL override and nonce setting apply.

        ``intermediates``: CA certificates held locally but not trusted (strongSwan's ``x509ca`` beside its
        anchors): paths are built through them as through those the peer sends, up to an anchor, and they are
        checked (validity, constraints, revocation by their issuer) like any other certificate of the path."""
        self._source = anchors if isinstance(anchors, AnchorSource) else None
        self._static: list[TrustAnchor] = [] if self._source is not None else [
            a if isinstance(a, TrustAnchor) else TrustAnchor(a) for a in anchors  # type: ignore[union-attr]
        ]
        self.policy = policy or ValidationPolicy()
        self.crl_source: CrlSource = crl_source if crl_source is not None else CrlCache(fetch=None)
        self.ocsp = ocsp
        self._ocsp_factory = ocsp_factory
        self._ocsp_by_policy: dict[RevocationPolicy, OcspSource] = {}
        self.intermediates: tuple[x509.Certificate, ...] = tuple(intermediates)

    def __call__(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate] = (),
                 at: datetime | None = None, identity: Any = None) -> VerifiedChain:
        """Same as :meth:`verify`."""
        return self.verify(leaf, intermediates, at, identity)

    def _ocsp_source(self, rp: RevocationPolicy) -> OcspSource | None:
        if self.ocsp is not None or self._ocsp_factory is None:
            return self.ocsp
        src = self._ocsp_by_policy.get(rp)
        if src is None:
            src = self._ocsp_by_policy[rp] = self._ocsp_factory(rp)
        return src

    def anchors(self) -> list[TrustAnchor]:
        return list(self._source.trust_anchors()) if self._source is not None else list(self._static)

    # -- the entry point --------------------------------------------------------------------------------------
    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        at: datetime | None = None,
        identity: tuple[IdType | int | str, str | bytes] | Any | None = None,
    ) -> VerifiedChain:
        """``identity``: ``(type, value)`` or any object with ``.kind`` and ``.value``; type is an :class:`IdType`,
        its number, or a name (ipv4, ipv6, fqdn, email, dn, keyid). Values are text (DN in RFC 4514 or strongSwan
        order, keyid in hex) or the raw ID payload bytes."""
        if at is None:
            raise ValueError("'at' is required: the validator reads no clock")
        if at.tzinfo is None:
            raise ValueError("'at' must be timezone-aware (UTC)")
        if len(intermediates) > MAX_INTERMEDIATES:
            raise _reject(RejectReason.CHAIN_TOO_LONG, f"{len(intermediates)} intermediates sent (max {MAX_INTERMEDIATES})")
        try:
            for c in (leaf, *intermediates):
                _ = c.subject.rfc4514_string(), c.issuer.rfc4514_string(), c.extensions, c.public_key()
        except Exception as exc:  # certificates built elsewhere may be lazily unparsable in many ways
            raise _reject(RejectReason.MALFORMED, f"certificate does not parse: {type(exc).__name__} {exc}") from None
        pool = list(intermediates) + [c for c in self.intermediates if c not in intermediates]
        path, anchor = self._build_path(leaf, pool)
        self._check_validity(path, at)
        self._check_ca_constraints(path)
        _check_name_constraints(path)
        self._check_critical_extensions(path)
        self._check_leaf_usage(leaf)
        answers = self._check_revocation(path, anchor, at)
        matched = self._check_identity(leaf, identity) if identity is not None else None
        return VerifiedChain(tuple(path), anchor, tuple(answers), matched)

    def verify_ca(self, ca: x509.Certificate, intermediates: Sequence[x509.Certificate] = (),
                  at: datetime | None = None) -> VerifiedChain:
        """Check ``ca`` as a CA certificate, not as an IKE end entity (JUNOS ``ca-certificate verify``): it must
        have basicConstraints cA and (if it has keyUsage) keyCertSign, be valid at ``at``, and either verify its
        own signature (a self-signed root: it is then its own trust anchor) or chain to another trust anchor,
        through ``intermediates``, with the path's constraints and revocation checked as for a peer."""
        if at is None or at.tzinfo is None:
            raise ValueError("'at' is required and must be timezone-aware (UTC)")
        try:
            _ = ca.subject.rfc4514_string(), ca.issuer.rfc4514_string(), ca.extensions, ca.public_key()
        except Exception as exc:
            raise _reject(RejectReason.MALFORMED, f"certificate does not parse: {type(exc).__name__} {exc}") from None
        if ca.subject == ca.issuer:
            failures: list[tuple[RejectReason, str]] = []
            if not self._issued_by(ca, ca, failures):
                reason, detail = failures[0] if failures else (RejectReason.BAD_SIGNATURE,
                                                               f"{_name(ca)} is not signed by its own key")
                raise _reject(reason, detail)
            anchor = next((a for a in self.anchors() if a.certificate == ca), TrustAnchor(ca))
            path = [ca]
        else:
            others = Validator([a for a in self.anchors() if a.certificate != ca], self.policy,
                               crl_source=self.crl_source, ocsp=self.ocsp, ocsp_factory=self._ocsp_factory)
            path, anchor = others._build_path(ca, [c for c in intermediates if c != ca])
        self._check_validity(path, at)
        # checked as the issuer of a certificate below it, so its own cA/keyCertSign count, and it counts
        # towards its issuers' path lengths
        self._check_ca_constraints([ca, *path])
        _check_name_constraints(path)
        self._check_critical_extensions(path)
        answers = self._check_revocation(path, anchor, at)
        return VerifiedChain(tuple(path), anchor, tuple(answers), None)

    # -- path building ----------------------------------------------------------------------------------------
    def _build_path(self, leaf: x509.Certificate,
                    pool: list[x509.Certificate]) -> tuple[list[x509.Certificate], TrustAnchor]:
        anchors = self.anchors()
        for a in anchors:
            if a.certificate == leaf:
                return [leaf], a
        failures: list[tuple[RejectReason, str]] = []
        limit = self.policy.max_chain_length
        budget = [MAX_PATH_STEPS]
        memo: dict[tuple[int, int], bool] = {}

        def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
            # each signature is checked once per verify() call, however many paths pass through it
            key = (id(cert), id(issuer))
            if key not in memo:
                memo[key] = self._issued_by(cert, issuer, failures)
            return memo[key]

        def extend(path: list[x509.Certificate]) -> tuple[list[x509.Certificate], TrustAnchor] | None:
            cur = path[-1]
            if len(path) >= limit:
                failures.append((RejectReason.CHAIN_TOO_LONG, f"no trusted issuer within {limit} certificates"))
                return None
            budget[0] -= 1
            if budget[0] < 0:  # a peer sending many look-alike CAs cannot make us explore every ordering
                failures.append((RejectReason.CHAIN_TOO_LONG, f"path building gave up after {MAX_PATH_STEPS} steps"))
                return None
            for a in anchors:
                if issued_by(cur, a.certificate):
                    return path + [a.certificate], a
            for cand in pool:
                if cand in path or cand == cur:
                    continue
                if issued_by(cur, cand):
                    found = extend(path + [cand])
                    if found is not None:
                        return found
            return None

        found = extend([leaf])
        if found is not None:
            return found
        for wanted in (RejectReason.BAD_SIGNATURE, RejectReason.MALFORMED, RejectReason.CHAIN_TOO_LONG):
            for r, d in failures:
                if r is wanted:
                    raise _reject(r, d)
        raise _reject(RejectReason.UNTRUSTED,
                      f"no path from {_name(leaf)} (issuer {leaf.issuer.rfc4514_string()}) to a trusted CA")

    @staticmethod
    def _issued_by(cert: x509.Certificate, issuer: x509.Certificate,
                   failures: list[tuple[RejectReason, str]]) -> bool:
        if cert.issuer != issuer.subject:
            return False
        aki = _aki(cert)
        ski = _ski(issuer)
        if aki is not None and ski is not None and aki != ski:
            return False
        try:
            cert.verify_directly_issued_by(issuer)
        except InvalidSignature:
            failures.append((RejectReason.BAD_SIGNATURE, f"signature on {_name(cert)} does not verify with the key of {_name(issuer)}"))
            return False
        except (UnsupportedAlgorithm, TypeError, ValueError) as exc:
            failures.append((RejectReason.MALFORMED, f"signature on {_name(cert)} cannot be checked: {exc}"))
            return False
        return True

    # -- checks -----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_validity(path: list[x509.Certificate], at: datetime) -> None:
        for i, c in enumerate(path):
            what = "certificate" if i == 0 else "CA certificate"
            if at < c.not_valid_before_utc:
                raise _reject(RejectReason.NOT_YET_VALID, f"{what} {_name(c)} not valid before {_fmt(c.not_valid_before_utc)}")
            if at > c.not_valid_after_utc:
                raise _reject(RejectReason.EXPIRED, f"{what} {_name(c)} expired at {_fmt(c.not_valid_after_utc)}")

    @staticmethod
    def _check_ca_constraints(path: list[x509.Certificate]) -> None:
        for k in range(1, len(path)):
            ca = path[k]
            try:
                bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                raise _reject(RejectReason.NOT_A_CA, f"{_name(ca)} has no basicConstraints: not a CA") from None
            if not bc.ca:
                raise _reject(RejectReason.NOT_A_CA, f"{_name(ca)} has basicConstraints cA=FALSE")
            try:
                ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
                if not ku.key_cert_sign:
                    raise _reject(RejectReason.NOT_A_CA, f"{_name(ca)} keyUsage lacks keyCertSign")
            except x509.ExtensionNotFound:
                pass
            # CA certificates strictly between this one and the leaf (self-issued ones do not count, RFC 5280 6.1.4)
            below = sum(1 for c in path[1:k] if c.subject != c.issuer)
            if bc.path_length is not None and below > bc.path_length:
                raise _reject(RejectReason.PATH_LENGTH_EXCEEDED,
                              f"{_name(ca)} allows {bc.path_length} intermediate CA(s) below it, path has {below}")

    @staticmethod
    def _check_critical_extensions(path: list[x509.Certificate]) -> None:
        for c in path:
            for ext in c.extensions:
                if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
                    raise _reject(RejectReason.MALFORMED,
                                  f"{_name(c)} has an unsupported critical extension {ext.oid.dotted_string}")

    def _check_leaf_usage(self, leaf: x509.Certificate) -> None:
        pol = self.policy
        if pol.require_digital_signature:
            try:
                ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
                if not (ku.digital_signature or ku.content_commitment):
                    raise _reject(RejectReason.KEY_USAGE, f"{_name(leaf)} keyUsage allows neither digitalSignature "
                                  "nor nonRepudiation: it cannot authenticate IKE")
            except x509.ExtensionNotFound:
                pass
        try:
            ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            ekus = None
        if pol.required_eku is not None and (ekus is None or pol.required_eku not in ekus):
            raise _reject(RejectReason.EXTENDED_KEY_USAGE,
                          f"{_name(leaf)} lacks the required extendedKeyUsage {pol.required_eku.dotted_string}")
        if ekus is not None and not ekus & set(pol.accepted_ekus):
            names = ", ".join(getattr(e, "_name", e.dotted_string) for e in ekus)
            raise _reject(RejectReason.EXTENDED_KEY_USAGE, f"{_name(leaf)} extendedKeyUsage ({names}) not acceptable for IKE")

    def _check_revocation(self, path: list[x509.Certificate], anchor: TrustAnchor, at: datetime) -> list[RevocationAnswer]:
        rp = anchor.revocation
        answers: list[RevocationAnswer] = []
        per_conn = self.policy.revocation
        for i in range(len(path) - 1):
            cert, issuer = path[i], path[i + 1]
            if not self.policy.check_revocation or (rp.mode is RevocationMode.DISABLE and per_conn is None):
                answers.append(RevocationAnswer(RevocationStatus.NOT_CHECKED, "disabled"))
                continue
            try:
                if rp.mode is RevocationMode.OCSP:
                    ans = self._ocsp(cert, issuer, rp, at)
                else:
                    ans = self._crl(cert, issuer, rp, at)
            except PkiError as exc:
                if per_conn is not None:
                    has_uri = bool(rp.crl_url or rp.ocsp_url or crl_urls(cert) or ocsp_urls(cert))
                    if per_conn == "relaxed" or (per_conn == "ifuri" and not has_uri):
                        answers.append(RevocationAnswer(RevocationStatus.UNKNOWN, f"{per_conn}: {exc}"))
                        continue
                    raise _reject(RejectReason.REVOCATION_UNKNOWN, f"revocation status of {_name(cert)} unknown "
                                  f"({per_conn}{', a URI is given' if has_uri else ''}): {exc}") from None
                if rp.fail_open:
                    answers.append(RevocationAnswer(RevocationStatus.UNKNOWN, f"fail-open: {exc}"))
                    continue
                raise _reject(RejectReason.REVOCATION_UNKNOWN, f"revocation status of {_name(cert)} unknown: {exc}") from None
            if ans.status is RevocationStatus.REVOKED:
                why = f" ({ans.reason.name})" if ans.reason is not None else ""
                when = f" at {_fmt(ans.revoked_at)}" if ans.revoked_at is not None else ""
                raise _reject(RejectReason.REVOKED, f"{_name(cert)} serial {cert.serial_number:x} revoked{when}{why} [{ans.source}]")
            answers.append(ans)
        return answers

    def _crl(self, cert: x509.Certificate, issuer: x509.Certificate, rp: RevocationPolicy, at: datetime) -> RevocationAnswer:
        urls = [rp.crl_url] if rp.crl_url else crl_urls(cert)
        if isinstance(self.crl_source, CrlCache):
            crl, where = self.crl_source.get_crl(issuer, urls, at, refresh_interval=rp.refresh_interval)
        else:
            crl, where = self.crl_source.get_crl(issuer, urls, at)
        return check_crl(cert, issuer, crl, at, source=where)

    def _ocsp(self, cert: x509.Certificate, issuer: x509.Certificate, rp: RevocationPolicy, at: datetime) -> RevocationAnswer:
        try:
            source = self._ocsp_source(rp)
            if source is None:
                raise RevocationUnavailable("OCSP checking configured but no OCSP checker available")
            res = source.check(cert, issuer, at)
            status = getattr(getattr(res, "status", None), "name", "UNKNOWN")
            if status == "GOOD":
                return RevocationAnswer(RevocationStatus.GOOD, "ocsp")
            if status == "REVOKED":
                return RevocationAnswer(RevocationStatus.REVOKED, "ocsp", getattr(res, "revocation_time", None),
                                        getattr(res, "revocation_reason", None))
            raise RevocationUnavailable("OCSP responder answered 'unknown'")
        except PkiError:
            if rp.ocsp_fallback_crl:
                return self._crl(cert, issuer, rp, at)
            raise

    @staticmethod
    def _check_identity(leaf: x509.Certificate, identity: Any) -> str:
        if hasattr(identity, "kind") and hasattr(identity, "value"):
            kind, value = identity.kind, identity.value
        else:
            kind, value = identity
        try:
            t = IdType(kind) if not isinstance(kind, str) else _ID_NAMES[kind.lower()]
        except (ValueError, KeyError):  # the type comes from the peer's ID payload: a rejection, not a crash
            raise _reject(RejectReason.IDENTITY_MISMATCH,
                          f"identity type {kind!r} cannot be matched against a certificate") from None
        sans = sans_of(leaf)
        shown = value if isinstance(value, str) else value.hex()
        if t is IdType.DN:
            if isinstance(value, bytes):
                if leaf.subject.public_bytes() == value:
                    return f"DN:{leaf.subject.rfc4514_string()}"
            else:
                try:
                    want = parse_subject(value)
                except ValueError:
                    raise _reject(RejectReason.IDENTITY_MISMATCH, f"identity {value!r} is not a DN") from None
                # RFC 4514 text lists the last RDN first, strongSwan prints the first first: accept either
                if _dn_equal(want, leaf.subject) or _dn_equal(x509.Name(list(reversed(want.rdns))), leaf.subject):
                    return f"DN:{leaf.subject.rfc4514_string()}"
            raise _reject(RejectReason.IDENTITY_MISMATCH,
                          f"subject {leaf.subject.rfc4514_string()} does not match identity DN {shown}")
        if t is IdType.KEYID:
            try:
                want_id = bytes.fromhex(value.replace(":", "")) if isinstance(value, str) else bytes(value)
            except ValueError:
                raise _reject(RejectReason.IDENTITY_MISMATCH, f"key id {value!r} is not hex") from None
            if want_id and want_id == _ski(leaf):
                return f"keyid:{want_id.hex()}"
            raise _reject(RejectReason.IDENTITY_MISMATCH, f"key id {shown} is not the certificate's subjectKeyIdentifier")
        if t in (IdType.IPV4, IdType.IPV6):
            try:
                addr = ipaddress.ip_address(value if isinstance(value, str) else bytes(value))
            except ValueError:
                raise _reject(RejectReason.IDENTITY_MISMATCH, f"identity {shown!r} is not an IP address") from None
            if addr in sans.ip:
                return f"IP:{addr}"
            raise _reject(RejectReason.IDENTITY_MISMATCH, f"IP {addr} not among the certificate's subjectAltNames")
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if t is IdType.FQDN:
            fqdn = text.lower().rstrip(".")
            for d in sans.dns:
                if d.lower().rstrip(".") == fqdn:
                    return f"DNS:{d}"
            raise _reject(RejectReason.IDENTITY_MISMATCH, f"FQDN {text} not among the certificate's subjectAltNames")
        local, _, domain = text.rpartition("@")
        for e in sans.email:
            el, _, ed = e.rpartition("@")
            if el == local and ed.lower() == domain.lower():
                return f"email:{e}"
        raise _reject(RejectReason.IDENTITY_MISMATCH, f"e-mail {text} not among the certificate's subjectAltNames")


def _check_name_constraints(path: list[x509.Certificate]) -> None:
    try:
        check_path(path)
    except NameConstraintViolation as exc:
        raise _reject(RejectReason.NAME_CONSTRAINTS, str(exc)) from None


_dn_equal = dn_equal  # one comparison rule for identities and directoryName constraints


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None
