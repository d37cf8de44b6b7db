"""IKEv1 (RFC 2409 over ISAKMP, RFC 2408) beside IKEv2: the wire format and the key schedule.

The first part of issue 17: codecs (message.py), key derivation with phase-1 encryption (keymat.py) and a
sans-I/O session for main mode with a pre-shared key plus quick mode with optional PFS, as initiator
(session.py) and responder (responder.py). Not yet: certificates, informational exchanges, NAT-T, rekeying,
and the daemon wiring (``version = 1``).
"""
from .keymat import Phase1Keys, Phase1Cipher, derive_phase1, hash_i, hash_r, qm_hash1, qm_hash2, qm_hash3, qm_keymat
from .message import (Attribute, IsakmpHeader, Payload, Proposal, SaPayload, Transform, decode_sa, encode_sa,
                      pull_chain, pull_header, push_chain, push_header, pull_message, push_message)

__all__ = ["Attribute", "IsakmpHeader", "Payload", "Proposal", "SaPayload", "Transform", "decode_sa", "encode_sa",
           "pull_chain", "pull_header", "push_chain", "push_header", "pull_message", "push_message",
           "Phase1Keys", "Phase1Cipher", "derive_phase1", "hash_i", "hash_r", "qm_hash1", "qm_hash2", "qm_hash3",
           "qm_keymat"]
