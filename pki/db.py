"""The CA's SQLite database: every certificate issued, its status, and the CRLs signed.

Each change is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): issuing a certificate signs it and records it
inside the same transaction, so after a crash either both happened or neither did (the signed certificate was never
handed out). Serials are stored as lower-case hex text, unique by primary key. The SCEP side keeps its own table
(``scep_transactions``) in the same file, through the CA's :class:`CaDatabase`.

Several processes share one CA database: ``ca serve`` (one or more) and every ``ca ...`` verb run beside it. That is
safe only under these rules, which everything here keeps:

* **Nothing but SQLite opens the file (or its -wal/-shm) in a process that may hold a connection to it.** SQLite
  coordinates processes with POSIX advisory locks, which belong to the process and the file, not to a descriptor:
  closing *any* descriptor of the file, even one opened only to chmod or read it, silently drops every lock the
  process's connections hold (SQLite's "How To Corrupt An SQLite Database File", section 2.2). Another process then
  believes it is the last user, checkpoints and deletes the write-ahead log the first one still appends to, and
  the two diverge: a server's certificates vanish from ``ca list``, a CLI revocation never reaches its OCSP answers,
  and its close writes stale pages back over the others' commits, with ``integrity_check`` still ``ok``. So
  :func:`secure_db_files` works on paths only (``stat``/``chmod``), and creates a missing file with ``O_EXCL``: a
  new inode nobody can hold locks on yet.
* **Every connection is made the same way** (:class:`CaDatabase`): WAL journal, ``synchronous=FULL`` (a commit
  survives SIGKILL and power loss), ``secure_delete`` (replaced request bytes are zeroed, not left in free pages),
  and a busy timeout of :data:`BUSY_TIMEOUT` so that concurrent writers queue instead of failing. One process uses
  one :class:`CaDatabase` per CA file; the SCEP transaction store shares it.
* **Nothing is cached across requests.** A long-running server reads statuses, pending requests, the CA's
  configuration and CRL state from the database on every request, so a verb's commit is seen by the next one.
* **Closing never rewrites anything.** No VACUUM, no write-back of state read earlier, no removal of -wal/-shm by
  hand: SQLite checkpoints on close only when it holds the exclusive lock, i.e. when it really is the last user.
"""
from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from pki.errors import CaError

__all__ = [
    "BUSY_TIMEOUT", "DB_MODE", "SCHEMA_VERSION", "CaDatabase", "CertStatus", "CertificateRecord", "secure_db_files",
]

#: ca.db and its -wal/-shm hold every request the CA saw: readable by the CA's owner only.
DB_MODE = 0o600

#: Seconds a connection waits for another process's write transaction before giving up (SQLite's busy timeout).
#: Transactions here last milliseconds; this covers a second server and a few verbs writing at once on a busy host.
BUSY_TIMEOUT = 30.0

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    not_before  TEXT NOT NULL,
    not_after   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at  TEXT,
    reason      TEXT,
    issued_at   TEXT NOT NULL,
    der         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS crls (
    number      INTEGER PRIMARY KEY,
    this_update TEXT NOT NULL,
    next_update TEXT NOT NULL,
    der         BLOB NOT NULL
);
"""


class CertStatus(str, enum.Enum):
    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"  # never stored: computed by CertificateRecord.status_at


@dataclass(frozen=True)
class CertificateRecord:
    serial: int
    subject: str
    not_before: datetime
    not_after: datetime
    status: CertStatus
    revoked_at: datetime | None
    reason: x509.ReasonFlags | None
    issued_at: datetime
    der: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    def status_at(self, at: datetime) -> CertStatus:
        if self.status is CertStatus.REVOKED:
            return CertStatus.REVOKED
        return CertStatus.EXPIRED if at > self.not_after else CertStatus.VALID


def _ts(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (UTC)")
    return dt.astimezone(timezone.utc).isoformat()


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE write transaction on ``conn``: committed if the body returns, rolled back if it raises.
    Every table of the CA database (issued certificates, SCEP transactions) changes only through this.

    ``BEGIN IMMEDIATE`` takes the write lock up front, waiting up to the busy timeout for another process's
    transaction; a lock still held then is a :class:`CaError` that says so (the CLI prints it, the service answers
    503), never a bare sqlite3 exception."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise CaError("the CA database is busy: another process has held it for writing too long") from None
        raise CaError(f"the CA database cannot be written: {exc}") from None
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CaError(f"the CA database could not commit: {exc}") from None


def secure_db_files(path: str | Path) -> None:
    """Create ``path`` 0600 if missing, and tighten it and its -wal/-shm to 0600 if they exist.

    SQLite creates the -wal and -shm files with the main file's permissions, so a main file that is 0600 from its
    creation keeps them private too; the chmod covers databases written before this rule (or by another tool).
    Only paths are used, never a descriptor of an existing file: closing one would drop the SQLite locks this
    process holds on it (see the module docstring).
    """
    p = Path(path)
    try:
        # O_EXCL: only a file that did not exist is opened, a new inode on which no connection can hold locks
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), DB_MODE)
    except FileExistsError:
        pass
    except OSError:
        return  # sqlite will report the real problem
    else:
        os.close(fd)
    for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"), p.with_name(p.name + "-journal")):
        try:
            if f.stat().st_mode & 0o077:
                os.chmod(f, DB_MODE)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise CaError(f"{f}: readable by others and cannot be made private (chmod 600 it)") from None


class CaDatabase:
    """A thin, transactional wrapper over the CA's SQLite file: the one connection of this process to it."""

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        secure_db_files(self.path)
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=busy_timeout)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise CaError(f"{self.path}: database schema {version}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise CaError(f"{self.path}: not a usable CA database ({exc})") from None

    def close(self) -> None:
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for the other tables of the CA file (SCEP transactions): one per process and file."""
        return self._conn

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction; rolled back if the body raises."""
        return write_transaction(self._conn)

    # -- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, conn: sqlite3.Connection | None = None) -> str | None:
        row = (conn or self._conn).execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str, conn: sqlite3.Connection | None = None) -> None:
        (conn or self._conn).execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- certificates -----------------------------------------------------------------------------------------
    def serial_exists(self, serial: int, conn: sqlite3.Connection | None = None) -> bool:
        row = (conn or self._conn).execute("SELECT 1 FROM certificates WHERE serial = ?", (f"{serial:x}",)).fetchone()
        return row is not None

    def insert_certificate(self, conn: sqlite3.Connection, cert: x509.Certificate, issued_at: datetime) -> None:
        from cryptography.hazmat.primitives import serialization

        conn.execute(
            "INSERT INTO certificates (serial, subject, not_before, not_after, status, issued_at, der)"
            " VALUES (?, ?, ?, ?, 'valid', ?, ?)",
            (
                f"{cert.serial_number:x}",
                cert.subject.rfc4514_string(),
                _ts(cert.not_valid_before_utc),
                _ts(cert.not_valid_after_utc),
                _ts(issued_at),
                cert.public_bytes(serialization.Encoding.DER),
            ),
        )

    def mark_revoked(self, conn: sqlite3.Connection, serial: int, at: datetime, reason: x509.ReasonFlags) -> None:
        conn.execute(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ? WHERE serial = ?",
            (_ts(at), reason.value, f"{serial:x}"),
        )

    def get(self, serial: int, conn: sqlite3.Connection | None = None) -> CertificateRecord | None:
        row = (conn or self._conn).execute(
            "SELECT serial, subject, not_before, not_after, status, revoked_at, reason, issued_at, der"
            " FROM certificates WHERE serial = ?",
            (f"{serial:x}",),
        ).fetchone()
        return None if row is None else self._record(row)

    def records(self) -> list[CertificateRecord]:
        rows = self._conn.execute(
            "SELECT serial, subject, not_before, not_after, status, revoked_at, reason, issued_at, der"
            " FROM certificates ORDER BY issued_at, serial"
        ).fetchall()
        return [self._record(r) for r in rows]

    def revoked(self, conn: sqlite3.Connection | None = None) -> list[CertificateRecord]:
        rows = (conn or self._conn).execute(
            "SELECT serial, subject, not_before, not_after, status, revoked_at, reason, issued_at, der"
            " FROM certificates WHERE status = 'revoked' ORDER BY revoked_at, serial"
        ).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row: tuple) -> CertificateRecord:
        serial, subject, nb, na, status, rat, reason, iat, der = row
        return CertificateRecord(
            serial=int(serial, 16),
            subject=subject,
            not_before=_dt(nb),  # type: ignore[arg-type]
            not_after=_dt(na),  # type: ignore[arg-type]
            status=CertStatus(status),
            revoked_at=_dt(rat),
            reason=None if reason is None else x509.ReasonFlags(reason),
            issued_at=_dt(iat),  # type: ignore[arg-type]
            der=bytes(der),
        )

    # -- CRLs -------------------------------------------------------------------------------------------------
    def latest_crl(self) -> tuple[int, bytes] | None:
        row = self._conn.execute("SELECT number, der FROM crls ORDER BY number DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def next_crl_number(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT MAX(number) FROM crls").fetchone()
        return 1 if row[0] is None else int(row[0]) + 1

    def insert_crl(self, conn: sqlite3.Connection, number: int, crl: x509.CertificateRevocationList) -> None:
        from cryptography.hazmat.primitives import serialization

        conn.execute(
            "INSERT INTO crls (number, this_update, next_update, der) VALUES (?, ?, ?, ?)",
            (number, _ts(crl.last_update_utc), _ts(crl.next_update_utc or crl.last_update_utc),
             crl.public_bytes(serialization.Encoding.DER)),
        )
