"""The PKI's exceptions: one base, :class:`PkiError`, and a small flat hierarchy under it.

Every user-facing failure (a corrupt file, a wrong passphrase, a forged CSR, a rejected peer certificate) is a
``PkiError`` whose message is one line an operator can act on; the CLI prints it and exits non-zero. Misuse of the
API (wrong types, impossible arguments) stays ``ValueError``/``TypeError``.

:class:`CertificateRejected` is what IKE sees: it carries a :class:`RejectReason` so the caller can map it to a
notify or a log line without parsing text.
"""
from __future__ import annotations

import enum

__all__ = [
    "AlgorithmRefusedError",
    "CaError",
    "CertificateRejected",
    "CorruptInputError",
    "CsrSignatureError",
    "InputError",
    "InputTooLargeError",
    "KeyFileError",
    "PassphraseError",
    "PkiError",
    "ProfileError",
    "RejectReason",
    "RevocationUnavailable",
    "StoreError",
    "SubjectKeyRefusedError",
    "UnknownSerialError",
]


class PkiError(Exception):
    """Base of every error the PKI raises on purpose."""


class InputError(PkiError):
    """Input bytes (a file, a request body) could not be used."""


class CorruptInputError(InputError):
    """PEM/DER that does not parse as what it claims to be."""


class InputTooLargeError(InputError):
    """Input above the bound we accept (see ``pki._files.MAX_INPUT_BYTES``)."""


class PassphraseError(PkiError):
    """A key file is encrypted and the passphrase is missing or wrong."""


class KeyFileError(PkiError):
    """A key file is missing, unreadable or holds something other than a supported private key."""


class CsrSignatureError(PkiError):
    """A PKCS#10 request whose self-signature does not verify: proof of possession failed."""


class AlgorithmRefusedError(PkiError):
    """A key type, key size or signature algorithm the PKI will not use (SCEP answers it with failInfo badAlg)."""


class CaError(PkiError):
    """The CA cannot do what was asked (not initialised, expired, inconsistent directory)."""


class SubjectKeyRefusedError(CaError, AlgorithmRefusedError):
    """The CA will not certify this kind or size of key."""


class UnknownSerialError(CaError):
    """No certificate with that serial was issued by this CA."""


class StoreError(PkiError):
    """The router's certificate store cannot do what was asked (unknown id or profile, duplicate...)."""


class ProfileError(StoreError):
    """A ca-profile is missing or has an invalid setting."""


class RevocationUnavailable(PkiError):
    """A revocation source could not produce an answer (unreachable URL, unparsable CRL)."""


class RejectReason(enum.Enum):
    """Why a peer certificate was refused; one member per distinct check in :mod:`pki.validate`."""

    MALFORMED = "malformed"  # unparsable or unsupported encoding / algorithm
    UNTRUSTED = "untrusted"  # no path to a trust anchor
    BAD_SIGNATURE = "bad-signature"  # a signature in the path does not verify
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    NOT_A_CA = "not-a-ca"  # an issuer without basicConstraints cA=TRUE or keyCertSign
    PATH_LENGTH_EXCEEDED = "path-length-exceeded"
    NAME_CONSTRAINTS = "name-constraints"  # a name outside an issuer's permitted or inside its excluded subtrees
    KEY_USAGE = "key-usage"  # the leaf may not sign (digitalSignature / nonRepudiation absent)
    EXTENDED_KEY_USAGE = "extended-key-usage"  # EKU present and not allowed by policy
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"  # CRL/OCSP unavailable, expired or invalid, and fail-closed
    IDENTITY_MISMATCH = "identity-mismatch"  # IKE ID not in subject DN / SANs
    CHAIN_TOO_LONG = "chain-too-long"


class CertificateRejected(PkiError):
    """A certificate failed validation; ``reason`` says which check, ``detail`` says how."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"certificate rejected ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail
