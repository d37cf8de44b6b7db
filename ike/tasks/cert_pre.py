"""Certificate requests and received certificates (strongSwan ike_cert_pre)."""
from __future__ import annotations

from ..authenticators import key_hash
from ..constants import CertEncoding, ExchangeType
from ..message import Message
from ..payloads import CertPayload, CertReqPayload
from .base import Task, TaskStatus

__all__ = ["CertPre", "MAX_CERTREQ_HASHES"]

MAX_CERTREQ_HASHES = 64


class CertPre(Task):
    EXCHANGE = ExchangeType.IKE_SA_INIT

    def build(self, msg: Message) -> TaskStatus:
        sa = self.sa
        want = sa.peer.remote_auth == "pubkey" and sa.peer.send_certreq and sa.peer.ca_certs
        if want and ((msg.exchange == ExchangeType.IKE_SA_INIT and not self.initiator)
                     or (msg.exchange == ExchangeType.IKE_AUTH and self.initiator)):
            msg.add(CertReqPayload.of_hashes([key_hash(c) for c in sa.peer.ca_certs]))
        if msg.exchange == ExchangeType.IKE_AUTH:
            return TaskStatus.SUCCESS
        return TaskStatus.NEED_MORE

    def process(self, msg: Message) -> TaskStatus:
        sa = self.sa
        hashes: list[bytes] = []
        for req in msg.all(CertReqPayload):
            hashes.extend(req.key_hashes)
        if hashes:
            sa.peer_certreq = tuple(dict.fromkeys(sa.peer_certreq + tuple(hashes)))[:MAX_CERTREQ_HASHES]
        if msg.exchange == ExchangeType.IKE_AUTH:
            certs = [c.data for c in msg.all(CertPayload) if c.encoding == CertEncoding.X509_SIGNATURE]
            sa.scratch["peer_certs"] = certs
            return TaskStatus.SUCCESS
        return TaskStatus.NEED_MORE
