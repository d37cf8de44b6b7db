"""Our CERT payloads (strongSwan ike_cert_post): the credential whose chain answers the peer's CERTREQ."""
from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from ..authenticators import key_hash
from ..constants import CertEncoding, ExchangeType
from ..core_config import Credential
from ..message import Message
from ..payloads import CertPayload
from .base import Task, TaskStatus

__all__ = ["CertPost", "choose_credential"]


def choose_credential(creds: list[Credential], requested: tuple[bytes, ...],
                      known_cas: tuple = ()) -> Credential:  # type: ignore[type-arg]
    """The first credential with a CA in its chain whose key hash the peer asked for, else the first one.

    A chain's CA keys are its intermediates plus any CA in ``known_cas`` that issued its top certificate."""
    if requested:
        want = set(requested)
        for cred in creds:
            cas = list(cred.intermediates)
            top = cas[-1] if cas else cred.certificate
            cas += [c for c in known_cas if c.subject == top.issuer]
            if any(key_hash(c) in want for c in cas):
                return cred
    return creds[0]


class CertPost(Task):
    EXCHANGE = ExchangeType.IKE_SA_INIT

    def build(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_AUTH:
            return TaskStatus.NEED_MORE
        peer = self.sa.peer
        if peer.auth != "pubkey" or peer.send_cert == "never":
            return TaskStatus.SUCCESS
        if peer.send_cert == "ifasked" and not self.sa.peer_certreq:
            return TaskStatus.SUCCESS
        cred = self.sa.scratch.get("credential") or peer.credential
        assert cred is not None
        for cert in (cred.certificate, *cred.intermediates):
            msg.add(CertPayload(CertEncoding.X509_SIGNATURE, cert.public_bytes(Encoding.DER)))
        return TaskStatus.SUCCESS

    def process(self, msg: Message) -> TaskStatus:
        return TaskStatus.SUCCESS if msg.exchange == ExchangeType.IKE_AUTH else TaskStatus.NEED_MORE
