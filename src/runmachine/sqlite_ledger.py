"""``SQLiteLedger``: the durable tool ledger, one SQLite file shared by processes.

Built on the standard library's ``sqlite3``. The file is in WAL mode, carries an application id
(so a foreign SQLite file is never mistaken for a ledger) and a schema version (``user_version``),
checked on open: a file written by a newer runmachine, a corrupt file, or a SQLite file that is not
a ledger is refused with :class:`~runmachine.ledger.LedgerError`, and is never written to.

Every write is one ``BEGIN IMMEDIATE`` transaction, committed before the coroutine returns, run in
a worker thread so the event loop never waits on the disk. With the default ``synchronous="FULL"``
a committed record survives a process crash and a power cut; ``"NORMAL"`` keeps it across process
crashes only, and is faster. Processes share the file through SQLite's own locking, waiting up to
``timeout`` seconds for one another.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import anyio.to_thread

from runmachine.ledger import CallEntry, LedgerError, RoundEntry, RunEntry

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a ledger file: "rmLG".
APPLICATION_ID = 0x726D4C47

_SCHEMA = """
CREATE TABLE runs (
    run_id     TEXT PRIMARY KEY,
    thread_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    machine    TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE calls (
    run_id      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    round       INTEGER NOT NULL,
    name        TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    started_at  REAL,
    finished_at REAL,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, call_id)
);
CREATE TABLE rounds (
    run_id       TEXT NOT NULL,
    round        INTEGER NOT NULL,
    call_ids     TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    accepted_at  REAL,
    PRIMARY KEY (run_id, round)
);
"""

#: Migrations from version N to N + 1, run in order on open. Empty while there is one version.
_MIGRATIONS: dict[int, str] = {}

_HEADER = b"SQLite format 3\x00"

T = TypeVar("T")


class SQLiteLedger:
    """A ledger in a SQLite file: ``RunMachine(client, ledger=SQLiteLedger("runs.db"))``.

    Opening checks the file and creates the schema if the file is new; it raises
    :class:`~runmachine.ledger.LedgerError` for a file it must not use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self._check_header()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        try:
            self._open(synchronous)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(
                f"{self.path} is not a usable runmachine ledger ({exc}); it was left untouched"
            ) from exc
        except LedgerError:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    # ----------------------------------------------------------------------------------------
    # Opening: header, application id, schema version, migrations
    # ----------------------------------------------------------------------------------------

    def _check_header(self) -> None:
        try:
            with self.path.open("rb") as f:
                header = f.read(len(_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {self.path}: {exc}") from exc
        if header and header != _HEADER:
            raise LedgerError(
                f"{self.path} is not a SQLite file (corrupt, or something else); "
                "it was left untouched"
            )

    def _open(self, synchronous: str) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if app_id == 0 and version == 0 and not tables:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have created it meanwhile.
                if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                    _script(db, _SCHEMA)
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            app_id, version = APPLICATION_ID, SCHEMA_VERSION
        if app_id != APPLICATION_ID:
            raise LedgerError(
                f"{self.path} is a SQLite file but not a runmachine ledger "
                f"(application_id {app_id:#x}, tables {sorted(tables)}); it was left untouched"
            )
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than this runmachine "
                f"understands ({SCHEMA_VERSION}); upgrade runmachine to use it. "
                "The file was left untouched"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)
        problems = [r[0] for r in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise LedgerError(
                f"ledger {self.path} is corrupt ({'; '.join(problems[:3])}); it was left untouched"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")

    def _migrate(self, version: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            while current < SCHEMA_VERSION:
                if current not in _MIGRATIONS:
                    raise LedgerError(
                        f"ledger {self.path} has schema version {current}, which this runmachine "
                        "cannot migrate; the file was left untouched"
                    )
                _script(db, _MIGRATIONS[current])
                current += 1
                db.execute(f"PRAGMA user_version = {current}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------------------------
    # The worker thread
    # ----------------------------------------------------------------------------------------

    def _call(self, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                value = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return value

    async def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        # Not abandoned on cancel: a write either commits or fails before the caller goes on.
        await anyio.to_thread.run_sync(self._call, work, True)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._call, work, False)

    def close(self) -> None:
        """Close the file. The ledger cannot be used afterwards."""
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------------------------------
    # The Ledger protocol
    # ----------------------------------------------------------------------------------------

    async def record_run(self, run_id: str, thread_id: str, status: str, machine: str) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "thread_id = CASE WHEN excluded.thread_id = '' THEN thread_id "
                "ELSE excluded.thread_id END, status = excluded.status, "
                "machine = CASE WHEN excluded.machine = '' THEN machine ELSE excluded.machine END,"
                " updated_at = excluded.updated_at",
                (run_id, thread_id, status, machine, now, now),
            )
        )

    async def call_started(
        self, run_id: str, call_id: str, round: int, name: str, arguments: str
    ) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO calls (run_id, call_id, round, name, arguments, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, call_id) DO UPDATE SET "
                "started_at = excluded.started_at WHERE output IS NULL",
                (run_id, call_id, round, name, arguments, now),
            )
        )

    async def call_finished(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        output: str,
        error: str | None,
    ) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO calls VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?) "
                "ON CONFLICT (run_id, call_id) DO UPDATE SET finished_at = excluded.finished_at,"
                " output = excluded.output, error = excluded.error WHERE output IS NULL",
                (run_id, call_id, round, name, arguments, now, output, error),
            )
        )

    async def round_submitted(self, run_id: str, round: int, call_ids: frozenset[str]) -> None:
        now = time.time()
        ids = json.dumps(sorted(call_ids))
        await self._write(
            lambda db: db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING",
                (run_id, round, ids, now),
            )
        )

    async def round_accepted(self, run_id: str, round: int) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "UPDATE rounds SET accepted_at = ? "
                "WHERE run_id = ? AND round = ? AND accepted_at IS NULL",
                (now, run_id, round),
            )
        )

    async def load(self, run_id: str) -> RunEntry | None:
        return await self._read(lambda db: _load(db, run_id))

    async def runs(self) -> list[RunEntry]:
        def everything(db: sqlite3.Connection) -> list[RunEntry]:
            ids = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY created_at, rowid")]
            return [e for e in (_load(db, i) for i in ids) if e is not None]

        return await self._read(everything)


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run statements inside the open transaction (``executescript`` would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _load(db: sqlite3.Connection, run_id: str) -> RunEntry | None:
    row = db.execute(
        "SELECT run_id, thread_id, status, machine, created_at, updated_at FROM runs "
        "WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    calls = {
        r[1]: CallEntry(*r)
        for r in db.execute(
            "SELECT run_id, call_id, round, name, arguments, started_at, finished_at, output, "
            "error FROM calls WHERE run_id = ? ORDER BY round, rowid",
            (run_id,),
        )
    }
    rounds = tuple(
        RoundEntry(r[0], r[1], frozenset(json.loads(r[2])), r[3], r[4])
        for r in db.execute(
            "SELECT run_id, round, call_ids, submitted_at, accepted_at FROM rounds "
            "WHERE run_id = ? ORDER BY round",
            (run_id,),
        )
    )
    run, thread, status, machine, created, updated = row
    return RunEntry(run, thread, status, machine, created, updated, calls=calls, rounds=rounds)
