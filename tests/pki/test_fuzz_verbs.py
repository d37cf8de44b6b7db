"""The new verbs' parsers on damaged input: a mutated PKCS#12 file, CA bundle or ca-groups.json gives a PkiError
(one line for the CLI) and leaves the store as it was; nothing else escapes. Budget: ``FUZZ_CASES`` per target in
CI; ``ESPRESSO_FUZZ_EXAMPLES=N`` runs N by hand (``ESPRESSO_FUZZ_SEED`` another seed)."""
from __future__ import annotations

import os
import random
from datetime import datetime, timezone

import pytest

from pki.certs import certificates_to_pem
from pki.errors import PkiError
from pki.keys import generate_private_key, parse_key_spec
from pki.localcert import generate_self_signed, import_pkcs12, load_pkcs12, to_pkcs12
from pki.store import Store
from pki.trust import groups, load_ca_group
from tests.pki.conftest import raw_cert

FUZZ_CASES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "150"))
SEED = int(os.environ.get("ESPRESSO_FUZZ_SEED", "1616"))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(["flip", "byte", "cut", "dup", "insert"])
        pos = rng.randrange(len(b)) if b else 0
        if kind == "flip" and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif kind == "byte" and b:
            b[pos] = rng.choice([0, 0x30, 0x80, 0x81, 0x82, 0xFF, rng.randrange(256)])
        elif kind == "cut":
            del b[pos:pos + rng.randint(1, 64)]
        elif kind == "dup":
            b[pos:pos] = b[pos:pos + rng.randint(1, 64)]
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


@pytest.fixture(scope="module")
def p12() -> bytes:
    key = generate_private_key(parse_key_spec("ecdsa", 256))
    return to_pkcs12("r1", key, raw_cert("CN=r1", key, ca=False), [], b"pw")


def test_mutated_pkcs12(tmp_path, p12):
    rng = random.Random(SEED)
    store = Store(tmp_path / "st")
    imported = 0
    for i in range(FUZZ_CASES):
        data = _mutate(rng, p12)
        try:
            load_pkcs12(data, b"pw")
        except PkiError:
            pass
        try:
            import_pkcs12(store, f"f{i}", data, b"pw")
            imported += 1
        except PkiError:
            assert f"f{i}" not in store.local_ids()  # nothing half-written
    assert len(store.local_ids()) == imported


def test_mutated_bundle_and_groups_file(tmp_path):
    rng = random.Random(SEED + 1)
    keys = [generate_private_key(parse_key_spec("ecdsa", 256)) for _ in range(2)]
    bundle = certificates_to_pem([raw_cert(f"CN=B{i}", k, key_usage={"key_cert_sign": True}) for i, k in enumerate(keys)])
    store = Store(tmp_path / "st")
    load_ca_group(store, "g", bundle)
    good = (tmp_path / "st" / "ca-groups.json").read_bytes()
    for _ in range(FUZZ_CASES):
        try:
            load_ca_group(store, "g", _mutate(rng, bundle))
        except PkiError:
            pass
        (tmp_path / "st" / "ca-groups.json").write_bytes(_mutate(rng, good))
        try:
            groups(store)
            load_ca_group(store, "g", bundle)
        except PkiError:
            pass
        (tmp_path / "st" / "ca-groups.json").write_bytes(good)


def test_self_signed_needs_a_key_and_a_sane_validity(tmp_path):
    store = Store(tmp_path / "st")
    at = datetime.now(timezone.utc)
    with pytest.raises(PkiError):
        generate_self_signed(store, "nokey", "CN=x", at=at)
    store.generate_key_pair("k", "ed25519")
    for days in (0, -1, 10**6):
        with pytest.raises(ValueError):
            generate_self_signed(store, "k", "CN=x", at=at, days=days)
