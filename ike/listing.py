"""The control socket's replies as text, in the layout of ``swanctl --list-sas`` and ``--list-conns``, for
the CLI and the demo alike (operators compare the two outputs line by line)."""
from __future__ import annotations

import re
from typing import Any

__all__ = ["format_conns", "format_sas", "swanctl_algorithms"]


def _ago(seconds: Any) -> str:
    return "?" if seconds is None else f"{int(seconds)}s"


_SWANCTL_NAMES = {
    "aes128": "AES_CBC-128", "aes192": "AES_CBC-192", "aes256": "AES_CBC-256",
    "aes128ctr": "AES_CTR-128", "aes192ctr": "AES_CTR-192", "aes256ctr": "AES_CTR-256",
    "aes128gmac": "NULL_AES_GMAC-128", "aes192gmac": "NULL_AES_GMAC-192", "aes256gmac": "NULL_AES_GMAC-256",
    "chacha20poly1305": "CHACHA20_POLY1305-256", "null": "NULL",
    "sha1": "HMAC_SHA1_96", "sha256": "HMAC_SHA2_256_128", "sha2_256": "HMAC_SHA2_256_128",
    "sha384": "HMAC_SHA2_384_192", "sha2_384": "HMAC_SHA2_384_192", "sha512": "HMAC_SHA2_512_256",
    "sha2_512": "HMAC_SHA2_512_256",
    "prfsha1": "PRF_HMAC_SHA1", "prfsha256": "PRF_HMAC_SHA2_256", "prfsha384": "PRF_HMAC_SHA2_384",
    "prfsha512": "PRF_HMAC_SHA2_512",
    "modp2048": "MODP_2048", "modp3072": "MODP_3072", "modp4096": "MODP_4096", "modp8192": "MODP_8192",
    "ecp256": "ECP_256",
    "ecp384": "ECP_384", "ecp521": "ECP_521", "curve25519": "CURVE_25519", "x25519": "CURVE_25519",
    "esn": "ESN",
}
_INTEG_PRF = {"sha1": "prfsha1", "sha256": "prfsha256", "sha2_256": "prfsha256", "sha384": "prfsha384",
              "sha2_384": "prfsha384", "sha512": "prfsha512", "sha2_512": "prfsha512"}


def swanctl_algorithms(text: str, ike: bool = False) -> str:
    """A strongSwan proposal string as ``swanctl --list-sas`` shows the negotiated one:
    "aes128gcm16-prfsha256-ecp256" -> "AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256". Unknown tokens pass as is."""
    toks = [t for t in text.lower().split("-") if t and t != "noesn"]
    if ike and not any(t.startswith("prf") for t in toks):  # the PRF is implied by the integrity algorithm
        integ = next((t for t in toks if t in _INTEG_PRF), None)
        if integ is not None:
            toks.insert(toks.index(integ) + 1, _INTEG_PRF[integ])
    out = []
    for t in toks:
        m = re.fullmatch(r"aes(128|192|256)(gcm|ccm)(8|12|16)", t)
        out.append(f"AES_{m.group(2).upper()}_{m.group(3)}-{m.group(1)}" if m else _SWANCTL_NAMES.get(t, t))
    return "/".join(out)


def format_sas(sas: list[dict[str, Any]]) -> str:
    """The ``list-sas`` reply in the layout of ``swanctl --list-sas``."""
    lines: list[str] = []
    for sa in sas:
        mine_i = sa.get("initiator", False)
        lines.append(f"{sa['name']}: #{sa['ike_id']}, {sa['state']}, IKEv2, "
                     f"{sa['spi_i']}_i{'*' if mine_i else ''} {sa['spi_r']}_r{'' if mine_i else '*'}")
        if "local_host" in sa:
            lines.append(f"  local  '{sa['local_id']}' @ {sa['local_host']}[{sa['local_port']}]"
                         + (" [NAT]" if sa.get("nat_local") else ""))
            lines.append(f"  remote '{sa['remote_id']}' @ {sa['remote_host']}[{sa['remote_port']}]"
                         + (" [NAT]" if sa.get("nat_remote") else ""))
            lines.append(f"  {swanctl_algorithms(sa['proposal'], ike=True)}")
            rekey = f", rekeying in {_ago(sa['rekey_in'])}" if sa.get("rekey_in") is not None else ""
            lines.append(f"  established {_ago(sa.get('established'))} ago{rekey}")
        if sa.get("last_error"):
            lines.append(f"  last error: {sa['last_error']}")
        for c in sa.get("child_sas", []):
            mode = c["mode"] + ("-in-UDP" if c.get("encap") else "")
            esn = "/ESN" if c.get("esn") else ""
            reqid = f"reqid {c['reqid']}, " if c.get("reqid") else ""
            lines.append(f"  {c['name']}: #{c.get('unique_id') or sa['ike_id']}, {reqid}{c['state']}, {mode}, "
                         f"ESP:{swanctl_algorithms(c['suite'])}{esn}")
            when = [f"installed {_ago(c['installed'])} ago"]
            if c.get("rekey_in") is not None:
                when.append(f"rekeying in {_ago(c['rekey_in'])}")
            if c.get("life_in") is not None:
                when.append(f"expires in {_ago(c['life_in'])}")
            lines.append("    " + ", ".join(when))
            limits = []
            if c.get("rekey_bytes"):
                limits.append(f"rekey at {c['rekey_bytes']} bytes")
            if c.get("rekey_packets"):
                limits.append(f"rekey at {c['rekey_packets']} packets")
            if limits:
                lines.append("    " + ", ".join(limits))
            lines.append(f"    in  {c['spi_in']}, {c['bytes_in']:>10} bytes, {c['packets_in']:>8} packets"
                         + (f", {c['dropped_in']} dropped" if c.get("dropped_in") else ""))
            lines.append(f"    out {c['spi_out']}, {c['bytes_out']:>10} bytes, {c['packets_out']:>8} packets"
                         + ("" if c.get("outbound_active", True) else " (replaced)"))
            lines.append(f"    local  {' '.join(c['local_ts'])}")
            lines.append(f"    remote {' '.join(c['remote_ts'])}")
    return "\n".join(lines)


def format_conns(conns: list[dict[str, Any]]) -> str:
    lines = []
    for c in conns:
        lines.append(f"{c['name']}: IKEv2, remote {c['remote_addr'] or '%any'}[{c['remote_port']}], "
                     f"{', '.join(c['ike_proposals'])}")
        lines.append(f"  local:  {c['local_id']} ({c['auth']})")
        lines.append(f"  remote: {c['remote_id'] or '%any'}")
        for ch in c["children"]:
            lines.append(f"  {ch['name']}: {ch['mode'].upper()}, {', '.join(ch['esp_proposals'])}")
            lines.append(f"    local:  {' '.join(ch['local_ts'])}")
            lines.append(f"    remote: {' '.join(ch['remote_ts'])}")
    return "\n".join(lines)
