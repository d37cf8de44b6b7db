"""Every encryption and authentication row of Wireshark 4.0's esp_sa table, as suites the capture tools run.

A data plane may refuse to negotiate DES, MD5 or encryption without integrity (esp.suites, and IKE's
proposals, stay as strict as they are: nothing here is in ``esp.suites.SUITES`` or reachable by
``esp.suites.parse_suite``); a tool that reads captures must still decrypt what people captured. Each row
becomes either

- a :class:`esp.suites.Suite` the compiled core runs (NULL, AES-CBC and AES-CTR with no integrity or with
  HMAC-SHA-1/256/384/512 at any of Wireshark's truncations, AES-GCM): the same batch path as the data plane's
  suites; or
- a :class:`SoftSuite`, run one packet at a time by :mod:`esp.pcap.soft` with the ``cryptography`` library
  (TripleDES, DES, Blowfish, CAST5, HMAC-MD5-96, HMAC-RIPEMD-160-96, "ANY n bit authentication [no
  checking]", and AES with one of those).

Names in TOML SA files follow strongSwan's proposal keywords: ``<cipher>-<integrity>`` with cipher ``null``,
``aes128``..``aes256`` (CBC), ``aes128ctr``..``aes256ctr``, ``3des``, ``des``, ``blowfish128``, ``cast128``,
and integrity ``none``, ``sha1``, ``sha256_96``, ``sha256``, ``sha384``, ``sha512``, ``md5``, ``ripemd160``,
or ``any64``..``any256`` (an ICV of that many bits that is not checked, as Wireshark's "ANY" rows).
"""
from __future__ import annotations

from dataclasses import dataclass

from esp.pcap.soft_suite import SoftSuite
from esp.suites import SUITES, Cipher, Integ, Suite, parse_suite

__all__ = ["SoftSuite", "CaptureSuite", "parse_capture_suite", "wireshark_row", "wireshark_names",
           "WIRESHARK_ENCRYPTION", "WIRESHARK_AUTHENTICATION", "check_available"]


# -- Wireshark's spelling (packet-ipsec.c's esp_encryption_type_vals / esp_authentication_type_vals, 4.0) -------

ENC_NULL = "NULL"
ENC_3DES = "TripleDES-CBC [RFC2451]"
ENC_AES_CBC = "AES-CBC [RFC3602]"
ENC_AES_CTR = "AES-CTR [RFC3686]"
ENC_DES = "DES-CBC [RFC2405]"
ENC_CAST5 = "CAST5-CBC [RFC2144]"
ENC_BLOWFISH = "BLOWFISH-CBC [RFC2451]"
ENC_TWOFISH = "TWOFISH-CBC"
ENC_AES_GCM = "AES-GCM [RFC4106]"  # deprecated in Wireshark: 16-octet ICV
ENC_AES_GCM_8 = "AES-GCM with 8 octet ICV [RFC4106]"
ENC_AES_GCM_12 = "AES-GCM with 12 octet ICV [RFC4106]"
ENC_AES_GCM_16 = "AES-GCM with 16 octet ICV [RFC4106]"
WIRESHARK_ENCRYPTION = (ENC_NULL, ENC_3DES, ENC_AES_CBC, ENC_AES_CTR, ENC_DES, ENC_CAST5, ENC_BLOWFISH, ENC_TWOFISH,
                        ENC_AES_GCM, ENC_AES_GCM_8, ENC_AES_GCM_12, ENC_AES_GCM_16)
AUTH_NULL = "NULL"
WIRESHARK_AUTHENTICATION = (
    AUTH_NULL, "HMAC-SHA-1-96 [RFC2404]", "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    "HMAC-SHA-256-128 [RFC4868]", "HMAC-SHA-384-192 [RFC4868]", "HMAC-SHA-512-256 [RFC4868]",
    "HMAC-MD5-96 [RFC2403]", "MAC-RIPEMD-160-96 [RFC2857]", "ANY 64 bit authentication [no checking]",
    "ANY 96 bit authentication [no checking]", "ANY 128 bit authentication [no checking]",
    "ANY 192 bit authentication [no checking]", "ANY 256 bit authentication [no checking]",
)
_WS_GCM_ICV = {ENC_AES_GCM: 16, ENC_AES_GCM_8: 8, ENC_AES_GCM_12: 12, ENC_AES_GCM_16: 16}


@dataclass(frozen=True)
class _Enc:
    ws: str
    family: str           # what esp.pcap.soft computes: null, aes-cbc, aes-ctr, 3des-cbc, des-cbc, ...
    keys: dict[int, str]  # key bytes (salt included) -> TOML token
    iv_len: int
    align: int
    salt_len: int = 0


_ENCS = (
    _Enc(ENC_NULL, "null", {0: "null"}, 0, 4),
    _Enc(ENC_AES_CBC, "aes-cbc", {16: "aes128", 24: "aes192", 32: "aes256"}, 16, 16),
    _Enc(ENC_AES_CTR, "aes-ctr", {20: "aes128ctr", 28: "aes192ctr", 36: "aes256ctr"}, 8, 4, 4),
    _Enc(ENC_3DES, "3des-cbc", {24: "3des"}, 8, 8),
    _Enc(ENC_DES, "des-cbc", {8: "des"}, 8, 8),
    _Enc(ENC_CAST5, "cast5-cbc", {16: "cast128"}, 8, 8),        # Wireshark takes 128-bit CAST5 keys only
    _Enc(ENC_BLOWFISH, "blowfish-cbc", {16: "blowfish128"}, 8, 8),  # and 128-bit Blowfish keys only
    _Enc(ENC_TWOFISH, "twofish-cbc", {16: "twofish128", 32: "twofish256"}, 16, 16),
)
_ENC_BY_WS = {e.ws: e for e in _ENCS}
_ENC_BY_TOKEN = {tok: (e, klen) for e in _ENCS for klen, tok in e.keys.items()}


@dataclass(frozen=True)
class _Auth:
    ws: str
    token: str
    family: str        # none, sha1, sha256, sha384, sha512, md5, ripemd160, any
    icv_len: int
    key_len: int | None  # None: any length (the ANY rows ignore the key)


_AUTHS = (
    _Auth(AUTH_NULL, "none", "none", 0, 0),
    _Auth("HMAC-SHA-1-96 [RFC2404]", "sha1", "sha1", 12, 20),
    _Auth("HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]", "sha256_96", "sha256", 12, 32),
    _Auth("HMAC-SHA-256-128 [RFC4868]", "sha256", "sha256", 16, 32),
    _Auth("HMAC-SHA-384-192 [RFC4868]", "sha384", "sha384", 24, 48),
    _Auth("HMAC-SHA-512-256 [RFC4868]", "sha512", "sha512", 32, 64),
    _Auth("HMAC-MD5-96 [RFC2403]", "md5", "md5", 12, 16),
    _Auth("MAC-RIPEMD-160-96 [RFC2857]", "ripemd160", "ripemd160", 12, 20),
) + tuple(_Auth(f"ANY {b} bit authentication [no checking]", f"any{b}", "any", b // 8, None)
          for b in (64, 96, 128, 192, 256))
_AUTH_BY_WS = {a.ws: a for a in _AUTHS}
_AUTH_BY_TOKEN = {a.token: a for a in _AUTHS}
_AUTH_ALIASES = {"sha1_96": "sha1", "sha256_128": "sha256", "sha384_192": "sha384", "sha512_256": "sha512",
                 "md5_96": "md5", "ripemd160_96": "ripemd160", "hmac_md5": "md5"}
_ENC_ALIASES = {"aes128cbc": "aes128", "aes192cbc": "aes192", "aes256cbc": "aes256", "cast5": "cast128",
                "blowfish": "blowfish128", "3descbc": "3des", "tripledes": "3des"}
#: The core's integrity algorithm for each HMAC family it computes (truncation is the suite's ICV length).
_CORE_INTEG = {"none": Integ.NONE, "sha1": Integ.HMAC_SHA1_96, "sha256": Integ.HMAC_SHA256_128,
               "sha384": Integ.HMAC_SHA384_192, "sha512": Integ.HMAC_SHA512_256}
_CORE_CIPHER = {"null": (Cipher.NULL, 11), "aes-cbc": (Cipher.AES_CBC, 12), "aes-ctr": (Cipher.AES_CTR, 13),
                "3des-cbc": (Cipher.TRIPLEDES_CBC, 3)}
_CORE_FAMILY = {cipher: family for family, (cipher, _) in _CORE_CIPHER.items()}


CaptureSuite = Suite | SoftSuite


def _build(enc: _Enc, klen: int, auth: _Auth) -> CaptureSuite:
    name = f"{enc.keys[klen]}-{auth.token}"
    if enc.family in _CORE_CIPHER and auth.family in _CORE_INTEG:
        if name in SUITES:
            return SUITES[name]
        cipher, encr_id = _CORE_CIPHER[enc.family]
        integ = _CORE_INTEG[auth.family]
        return Suite(name, cipher, klen - enc.salt_len, enc.salt_len, enc.iv_len, auth.icv_len, enc.align, integ,
                     encr_id, None)
    return SoftSuite(name, enc.family, klen - enc.salt_len, enc.salt_len, enc.iv_len, enc.align, auth.family,
                     auth.icv_len, auth.key_len)


def wireshark_row(enc_ws: str, enc_key_len: int, auth_ws: str) -> CaptureSuite:
    """The suite of one esp_sa row (Wireshark's strings). ValueError for what Wireshark itself refuses or does
    not know; :class:`RowUnavailable` for a row this machine cannot compute."""
    if auth_ws not in _AUTH_BY_WS:
        raise ValueError(f"unknown authentication algorithm {auth_ws!r}; Wireshark's names are: "
                         + ", ".join(WIRESHARK_AUTHENTICATION))
    auth = _AUTH_BY_WS[auth_ws]
    if enc_ws in _WS_GCM_ICV:
        if auth.family != "none":
            raise ValueError(f"{enc_ws} is an AEAD: authentication must be NULL, not {auth_ws!r}")
        bits = {20: 128, 28: 192, 36: 256}.get(enc_key_len)
        if bits is None:
            raise ValueError(f"{enc_ws} key is {enc_key_len} bytes; it must be 20, 28 or 36 (AES key + 4-byte salt)")
        return parse_suite(f"aes{bits}gcm{_WS_GCM_ICV[enc_ws]}")
    if enc_ws not in _ENC_BY_WS:
        raise ValueError(f"unknown encryption algorithm {enc_ws!r}; Wireshark's names are: "
                         + ", ".join(WIRESHARK_ENCRYPTION))
    enc = _ENC_BY_WS[enc_ws]
    if enc_key_len not in enc.keys:
        extra = " (key + 4-byte nonce)" if enc.salt_len else ""
        sizes = [str(k) for k in sorted(enc.keys)]
        allowed = sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " or " + sizes[-1]
        raise ValueError(f"{enc_ws} key is {enc_key_len} bytes; it must be {allowed}{extra}")
    suite = _build(enc, enc_key_len, auth)
    check_available(suite)
    return suite


def parse_capture_suite(token: str | CaptureSuite) -> CaptureSuite:
    """A suite from a TOML SA file: every name ``esp.suites.parse_suite`` knows, and the capture-only rows
    (module docstring)."""
    if isinstance(token, (Suite, SoftSuite)):
        return token
    try:
        return parse_suite(token)
    except ValueError as exc:
        strict = exc
    t = token.strip().lower()
    enc_t, sep, auth_t = t.partition("-")
    enc_t = _ENC_ALIASES.get(enc_t, enc_t)
    auth_t = _AUTH_ALIASES.get(auth_t, auth_t)
    if not sep or enc_t not in _ENC_BY_TOKEN or auth_t not in _AUTH_BY_TOKEN:
        raise ValueError(f"{strict}; capture files also take <cipher>-<integrity> with cipher one of "
                         f"{', '.join(sorted(_ENC_BY_TOKEN))} and integrity one of {', '.join(_AUTH_BY_TOKEN)}"
                         ) from None
    enc, klen = _ENC_BY_TOKEN[enc_t]
    suite = _build(enc, klen, _AUTH_BY_TOKEN[auth_t])
    check_available(suite)
    return suite


def wireshark_names(suite: CaptureSuite) -> tuple[str, str]:
    """(encryption, authentication) as Wireshark 4.0's esp_sa table spells them; ValueError where it has none."""
    if isinstance(suite, Suite):
        if suite.cipher is Cipher.AES_GCM:
            return {8: ENC_AES_GCM_8, 12: ENC_AES_GCM_12, 16: ENC_AES_GCM_16}[suite.icv_len], AUTH_NULL
        fam = _CORE_FAMILY.get(suite.cipher)
        auth_fam = {v: k for k, v in _CORE_INTEG.items()}.get(suite.integ)
        klen, icv = suite.enc_keymat_len, suite.icv_len
    else:
        fam, auth_fam, klen, icv = suite.enc, suite.auth, suite.enc_keymat_len, suite.icv_len
    enc = next((e for e in _ENCS if e.family == fam and klen in e.keys), None)
    auth = next((a for a in _AUTHS if a.family == auth_fam and a.icv_len == icv), None)
    if enc is None or auth is None:
        raise ValueError(f"Wireshark 4.0 cannot decrypt {suite.name}: no esp_sa spelling for it")
    return enc.ws, auth.ws


def is_compiled(suite: CaptureSuite) -> bool:
    return isinstance(suite, Suite)


def check_available(suite: CaptureSuite) -> None:
    """RowUnavailable, saying why, for a row whose cipher or hash this machine's libraries do not have."""
    if not isinstance(suite, SoftSuite):
        return
    from esp.pcap import soft  # late: cryptography is needed only for these rows
    soft.check_available(suite)

