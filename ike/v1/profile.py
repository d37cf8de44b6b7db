"""What a ``version = 1`` peer of the daemon's configuration means to the IKEv1 core, and what it cannot mean yet.

Why apart from the loader and the core: the loader (ike.config) refuses an IKEv1 peer the core cannot run, with
the key path, before the daemon binds a socket, and the daemon's IKEv1 manager (ike.v1.manager) turns the same
PeerConfig into the core's V1Config. Both read this one table of what IKEv1 supports here, so they cannot
disagree. Proposals use strongSwan's syntax, as for IKEv2: ``aes128-sha256-modp2048`` (phase 1: cipher, hash,
group) and ``aes128-sha256[-modp2048]`` (quick mode: cipher, integrity, PFS group). ``3des`` (and ``sha1``) are
accepted for the legacy peers IKEv1 serves, but only where a proposal names them: the defaults are AES/SHA-256,
and IKEv2 keeps refusing 3DES (ike.proposal).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable

from ..core_config import ChildConfig, PeerConfig
from . import auth as v1auth
from .session import AES_CBC, ESP_3DES, ESP_AES, ESP_AES_GCM_16, TRIPLE_DES_CBC, V1Config

__all__ = ["V1Proposal", "parse_v1_proposal", "problems", "proposal_text", "v1_config"]

#: CBC cipher tokens -> (key bits, OAKLEY encryption algorithm, ESP transform); 3DES only when named
_CIPHERS = {"aes128": (128, AES_CBC, ESP_AES), "aes192": (192, AES_CBC, ESP_AES),
            "aes256": (256, AES_CBC, ESP_AES), "3des": (192, TRIPLE_DES_CBC, ESP_3DES)}
#: phase-1 hash tokens (strongSwan's) -> hashlib name (ike.v1.keymat.HASHES)
_HASHES = {"sha1": "sha1", "sha256": "sha256", "sha2_256": "sha256", "sha384": "sha384", "sha512": "sha512"}
#: ESP integrity tokens -> IKEv1 authentication algorithm (RFC 2407 4.5; ike.v1.session.ESP_AUTH)
_ESP_AUTH = {"sha1": 2, "sha256": 5, "sha2_256": 5, "sha384": 6, "sha2_384": 6, "sha512": 7, "sha2_512": 7}
#: AEAD ESP ciphers (quick mode only; RFC 4106): token -> key bits. No integrity token follows them.
_ESP_AEAD = {"aes128gcm16": 128, "aes192gcm16": 192, "aes256gcm16": 256, "aes128gcm": 128, "aes256gcm": 256}
_GROUPS = {"modp2048": 14, "modp3072": 15, "modp4096": 16, "modp8192": 18, "ecp256": 19, "ecp384": 20,
           "ecp521": 21}
_PEER_DEFAULT_PROPOSALS = PeerConfig.__dataclass_fields__["ike_proposals"].default
_CHILD_DEFAULT_PROPOSALS = ChildConfig.__dataclass_fields__["esp_proposals"].default
#: what a version = 1 peer uses when its proposals are left unset (the IKEv2 defaults are AEAD, which
#: IKEv1's phase 1 cannot carry)
DEFAULT_IKE = "aes128-sha256-modp2048"
DEFAULT_ESP = "aes128-sha256-modp2048"


class V1Proposal:
    """One parsed proposal: cipher key bits, the hash (phase 1) or ESP auth id (quick mode, "" for AES-GCM), the
    DH group, the ESP transform (AES-CBC, 3DES or AES-GCM-16) and the phase-1 cipher (OAKLEY AES-CBC or 3DES)."""

    def __init__(self, bits: int, hash_name: str, group: int | None, transform: int = ESP_AES,
                 oakley: int = AES_CBC) -> None:
        self.bits, self.hash_name, self.group, self.transform, self.oakley = bits, hash_name, group, transform, oakley

    @property
    def esp_auth(self) -> int:
        return _ESP_AUTH[self.hash_name] if self.hash_name else 0


def parse_v1_proposal(text: str, esp: bool) -> V1Proposal:
    """Raises ValueError naming the token IKEv1 cannot use here."""
    toks = text.strip().lower().split("-")
    if esp and toks and toks[0] in _ESP_AEAD:  # aes128gcm16[-modp2048]: RFC 4106 with IKEv1
        group = None
        if len(toks) > 2:
            raise ValueError(f"{text!r}: an AEAD cipher and one group at most")
        if len(toks) == 2:
            if toks[1] not in _GROUPS:
                raise ValueError(f"{text!r}: unknown DH group {toks[1]!r} (one of {', '.join(_GROUPS)})")
            group = _GROUPS[toks[1]]
        return V1Proposal(_ESP_AEAD[toks[0]], "", group, ESP_AES_GCM_16)
    if not toks or toks[0] not in _CIPHERS:
        aead = ", or aes128gcm16, aes192gcm16, aes256gcm16 for ESP" if esp else ""
        raise ValueError(f"{text!r}: IKEv1 supports aes128, aes192, aes256 (CBC) or 3des (only when named){aead} "
                         "as cipher here")
    bits, oakley, transform = _CIPHERS[toks[0]]
    hashes = _ESP_AUTH if esp else _HASHES
    if len(toks) < 2 or toks[1] not in hashes:
        raise ValueError(f"{text!r}: IKEv1 needs {'an integrity' if esp else 'a hash'} algorithm, one of "
                         f"{', '.join(sorted(hashes))}")
    group = None
    if len(toks) >= 3:
        if toks[2] not in _GROUPS:
            raise ValueError(f"{text!r}: unknown DH group {toks[2]!r} (one of {', '.join(_GROUPS)})")
        group = _GROUPS[toks[2]]
    if len(toks) > 3:
        raise ValueError(f"{text!r}: one cipher, one {'integrity' if esp else 'hash'} and one group at most")
    if not esp and group is None:
        raise ValueError(f"{text!r}: phase 1 needs a DH group")
    return V1Proposal(bits, toks[1], group, transform, oakley)


def _ike_text(peer: PeerConfig) -> str:
    return DEFAULT_IKE if peer.ike_proposals == _PEER_DEFAULT_PROPOSALS else peer.ike_proposals[0]


def _esp_text(child: ChildConfig) -> str:
    return DEFAULT_ESP if child.esp_proposals == _CHILD_DEFAULT_PROPOSALS else child.esp_proposals[0]


def problems(peer: PeerConfig) -> list[tuple[str, str]]:
    """(key path below the peer, reason) for everything of ``peer`` the IKEv1 core cannot do (yet)."""
    out: list[tuple[str, str]] = []
    if peer.auth != peer.remote_auth:
        out.append(("remote_auth", "IKEv1 main mode authenticates both sides the same way (RFC 2409 5): give auth "
                                   "and remote_auth the same method"))
    elif peer.auth == "pubkey" and peer.credential is not None:
        try:
            v1auth.auth_method(peer.credential.private_key)
        except ValueError as exc:
            out.append(("certificate", str(exc)))
    kinds = ("fqdn", "ipv4") if peer.auth == "psk" else ("fqdn", "ipv4", "dn", "email")
    for kind, ident in (("local_id", peer.local_id), ("remote_id", peer.remote_id)):
        if ident is None:
            if kind == "remote_id":
                out.append((kind, "is required for IKEv1 (main mode identifies the peer by it)"))
        elif ident.kind not in kinds:
            out.append((kind, f"IKEv1 identities with {peer.auth} are {', '.join(kinds)} here, not {ident.kind}"))
    if peer.remote_addr and ":" in peer.remote_addr:
        out.append(("remote_addr", "IKEv1 runs over IPv4 only so far"))
    if len(peer.ike_proposals) > 1 and peer.ike_proposals != _PEER_DEFAULT_PROPOSALS:
        out.append(("ike_proposals", "IKEv1 offers one proposal here: give exactly one"))
    try:
        parse_v1_proposal(_ike_text(peer), esp=False)
    except ValueError as exc:
        out.append(("ike_proposals[0]", str(exc)))
    if len(peer.children) != 1:
        out.append(("children", "an IKEv1 peer has exactly one child (one quick mode) so far"))
    for c in peer.children:
        where = f"children.{c.name}"
        if c.mode != "tunnel":
            out.append((f"{where}.mode", "IKEv1 runs tunnel mode only so far"))
        for key, sel in (("local_ts", c.local_ts), ("remote_ts", c.remote_ts)):
            if len(sel) != 1 or sel[0].version != 4 or sel[0].protocol or (sel[0].start_port, sel[0].end_port) \
                    != (0, 65535) or _cidr(sel[0]) is None:
                out.append((f"{where}.{key}", "IKEv1 proxy identities are one IPv4 subnet here (no ports, protocol "
                                              "or ranges)"))
        if len(c.esp_proposals) > 1 and c.esp_proposals != _CHILD_DEFAULT_PROPOSALS:
            out.append((f"{where}.esp_proposals", "IKEv1 offers one proposal here: give exactly one"))
        try:
            parse_v1_proposal(_esp_text(c), esp=True)
        except ValueError as exc:
            out.append((f"{where}.esp_proposals[0]", str(exc)))
    return out


def _cidr(ts) -> str | None:  # type: ignore[no-untyped-def]
    nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)))
    return str(nets[0]) if len(nets) == 1 else None


def proposal_text(peer: PeerConfig) -> str:
    """The phase-1 proposal in strongSwan syntax (what list-sas shows)."""
    return _ike_text(peer)


def _utc(_now: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def signature_auth(peer: PeerConfig, wall_clock: Callable[[float], dt.datetime] | None) -> v1auth.SignatureAuth | None:
    """A ``pubkey`` peer's certificate authentication: the same credential, chain, CAs and validator (CRL, OCSP,
    revocation policy) as the IKEv2 path builds from the configuration."""
    if peer.auth != "pubkey":
        return None
    cred = peer.credential
    assert cred is not None and peer.validator is not None
    return v1auth.SignatureAuth(cred.private_key, cred.certificate, peer.validator, wall_clock or _utc,
                                chain=tuple(cred.intermediates), ca_certs=tuple(peer.ca_certs[:v1auth.MAX_CERTREQ]))


def v1_config(peer: PeerConfig, local: tuple[str, int], remote: tuple[str, int], retransmit_timeout: float,
              child: ChildConfig | None = None, wall_clock: Callable[[float], dt.datetime] | None = None,
              initial_contact: bool = False) -> V1Config:
    """The core's configuration of one ISAKMP SA with ``peer`` between these addresses (as on the wire)."""
    c = child or peer.children[0]
    ike = parse_v1_proposal(_ike_text(peer), esp=False)
    esp = parse_v1_proposal(_esp_text(c), esp=True)
    assert peer.remote_id is not None and ike.group is not None
    return V1Config(
        name=peer.name, psk=peer.psk or b"", signature=signature_auth(peer, wall_clock),
        dpd_delay=peer.dpd_delay, initial_contact=initial_contact, local_id=peer.local_id.value, remote_id=peer.remote_id.value,
        local_ts=_cidr(c.local_ts[0]) or "", remote_ts=_cidr(c.remote_ts[0]) or "", local_addr=local,
        remote_addr=remote, enc_key_bits=ike.bits, enc_alg=ike.oakley, hash=_HASHES[ike.hash_name],
        group=ike.group,
        esp_key_bits=esp.bits, esp_auth=esp.esp_auth, esp_transform=esp.transform, pfs_group=esp.group,
        ike_lifetime=int(peer.rekey_time) or 10800, esp_lifetime=int(c.life_time) or 3600,
        retransmit_timeout=retransmit_timeout, natt=True, encap=peer.encap, aggressive=peer.aggressive,
        esp_life_kb=(c.life_bytes + 1023) // 1024)
