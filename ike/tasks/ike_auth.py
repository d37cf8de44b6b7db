"""IKE_AUTH identities and AUTH payloads (strongSwan ike_auth): PSK or certificates checked by the validator."""
from __future__ import annotations

import ipaddress
import logging

from cryptography import x509

from ..auth_constraints import check_chain, check_signature
from ..authenticators import (
    MAX_CERT_SIZE,
    auth_method_name,
    peer_certificates,
    psk_auth,
    select_signature,
    sign_auth,
    signed_octets,
    verify_auth_scheme,
)
from ..constants import AuthMethod, ExchangeType, NotifyType
from ..core_config import Identity
from ..errors import AuthenticationFailedError, InvalidSyntaxError
from ..events import AuthenticationFailed
from ..message import Message
from ..payloads import AuthPayload, IdPayload, NotifyPayload
from ..payloads.ident import dn_variants, identity_to_wire
from .base import Task, TaskStatus
from .cert_post import choose_credential
from .ike_init import peer_error

__all__ = ["MAX_CERT_SIZE", "IkeAuth", "identities_match", "identity_matches_cert"]

log = logging.getLogger("ike.auth")


def _canon(ident: Identity) -> tuple[str, object]:
    if ident.kind == "dn":
        return ("dn", frozenset(dn_variants(ident.value)) or ident.value)
    if ident.kind in ("ipv4", "ipv6"):
        return (ident.kind, ipaddress.ip_address(ident.value))
    if ident.kind in ("fqdn", "email"):
        return (ident.kind, ident.value.lower())
    return (ident.kind, ident.value)


def identities_match(a: Identity, b: Identity) -> bool:
    ca, cb = _canon(a), _canon(b)
    if a.kind == b.kind == "dn" and isinstance(ca[1], frozenset) and isinstance(cb[1], frozenset):
        return bool(ca[1] & cb[1])  # either RDN order
    return ca == cb


def identity_matches_cert(ident: Identity, cert: x509.Certificate) -> bool:
    """Does the certificate prove this identity: subject DN, or a subjectAltName of the identity's kind."""
    if ident.kind == "dn":
        return cert.subject.public_bytes() in dn_variants(ident.value)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ident.kind == "fqdn":
        return ident.value.lower() in [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    if ident.kind == "email":
        return ident.value.lower() in [n.lower() for n in san.get_values_for_type(x509.RFC822Name)]
    if ident.kind in ("ipv4", "ipv6"):
        return ipaddress.ip_address(ident.value) in san.get_values_for_type(x509.IPAddress)
    return False


class IkeAuth(Task):
    EXCHANGE = ExchangeType.IKE_SA_INIT

    def build(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_AUTH:
            return TaskStatus.NEED_MORE
        sa = self.sa
        peer = sa.peer
        id_type, id_data = identity_to_wire(peer.local_id)
        cred = peer.credential
        if peer.local_id.kind == "dn" and cred is not None and identity_matches_cert(peer.local_id, cred.certificate):
            id_data = cred.certificate.subject.public_bytes()  # exactly the subject, whatever RDN order was written
        my_id = IdPayload(id_type, id_data, self.initiator)
        sa.local_id = peer.local_id
        msg.add(my_id)
        if self.initiator and peer.remote_id is not None and peer.remote_id.kind != "dn":
            rt, rd = identity_to_wire(peer.remote_id)
            msg.add(IdPayload(rt, rd, False))
        if self.initiator and not sa.scratch.get("other_sas"):
            msg.add(NotifyPayload(NotifyType.INITIAL_CONTACT))  # only if no other IKE_SA with this peer
        msg.add(self._auth(my_id))
        return TaskStatus.NEED_MORE if self.initiator else TaskStatus.SUCCESS

    def _auth(self, my_id: IdPayload) -> AuthPayload:
        sa = self.sa
        assert sa.keys is not None
        if self.initiator:
            octets = signed_octets(sa.init_request, sa.nonce_r, sa.keys.prf, sa.keys.sk_pi, my_id.rest_of_payload)
        else:
            octets = signed_octets(sa.init_response, sa.nonce_i, sa.keys.prf, sa.keys.sk_pr, my_id.rest_of_payload)
        peer = sa.peer
        if peer.auth == "psk":
            assert peer.psk is not None
            return AuthPayload(AuthMethod.PSK, psk_auth(sa.keys.prf, peer.psk, octets))
        cred = self._credential()
        try:
            method, data = sign_auth(cred.private_key, octets, sa.peer_hashes, peer.rsa_pss, peer.auth_constraints)
        except AuthenticationFailedError as exc:  # our auth constraint and the peer's hashes have nothing in common
            log.warning("IKE_SA %s[%d]: %s", peer.name, sa.ike_id, exc.reason)
            raise
        return AuthPayload(method, data)

    def _credential(self):  # type: ignore[no-untyped-def]
        """Our credential whose chain answers the peer's CERTREQ (chosen once per IKE_SA)."""
        sa = self.sa
        if sa.scratch.get("credential") is None:
            peer = sa.peer
            creds = [c for c in (peer.credential, *peer.extra_credentials) if c is not None]
            sa.scratch["credential"] = choose_credential(creds, sa.peer_certreq, peer.ca_certs)
        return sa.scratch["credential"]

    def _can_sign(self) -> None:
        """A responder makes sure its ``auth`` constraint can be met before it calls the IKE_SA established:
        otherwise the initiator hears AUTHENTICATION_FAILED, not a signature weaker than configured."""
        peer = self.sa.peer
        if peer.auth != "pubkey" or peer.auth_constraints is None:
            return
        try:
            select_signature(self._credential().private_key, self.sa.peer_hashes, peer.rsa_pss,
                             peer.auth_constraints)
        except AuthenticationFailedError as exc:
            log.warning("IKE_SA %s[%d]: %s", peer.name, self.sa.ike_id, exc.reason)
            raise

    def process(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_AUTH:
            return TaskStatus.NEED_MORE
        sa = self.sa
        if self.initiator and msg.get(AuthPayload) is None:
            err = peer_error(msg)
            if err is not None:
                n = msg.error_notify()
                if n is not None and n.type == NotifyType.AUTHENTICATION_FAILED:
                    sa.emit(AuthenticationFailed(sa.ike_id, sa.peer.name, sa.remote_addr,
                                                 "peer refused our authentication", False))
                raise err
        their_id = msg.get_id(not self.initiator)
        auth = msg.get(AuthPayload)
        if their_id is None or auth is None:
            raise InvalidSyntaxError("IKE_AUTH without ID or AUTH")
        identity = their_id.identity()
        if not self.initiator:
            self._select_peer(identity, msg)
            sa.scratch["initial_contact"] = msg.notify(NotifyType.INITIAL_CONTACT) is not None
        try:
            self._verify(their_id, identity, auth)
        except AuthenticationFailedError as exc:
            log.debug("authentication of %s (%s) failed: %s", identity, sa.remote_addr[0], exc.reason)
            sa.emit(AuthenticationFailed(sa.ike_id, sa.peer.name, sa.remote_addr, exc.reason, True))
            raise
        if not self.initiator:
            self._can_sign()
        sa.remote_id = identity
        if not self.initiator:
            sa.local_id = sa.peer.local_id
        established(sa)
        return TaskStatus.SUCCESS if self.initiator else TaskStatus.NEED_MORE

    def _select_peer(self, identity: Identity, msg: Message) -> None:
        """As responder, the peer config is final only once IDi is known (several may share an address)."""
        sa = self.sa
        candidates = sa.scratch.get("candidates") or [sa.peer]
        for cand in candidates:
            if cand.remote_id is None or identities_match(cand.remote_id, identity):
                sa.peer = cand
                break
        else:
            raise AuthenticationFailedError(f"no peer configuration for identity {identity}")
        idr = msg.get_id(False)
        if idr is not None and not identities_match(idr.identity(), sa.peer.local_id):
            raise AuthenticationFailedError(f"initiator wants IDr {idr.identity()}, we are {sa.peer.local_id}")

    def _verify(self, their_id: IdPayload, identity: Identity, auth: AuthPayload) -> None:
        sa = self.sa
        peer = sa.peer
        assert sa.keys is not None
        if peer.remote_id is not None and not identities_match(peer.remote_id, identity):
            raise AuthenticationFailedError(f"peer identity {identity} is not the configured {peer.remote_id}")
        if self.initiator:
            octets = signed_octets(sa.init_response, sa.nonce_i, sa.keys.prf, sa.keys.sk_pr,
                                   their_id.rest_of_payload)
        else:
            octets = signed_octets(sa.init_request, sa.nonce_r, sa.keys.prf, sa.keys.sk_pi,
                                   their_id.rest_of_payload)
        if peer.remote_auth == "psk":
            import hmac

            if auth.method != AuthMethod.PSK:
                raise AuthenticationFailedError(f"peer used AUTH method {auth.method}, we require psk")
            assert peer.psk is not None
            if not hmac.compare_digest(auth.data, psk_auth(sa.keys.prf, peer.psk, octets)):
                raise AuthenticationFailedError("pre-shared key AUTH does not verify")
            sa.auth_method = "psk"
            return
        if auth.method == AuthMethod.PSK:
            raise AuthenticationFailedError("peer used a pre-shared key, we require a certificate")
        certs = peer_certificates(sa.scratch.get("peer_certs") or [])
        leaf, intermediates = certs[0], certs[1:]
        if not identity_matches_cert(identity, leaf):
            raise AuthenticationFailedError(f"identity {identity} is not in the certificate {leaf.subject.rfc4514_string()}")
        assert peer.validator is not None
        if sa.config.wall_clock is None:
            raise AuthenticationFailedError("certificate not checked: no wall clock given to the core "
                                            "(CoreConfig.wall_clock)")
        try:
            verified = peer.validator(leaf, intermediates, sa.config.wall_clock(sa.now), identity)
        except Exception as exc:  # noqa: BLE001 - the validator's rejection, whatever its class
            reason = getattr(exc, "reason", None)
            detail = getattr(exc, "detail", "")
            text = str(getattr(reason, "value", reason) or exc) + (f" ({detail})" if detail else "")
            raise AuthenticationFailedError(f"certificate rejected: {text}") from None
        sa.auth_method, scheme, used_hash = verify_auth_scheme(auth.method, auth.data, leaf, octets)
        constraints = peer.remote_auth_constraints
        if constraints is not None:
            try:
                check_signature(constraints, scheme, used_hash, leaf.public_key())
                check_chain(constraints, getattr(verified, "chain", None) or [leaf, *intermediates])
            except AuthenticationFailedError as exc:
                log.warning("IKE_SA %s[%d] with %s: %s", peer.name, sa.ike_id, sa.remote_addr[0], exc.reason)
                raise
        if sa.auth_method.startswith("signature") is False and auth.method not in (1, 9, 10, 11):
            sa.auth_method = auth_method_name(auth.method, auth.data)


def established(sa) -> None:  # type: ignore[no-untyped-def]
    from ..events import IkeSaEstablished
    from ..proposal import proposal_name
    from ..sa import IkeSaState

    sa.state = IkeSaState.ESTABLISHED
    sa.established_at = sa.now
    if sa.peer.rekey_time:
        jitter = (int.from_bytes(sa.random(2), "big") / 65535.0) * 0.1 * sa.peer.rekey_time
        sa.rekey_at = sa.now + sa.peer.rekey_time - jitter
    log.debug("IKE_SA %s[%d] established between %s[%s]...%s[%s]", sa.peer.name, sa.ike_id, sa.local_addr[0],
             sa.local_id, sa.remote_addr[0], sa.remote_id)
    assert sa.proposal is not None and sa.local_id is not None and sa.remote_id is not None
    sa.emit(IkeSaEstablished(sa.ike_id, sa.peer.name, sa.spi_i, sa.spi_r, sa.initiator, sa.local_addr,
                             sa.remote_addr, sa.local_id, sa.remote_id, proposal_name(sa.proposal),
                             sa.auth_method, sa.nat_local, sa.nat_remote, bool(sa.scratch.get("nat_fake"))))
