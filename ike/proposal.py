"""strongSwan proposal strings <-> SA payload proposals, algorithm properties, and selection (RFC 7296 2.7).

``aes128gcm16-prfsha256-ecp256`` and ``aes256-sha256-modp2048`` (IKE), ``aes128gcm16-esn`` and
``aes256-sha256-ecp256`` (ESP; a DH group there means PFS on CREATE_CHILD_SA) are accepted. Several
algorithms of one type in one string (``aes128-aes256-sha256-ecp256-modp2048``) make one proposal with
alternatives, as in strongSwan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from .errors import ConfigError, NoProposalChosenError
from .payloads.sa import Proposal, Transform

__all__ = ["parse_proposal", "parse_proposals", "select_proposal", "proposal_name", "esp_suite_name",
           "EncrInfo", "encr_info", "integ_info", "prf_hash", "Proposal", "Transform", "strip_dh"]


@dataclass(frozen=True)
class EncrInfo:
    key_len: int  # bytes, without salt
    salt_len: int
    iv_len: int
    icv_len: int  # AEAD tag; 0 for CBC
    block: int
    aead: bool
    name: str  # strongSwan token


def encr_info(t: Transform) -> EncrInfo:
    bits = t.key_length or 0
    if t.id == EncrId.ENCR_AES_GCM_16:
        _need_bits(bits, (128, 192, 256))
        return EncrInfo(bits // 8, 4, 8, 16, 1, True, f"aes{bits}gcm16")
    if t.id == EncrId.ENCR_AES_CBC:
        _need_bits(bits, (128, 192, 256))
        return EncrInfo(bits // 8, 0, 16, 0, 16, False, f"aes{bits}")
    if t.id == EncrId.ENCR_CHACHA20_POLY1305:
        return EncrInfo(32, 4, 8, 16, 1, True, "chacha20poly1305")
    raise NoProposalChosenError(f"unsupported encryption transform {t.id}")


def _need_bits(bits: int, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise NoProposalChosenError(f"unsupported key length {bits}")


#: integ id -> (hash name, key bytes, ICV bytes, strongSwan token)
_INTEG = {IntegId.AUTH_HMAC_SHA1_96: ("sha1", 20, 12, "sha1"),
          IntegId.AUTH_HMAC_SHA2_256_128: ("sha256", 32, 16, "sha256"),
          IntegId.AUTH_HMAC_SHA2_384_192: ("sha384", 48, 24, "sha384"),
          IntegId.AUTH_HMAC_SHA2_512_256: ("sha512", 64, 32, "sha512")}
_PRF = {PrfId.PRF_HMAC_SHA1: "sha1", PrfId.PRF_HMAC_SHA2_256: "sha256", PrfId.PRF_HMAC_SHA2_384: "sha384",
        PrfId.PRF_HMAC_SHA2_512: "sha512"}


def integ_info(integ_id: int) -> tuple[str, int, int, str]:
    try:
        return _INTEG[IntegId(integ_id)]
    except (KeyError, ValueError):
        raise NoProposalChosenError(f"unsupported integrity transform {integ_id}") from None


def prf_hash(prf_id: int) -> str:
    try:
        return _PRF[PrfId(prf_id)]
    except (KeyError, ValueError):
        raise NoProposalChosenError(f"unsupported PRF {prf_id}") from None


_ENCR_TOKENS: dict[str, Transform] = {}
for _b in (128, 192, 256):
    _ENCR_TOKENS[f"aes{_b}"] = Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, _b)
    _ENCR_TOKENS[f"aes{_b}cbc"] = _ENCR_TOKENS[f"aes{_b}"]
    _ENCR_TOKENS[f"aes{_b}gcm16"] = Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, _b)
    _ENCR_TOKENS[f"aes{_b}gcm"] = _ENCR_TOKENS[f"aes{_b}gcm16"]
    _ENCR_TOKENS[f"aes{_b}gcm128"] = _ENCR_TOKENS[f"aes{_b}gcm16"]
_ENCR_TOKENS["chacha20poly1305"] = Transform(TransformType.ENCR, EncrId.ENCR_CHACHA20_POLY1305)
_INTEG_TOKENS = {"sha1": IntegId.AUTH_HMAC_SHA1_96, "sha256": IntegId.AUTH_HMAC_SHA2_256_128,
                 "sha2_256": IntegId.AUTH_HMAC_SHA2_256_128, "sha384": IntegId.AUTH_HMAC_SHA2_384_192,
                 "sha2_384": IntegId.AUTH_HMAC_SHA2_384_192, "sha512": IntegId.AUTH_HMAC_SHA2_512_256,
                 "sha2_512": IntegId.AUTH_HMAC_SHA2_512_256}
_PRF_TOKENS = {"prfsha1": PrfId.PRF_HMAC_SHA1, "prfsha256": PrfId.PRF_HMAC_SHA2_256,
               "prfsha384": PrfId.PRF_HMAC_SHA2_384, "prfsha512": PrfId.PRF_HMAC_SHA2_512}
_DH_TOKENS = {"modp2048": DhId.MODP_2048, "modp3072": DhId.MODP_3072, "modp4096": DhId.MODP_4096,
              "modp8192": DhId.MODP_8192, "ecp256": DhId.ECP_256,
              "ecp384": DhId.ECP_384, "ecp521": DhId.ECP_521, "curve25519": DhId.CURVE25519,
              "x25519": DhId.CURVE25519}
#: Algorithms strongSwan still parses but that are broken or too weak (RFC 8247 "MUST NOT"/"SHOULD NOT"):
#: named as such rather than as unknown, so an operator copying an old config knows what to change.
_WEAK = frozenset({"modp768", "modp1024", "modp1536", "modp1024s160", "modp2048s224", "modp2048s256", "des",
                   "3des", "cast128", "blowfish128", "md5", "md5_128", "prfmd5", "null"})
_INTEG_TO_PRF = {IntegId.AUTH_HMAC_SHA1_96: PrfId.PRF_HMAC_SHA1,
                 IntegId.AUTH_HMAC_SHA2_256_128: PrfId.PRF_HMAC_SHA2_256,
                 IntegId.AUTH_HMAC_SHA2_384_192: PrfId.PRF_HMAC_SHA2_384,
                 IntegId.AUTH_HMAC_SHA2_512_256: PrfId.PRF_HMAC_SHA2_512}


def parse_proposal(text: str, protocol: int = ProtocolId.IKE, number: int = 1, spi: bytes = b"") -> Proposal:
    """One strongSwan proposal string -> Proposal. Raises ConfigError naming the bad token."""
    encr: list[Transform] = []
    integ: list[Transform] = []
    prf: list[Transform] = []
    dh: list[Transform] = []
    esn: list[Transform] = []
    for tok in text.strip().lower().split("-"):
        if tok in _ENCR_TOKENS:
            encr.append(_ENCR_TOKENS[tok])
        elif tok in _INTEG_TOKENS:
            integ.append(Transform(TransformType.INTEG, _INTEG_TOKENS[tok]))
        elif tok in _PRF_TOKENS:
            prf.append(Transform(TransformType.PRF, _PRF_TOKENS[tok]))
        elif tok in _DH_TOKENS:
            dh.append(Transform(TransformType.DH, _DH_TOKENS[tok]))
        elif tok in ("esn", "noesn"):
            esn.append(Transform(TransformType.ESN, EsnId.ESN if tok == "esn" else EsnId.NO_ESN))
        elif tok in _WEAK:
            raise ConfigError(f"proposal {text!r}: {tok} is weak and not supported")
        else:
            raise ConfigError(f"proposal {text!r}: unknown algorithm {tok!r}")
    if not encr:
        raise ConfigError(f"proposal {text!r}: no encryption algorithm")
    aead = [t for t in encr if t.id != EncrId.ENCR_AES_CBC]
    if aead and len(aead) != len(encr):
        raise ConfigError(f"proposal {text!r}: mixes AEAD and non-AEAD encryption")
    if aead and integ:
        raise ConfigError(f"proposal {text!r}: an AEAD takes no integrity algorithm")
    if not aead and not integ:
        raise ConfigError(f"proposal {text!r}: needs an integrity algorithm")
    if protocol == ProtocolId.IKE:
        if esn:
            raise ConfigError(f"proposal {text!r}: ESN is for ESP proposals")
        if not dh:
            raise ConfigError(f"proposal {text!r}: IKE proposals need a DH group")
        if not prf:
            prf = [Transform(TransformType.PRF, _INTEG_TO_PRF[IntegId(t.id)]) for t in integ] or [
                Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256)]
        transforms = encr + prf + integ + dh
    else:
        if prf:
            raise ConfigError(f"proposal {text!r}: a PRF is for IKE proposals")
        transforms = encr + integ + dh + (esn or [Transform(TransformType.ESN, EsnId.NO_ESN)])
    return Proposal(number, protocol, spi, tuple(dict.fromkeys(transforms)))


def parse_proposals(texts: Iterable[str], protocol: int = ProtocolId.IKE, spi: bytes = b"") -> tuple[Proposal, ...]:
    return tuple(parse_proposal(t, protocol, i + 1, spi) for i, t in enumerate(texts))


def strip_dh(proposals: Sequence[Proposal]) -> tuple[Proposal, ...]:
    """ESP proposals for IKE_AUTH, where no KE is exchanged (RFC 7296 1.2)."""
    return tuple(Proposal(p.number, p.protocol, p.spi, tuple(t for t in p.transforms if t.type != TransformType.DH))
                 for p in proposals)


def _types(p: Proposal) -> set[int]:
    return {t.type for t in p.transforms}


def select_proposal(ours: Sequence[Proposal], theirs: Sequence[Proposal], protocol: int) -> Proposal:
    """The responder's choice: the first of the initiator's proposals (their preference order) that one of ours
    accepts, reduced to one transform per type, keeping their proposal number and SPI."""
    for tp in theirs:
        if tp.protocol != protocol:
            continue
        for op in ours:
            chosen = _match(op, tp)
            if chosen is not None:
                return chosen
    raise NoProposalChosenError("no acceptable proposal")


def _match(ours: Proposal, theirs: Proposal) -> Proposal | None:
    types = _types(ours) | _types(theirs)
    picked: list[Transform] = []
    for ttype in sorted(types):
        mine = set(ours.of_type(ttype))
        theirs_t = theirs.of_type(ttype)
        if ttype == TransformType.DH:  # "no DH" is a NONE transform or none at all
            mine = mine or {Transform(TransformType.DH, 0)}
            theirs_t = theirs_t or (Transform(TransformType.DH, 0),)
        hit = next((t for t in theirs_t if t in mine), None)
        if hit is None:
            return None
        if not (ttype == TransformType.DH and hit.id == 0):
            picked.append(hit)
    return Proposal(theirs.number, theirs.protocol, theirs.spi, tuple(picked))


def check_selected(offered: Sequence[Proposal], selected: Proposal) -> None:
    """The initiator checks that the responder picked one transform of each type from what it offered."""
    for p in offered:
        if p.number != selected.number or p.protocol != selected.protocol:
            continue
        for t in selected.transforms:
            if t not in p.transforms:
                raise NoProposalChosenError(f"responder selected transform {t} we did not offer")
        counts = [t.type for t in selected.transforms]
        if len(counts) != len(set(counts)):
            raise NoProposalChosenError("responder selected more than one transform of a type")
        needed = _types(p) - {TransformType.DH} if TransformType.DH not in _types(selected) else _types(p)
        if not needed <= _types(selected):
            raise NoProposalChosenError("responder's selection misses a transform type")
        return
    raise NoProposalChosenError(f"responder selected proposal {selected.number} we did not offer")


def proposal_name(p: Proposal) -> str:
    """strongSwan-style name of a selected proposal: ``aes128gcm16-prfsha256-ecp256``, ``aes256-sha256-esn``."""
    parts: list[str] = []
    for t in p.transforms:
        if t.type == TransformType.ENCR:
            parts.append(encr_info(t).name)
    for t in p.transforms:
        if t.type == TransformType.INTEG:
            parts.append(integ_info(t.id)[3])
    for t in p.transforms:
        if t.type == TransformType.PRF:
            parts.append("prf" + prf_hash(t.id))
    for t in p.transforms:
        if t.type == TransformType.DH:
            parts.append({v: k for k, v in _DH_TOKENS.items() if k != "x25519"}[DhId(t.id)])
    for t in p.transforms:
        if t.type == TransformType.ESN:
            parts.append("esn" if t.id == EsnId.ESN else "noesn")
    return "-".join(parts)


def esp_suite_name(p: Proposal) -> str:
    """The esp suite token (esp/suites.py naming) of a selected ESP proposal: ``aes128gcm16``, ``aes256-sha256``."""
    e = p.first(TransformType.ENCR)
    if e is None:
        raise NoProposalChosenError("ESP proposal without encryption")
    info = encr_info(e)
    if info.aead:
        return info.name
    i = p.first(TransformType.INTEG)
    if i is None:
        raise NoProposalChosenError("ESP proposal without integrity")
    return f"{info.name}-{integ_info(i.id)[3]}"
