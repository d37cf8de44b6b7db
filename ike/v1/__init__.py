"""IKEv1 (RFC 2409 over ISAKMP, RFC 2408) beside IKEv2: the wire format and the key schedule.

The first part of issue 17: codecs (message.py), key derivation with phase-1 encryption (keymat.py) and a
sans-I/O session for main mode with a pre-shared key plus quick mode with optional PFS, as initiator
(session.py) and responder (responder.py); informational exchanges with DELETE, INITIAL-CONTACT and DPD
(informational.py); lifetimes, RESPONDER-LIFETIME, quick-mode and ISAKMP rekeying, and the driver API with
retransmissions and replay drops (rekey.py). Not yet: certificates, NAT-T, the daemon wiring (``version = 1``).
"""
from .keymat import (
                      Phase1Algorithm,
                      Phase1Cipher,
                      Phase1Keys,
                      derive_phase1,
                      hash_i,
                      hash_r,
                      qm_hash1,
                      qm_hash2,
                      qm_hash3,
                      qm_keymat,
)
from .message import (
                      Attribute,
                      IsakmpHeader,
                      Payload,
                      Proposal,
                      SaPayload,
                      Transform,
                      decode_sa,
                      encode_sa,
                      pull_chain,
                      pull_header,
                      pull_message,
                      push_chain,
                      push_header,
                      push_message,
)

__all__ = [
                      "Attribute",
                      "IsakmpHeader",
                      "Payload",
                      "Phase1Algorithm",
                      "Phase1Cipher",
                      "Phase1Keys",
                      "Proposal",
                      "SaPayload",
                      "Transform",
                      "decode_sa",
                      "derive_phase1",
                      "encode_sa",
                      "hash_i",
                      "hash_r",
                      "pull_chain",
                      "pull_header",
                      "pull_message",
                      "push_chain",
                      "push_header",
                      "push_message",
                      "qm_hash1",
                      "qm_hash2",
                      "qm_hash3",
                      "qm_keymat",
]
