"""SCEP wire constants (RFC 8894 section 3.2.1), named as the RFC spells them."""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = ["MAX_MESSAGE_SIZE", "Capability", "FailInfo", "MessageType", "Oid", "PkiStatus"]

#: The largest pkiMessage either side accepts (a CSR with a 4096-bit key and a chain is a few KiB).
MAX_MESSAGE_SIZE = 256 * 1024


class MessageType(IntEnum):
    """messageType attribute values (decimal, sent as a PrintableString)."""

    CertRep = 3
    RenewalReq = 17
    PKCSReq = 19
    CertPoll = 20
    GetCert = 21
    GetCRL = 22


class PkiStatus(IntEnum):
    """pkiStatus attribute values."""

    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(IntEnum):
    """failInfo attribute values."""

    badAlg = 0
    badMessageCheck = 1
    badRequest = 2
    badTime = 3
    badCertId = 4

    @property
    def rfc_name(self) -> str:
        return self.name


class Oid(str, Enum):
    """Authenticated attribute OIDs (id-VeriSign pki attributes, plus RFC 8894's failInfoText)."""

    messageType = "2.16.840.1.113733.1.9.2"
    pkiStatus = "2.16.840.1.113733.1.9.3"
    failInfo = "2.16.840.1.113733.1.9.4"
    senderNonce = "2.16.840.1.113733.1.9.5"
    recipientNonce = "2.16.840.1.113733.1.9.6"
    transactionID = "2.16.840.1.113733.1.9.7"
    failInfoText = "1.3.6.1.5.5.7.24.1"


class Capability(str, Enum):
    """GetCACaps keywords (RFC 8894 section 3.5.2)."""

    AES = "AES"
    DES3 = "DES3"
    GetNextCACert = "GetNextCACert"
    POSTPKIOperation = "POSTPKIOperation"
    Renewal = "Renewal"
    SHA1 = "SHA-1"
    SHA256 = "SHA-256"
    SHA384 = "SHA-384"
    SHA512 = "SHA-512"
    SCEPStandard = "SCEPStandard"
