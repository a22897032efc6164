"""The measurement store: one SQLite file of latency results, keyed by device fingerprint, backend,
runtime version, precision, threads and a model or block key.

Why SQLite: several processes (a search and a ``nasctl profile`` beside it, one worker per phone)
append to it at once. WAL journaling plus a busy timeout lets them wait for each other instead of
failing; every write is one transaction, so a killed process leaves either its row or nothing.
Rows are never updated or deleted: a newer measurement of the same key is added, and lookups take
the newest -- except table entries and cached genomes, which are measured once per scope
(:meth:`MeasurementStore.add_missing`), and table builds on one device, which take
:meth:`MeasurementStore.measuring_lock` so that two at once do not measure (and store) everything
twice. A file is only used when it is empty or a nasctl store (its SQLite ``application_id``, or the
tables of a store from before it): another program's database is refused before anything is
written to it. Default location: ``$XDG_CACHE_HOME/nasctl/measurements.sqlite`` (``~/.cache``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ProfilingError
from .result import LatencyResult

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised, add_missing still keeps one row per key
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
# the SQLite header's application id of every store (ASCII "nasM"): a file without it that holds tables
# is another program's (or a store from before the stamp, recognised by its meta table)
APPLICATION_ID = 0x6E61734D

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_fingerprint TEXT NOT NULL,
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    precision TEXT NOT NULL,
    threads INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    p50_ms REAL NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_lookup
    ON measurements (device_fingerprint, backend, runtime_version, precision, threads, kind, key);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_fingerprint TEXT NOT NULL,
    backend TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    precision TEXT NOT NULL,
    threads INTEGER NOT NULL,
    space TEXT NOT NULL,
    fit TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def default_store_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nasctl" / "measurements.sqlite"


class Scope(tuple):
    """(device fingerprint, backend, runtime version, precision, threads): what makes two numbers
    comparable. A table measured under one scope never answers for another."""

    __slots__ = ()

    def __new__(
        cls, device_fingerprint: str, backend: str, runtime_version: str, precision: str, threads: int
    ):
        return super().__new__(cls, (device_fingerprint, backend, runtime_version, precision, int(threads)))

    @classmethod
    def of(cls, result: LatencyResult, precision: str) -> "Scope":
        return cls(
            result.device_fingerprint, result.backend, result.runtime_version, precision, result.threads
        )

    def describe(self) -> str:
        fp, backend, version, precision, threads = self
        return f"{backend} ({version}), {precision}, {threads} thread(s), device {fp}"


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the store in WAL mode, waiting out another process that opens the same new file at once.

    SQLite answers ``PRAGMA journal_mode = WAL`` with "database is locked" at once, without its busy
    handler, while another connection holds a lock it needs (two processes creating one store), so the
    change is retried here until :data:`BUSY_TIMEOUT_S`; a store another process already switched is left
    as it is."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class MeasurementStore:
    """Append-only latency store; open it with :func:`open_store` or as a context manager."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self._conn: sqlite3.Connection | None = None

    # --- opening ---------------------------------------------------------------------------
    def open(self) -> "MeasurementStore":
        """Open the store, creating it when the file is missing or empty.

        Why the order: the file's identity (``PRAGMA application_id``, else the known tables) is read
        before anything is written, so an SQLite file of another program, or one of a newer nasctl, is
        refused with its bytes and journal mode exactly as they were."""
        if self.path.is_dir():
            raise ProfilingError(f"store {str(self.path)!r} is a folder: pass a file path to --store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProfilingError(
                f"cannot create the store's folder {str(self.path.parent)!r}: {e.strerror}; "
                f"pass another --store"
            ) from e
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error(e, "open") from e
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is a nasctl store (read only), then make it one: WAL, tables, identity."""
        try:
            conn.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))  # a setting, not a write
            kind = self._identify(conn)
            _use_wal(conn)
            with _transaction(conn):
                if kind == "new":
                    self._identify(conn)  # again under the write lock: nobody else made it meanwhile
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except sqlite3.DatabaseError as e:
            raise self._error(e, "open") from e

    def _identify(self, conn: sqlite3.Connection) -> str:
        """``new`` (an empty file), ``ours`` (stamped with :data:`APPLICATION_ID`) or ``legacy`` (a
        store of a nasctl from before the stamp: its ``meta`` names a schema version); anything else
        raises, having read and written nothing but the header and the schema."""
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables and "measurements" not in tables):
            what = f"application id {app_id:#x}, " if app_id else ""
            raise ProfilingError(
                f"store {str(self.path)!r} is an SQLite file of another program ({what}tables: "
                f"{', '.join(sorted(tables)) or 'none'}); it was left untouched: pass another --store"
            )
        if not tables:
            return "new"
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else None
        except (sqlite3.DatabaseError, ValueError, TypeError):
            version = None
        if version is None:
            raise ProfilingError(
                f"store {str(self.path)!r} has a measurements table but no nasctl schema version (tables: "
                f"{', '.join(sorted(tables))}): it is not a nasctl store and was left untouched; pass "
                f"another --store"
            )
        if version > SCHEMA_VERSION:
            raise ProfilingError(
                f"store {str(self.path)!r} was written by a newer nasctl (schema {version}): "
                f"upgrade nasctl or pass another --store"
            )
        return "ours" if app_id == APPLICATION_ID else "legacy"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "MeasurementStore":
        return self.open() if self._conn is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    def _error(self, e: sqlite3.Error, what: str) -> ProfilingError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return ProfilingError(
                f"store {str(self.path)!r} is locked by another process (waited "
                f"{BUSY_TIMEOUT_S:.0f} s to {what}): let it finish, or pass another --store"
            )
        if "not a database" in text or "malformed" in text or "file is encrypted" in text:
            return ProfilingError(
                f"store {str(self.path)!r} is not a nasctl measurement store (SQLite says: "
                f"{text}); it was left untouched: pass another --store or move that file away"
            )
        return ProfilingError(f"store {str(self.path)!r}: cannot {what} ({text}); pass another --store")

    # --- writing -----------------------------------------------------------------------------
    def add(self, kind: str, key: str, result: LatencyResult, precision: str) -> None:
        """Append one measurement (one transaction)."""
        self.add_many(kind, [(key, result)], precision)

    def add_many(self, kind: str, rows: list[tuple[str, LatencyResult]], precision: str) -> None:
        """Append every row (one transaction): a newer measurement of a key is added beside the old."""
        self._insert(kind, rows, precision, missing_only=False)

    def add_missing(self, kind: str, rows: list[tuple[str, LatencyResult]], precision: str) -> int:
        """Append the rows whose key this scope does not hold yet (checked and written in one
        transaction) and return how many were added. Why: a table entry or a cached genome is measured
        once per scope; a second build that measured the same keys (another process, a lock the file
        system does not honour) must not double the table."""
        return self._insert(kind, rows, precision, missing_only=True)

    def _insert(
        self, kind: str, rows: list[tuple[str, LatencyResult]], precision: str, missing_only: bool
    ) -> int:
        now = time.time()
        stored = [(key, r, storable(key, r)) for key, r in rows]  # every row checked before any is written
        values = [
            (
                r.device_fingerprint,
                r.device,
                r.backend,
                r.runtime_version,
                precision,
                r.threads,
                kind,
                key,
                r.p50_ms,
                json.dumps(d, allow_nan=False),
                now,
            )
            for key, r, d in stored
        ]
        try:
            with _transaction(self.conn):
                if missing_only:
                    values = [v for v in values if not self._has(v)]
                self.conn.executemany(
                    "INSERT INTO measurements (device_fingerprint, device, backend, runtime_version, "
                    "precision, "
                    "threads, kind, key, p50_ms, result, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    values,
                )
        except sqlite3.Error as e:
            raise self._error(e, "write") from e
        return len(values)

    def _has(self, v: tuple) -> bool:
        """Whether the scope and kind of row ``v`` already hold its key."""
        return (
            self.conn.execute(
                "SELECT 1 FROM measurements WHERE device_fingerprint=? AND backend=? AND runtime_version=? "
                "AND precision=? AND threads=? AND kind=? AND key=? LIMIT 1",
                (v[0], v[2], v[3], v[4], v[5], v[6], v[7]),
            ).fetchone()
            is not None
        )

    def add_calibration(self, scope: Scope, space: str, fit: dict[str, Any]) -> bool:
        """Store a fit unless it is the newest one of ``scope`` and ``space`` already (a repeated build
        of the same table on the same subnets fits the same line); returns whether a row was added."""
        text = json.dumps(fit)
        try:
            with _transaction(self.conn):
                row = self.conn.execute(
                    "SELECT fit FROM calibrations WHERE device_fingerprint=? AND backend=? AND "
                    "runtime_version=? AND precision=? AND threads=? AND space=? ORDER BY id DESC LIMIT 1",
                    (*scope, space),
                ).fetchone()
                if row is not None and json.loads(row[0]) == json.loads(text):
                    return False
                self.conn.execute(
                    "INSERT INTO calibrations (device_fingerprint, backend, runtime_version, precision,"
                    " threads, space, fit, created) VALUES (?,?,?,?,?,?,?,?)",
                    (*scope, space, text, time.time()),
                )
        except sqlite3.Error as e:
            raise self._error(e, "write") from e
        return True

    @contextmanager
    def measuring_lock(self, scope: Scope) -> Iterator[None]:
        """Hold this store's lock for measuring on ``scope``'s device (``flock`` on a hidden sibling
        file named by the device fingerprint), waiting for a holder to finish.

        Why: two table builds on one device at once would each measure every entry (the second
        reads the store before the first wrote it), time each other's load instead of the model, and
        store every row twice. Serialised, the second finds the first's numbers and measures nothing.
        Builds on other devices take other locks and run side by side."""
        real = Path(os.path.realpath(self.path))
        lock = real.with_name(f".{real.name}.{scope[0]}.lock")
        if fcntl is None:
            yield
            return
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ProfilingError(
                f"cannot create the store's lock file {str(lock)!r}: {e.strerror}; pass another --store"
            ) from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(
                    "another nasctl is measuring on device %s into %s: waiting for it to finish "
                    "(what it measures is then reused)",
                    scope[0],
                    self.path,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # --- reading -----------------------------------------------------------------------------
    def latest(self, scope: Scope, kind: str, keys: list[str] | None = None) -> dict[str, LatencyResult]:
        """The newest result per key of ``kind`` under ``scope`` (all keys, or just ``keys``)."""
        sql = (
            "SELECT key, result FROM measurements WHERE device_fingerprint=? AND backend=? AND "
            "runtime_version=? AND precision=? AND threads=? AND kind=? ORDER BY id"
        )
        try:
            rows = self.conn.execute(sql, (*scope, kind)).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, "read") from e
        wanted = None if keys is None else set(keys)
        out: dict[str, LatencyResult] = {}
        for key, text in rows:
            if wanted is None or key in wanted:
                out[key] = LatencyResult.from_dict(json.loads(text))
        return out

    def latest_calibration(self, scope: Scope, space: str) -> dict[str, Any] | None:
        try:
            row = self.conn.execute(
                "SELECT fit FROM calibrations WHERE device_fingerprint=? AND backend=? AND "
                "runtime_version=? AND precision=? AND threads=? AND space=? ORDER BY id DESC "
                "LIMIT 1",
                (*scope, space),
            ).fetchone()
        except sqlite3.Error as e:
            raise self._error(e, "read") from e
        return json.loads(row[0]) if row else None

    def scopes(self, kind: str | None = None) -> list[tuple[Scope, str, int]]:
        """(scope, device name, rows) for every scope that has measurements (of ``kind``)."""
        sql = (
            "SELECT device_fingerprint, backend, runtime_version, precision, threads, MAX(device), COUNT(*) "
            "FROM measurements "
            + ("WHERE kind=? " if kind else "")
            + "GROUP BY device_fingerprint, backend, runtime_version, precision, threads"
        )
        try:
            rows = self.conn.execute(sql, (kind,) if kind else ()).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, "read") from e
        return [(Scope(*r[:5]), r[5], int(r[6])) for r in rows]

    def count(self) -> int:
        try:
            return int(self.conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
        except sqlite3.Error as e:
            raise self._error(e, "read") from e


LATENCY_FIELDS = ("mean_ms", "p50_ms", "p90_ms", "std_ms", "min_ms")


def storable(key: str, result: LatencyResult) -> dict[str, Any]:
    """``result`` as the store keeps it. Why: a nan in the store reads back as a latency, and every
    table sum, fit and search objective it touches turns nan with it. A result whose latency is not a
    finite number was not measured: it is refused (one line, nothing stored); any other number that
    could not be measured (a phone's warm-up average, a drift) is stored as absent (null), never nan."""
    for name in LATENCY_FIELDS:
        value = getattr(result, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfilingError(
                f"the measurement of {result.model_path or key!r} has {name} = {value}: it could not be "
                f"made, so nothing was stored; measure it again (with -v for the runtime's output)"
            )
    return finite_or_none(result.to_dict())


def finite_or_none(value: Any) -> Any:
    """``value`` with every nan / inf float, at any depth of dicts and lists, made None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front (waiting up to the busy timeout)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_store(path: str | os.PathLike | None = None) -> MeasurementStore:
    """Open (creating if needed) the store at ``path`` (default: the user's cache directory)."""
    return MeasurementStore(path).open()
