"""The control socket's replies as text, in the layout of ``swanctl --list-sas`` and ``--list-conns``, for
the CLI and the demo alike (operators compare the two outputs line by line)."""
from __future__ import annotations

import re
from typing import Any

__all__ = ["charon_summary", "format_conns", "format_sas", "swanctl_algorithms"]


def _ago(seconds: Any) -> str:
    return "?" if seconds is None else f"{int(seconds)}s"


_SWANCTL_NAMES = {
    "aes128": "AES_CBC-128", "aes192": "AES_CBC-192", "aes256": "AES_CBC-256",
    "3des": "3DES_CBC",
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
        lines.append(f"{sa['name']}: #{sa['ike_id']}, {sa['state']}, IKEv{sa.get('version', 2)}, "
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
        lines.append(f"{c['name']}: IKEv{c.get('version', 2)}, remote {c['remote_addr'] or '%any'}[{c['remote_port']}], "
                     f"{', '.join(c['ike_proposals'])}")
        lines.append(f"  local:  {c['local_id']} ({c['auth']})")
        lines.append(f"  remote: {c['remote_id'] or '%any'}")
        for ch in c["children"]:
            lines.append(f"  {ch['name']}: {ch['mode'].upper()}, {', '.join(ch['esp_proposals'])}")
            lines.append(f"    local:  {' '.join(ch['local_ts'])}")
            lines.append(f"    remote: {' '.join(ch['remote_ts'])}")
    return "\n".join(lines)


#: charon's short names of IKEv2 payload types (its ``payload_type_short_names``), as in ``parsed ... [ SA KE No ]``.
CHARON_PAYLOADS = {33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH", 40: "No",
                   41: "N", 42: "D", 43: "V", 44: "TSi", 45: "TSr", 46: "E", 47: "CP", 48: "EAP", 49: "GSPM",
                   50: "IDg", 51: "GSA", 52: "KD", 53: "EF"}


def _charon_notify_names() -> dict[int, str]:
    """charon's short notify names (``notify_type_short_names``), e.g. N(NATD_S_IP), N(AUTH_FAILED)."""
    names = {1: "CRIT", 4: "INVAL_IKE_SPI", 5: "INVAL_MAJOR", 7: "INVAL_SYN", 9: "INVAL_MID", 11: "INVAL_SPI",
             13: "ATTR_UNSUP", 14: "NO_PROP", 47: "NO_STATE", 48: "MAX_QUEUE", 8192: "ME_CONN_FAIL",
             12345: "MS_STATUS", 16444: "RES_INFO", 24578: "INITIAL_CONTACT", 36136: "DPD", 36137: "DPD_ACK",
             40501: "UNITY_LB"}
    runs = {
        16: "PLD_MAL INVAL_KE INVAL_ID INVAL_CERTEN INVAL_CERT CERT_UNSUP INVAL_CA INVAL_HASH AUTH_FAILED",
        34: "SINGLE_PAIR NO_ADD_SAS INT_ADDR_FAIL FAIL_CP_REQ TS_UNACCEPT INVAL_SEL UNACCEPT_ADDR UNEXPECT_NAT "
            "ASSIGNED_HoA TEMP_FAIL NO_CHILD_SA",
        16384: "INIT_CONTACT SET_WINSIZE ADD_TS_POSS IPCOMP_SUP NATD_S_IP NATD_D_IP COOKIE USE_TRANSP "
               "HTTP_CERT_LOOK REKEY_SA ESP_TFC_PAD_N NON_FIRST_FRAG MOBIKE_SUP ADD_4_ADDR ADD_6_ADDR NO_ADD_ADDR "
               "UPD_SA_ADDR COOKIE2 NO_NATS AUTH_LFT MULT_AUTH AUTH_FOLLOWS REDIR_SUP REDIR REDIR_FROM TKT_LT_OPAK "
               "TKT_REQ TKT_ACK TKT_NACK TKT_OPAK LINK_ID WESP_MODE ROHC_SUP EAP_ONLY CHDLESS_SUP CRASH_DET "
               "MSG_ID_SYN_SUP RPL_CTR_SYN_SUP MSG_ID_SYN RPL_CTR_SYN SEC_PASSWD PSK_PST PSK_CFM ERX_SUP IFOM_CAP "
               "SENDER_REQ_ID FRAG_SUP HASH_ALG",
        16435: "USE_PPK PPK_ID NO_PPK IKE_INT_SUP",
        16441: "ADD_KE AGGFRAG",
        40961: "BEET_MODE ME_MED ME_EP ME_CB ME_CID ME_CKEY ME_CAUTH ME_R RADIUS",
    }
    for start, run in runs.items():
        names.update({start + i: n for i, n in enumerate(run.split())})
    return names


CHARON_NOTIFIES = _charon_notify_names()


def charon_summary(exchange: str, response: bool, message_id: int, payloads: list[tuple[int, int | None]]) -> str:
    """A message as charon's ``parsed``/``generating`` log line shows it: ``IKE_AUTH request 1 [ IDi N(INIT_CONTACT)
    CERT AUTH ]``. ``payloads`` are (payload type, notify type or None)."""
    names = []
    for ptype, ntype in payloads:
        if ntype is not None:
            names.append(f"N({CHARON_NOTIFIES.get(ntype, ntype)})")
        else:
            names.append(CHARON_PAYLOADS.get(ptype, str(ptype)))
    return f"{exchange} {'response' if response else 'request'} {message_id} [ {' '.join(names)} ]"
