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
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal, TypeVar

import anyio.to_thread

from runmachine import lifecycle
from runmachine.errors import RunHeld
from runmachine.ledger import (
    FINISHED,
    CallEntry,
    Claim,
    Lease,
    LedgerError,
    RoundEntry,
    RunEntry,
    check_fence,
)

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

SCHEMA_VERSION = 2
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

#: Version 2: leases (one holder drives a run at a time) and their audit.
_LEASES = """
CREATE TABLE leases (
    run_id     TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE claims (
    run_id      TEXT NOT NULL,
    holder      TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    claimed_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    released_at REAL,
    PRIMARY KEY (run_id, epoch)
);
"""
_SCHEMA += _LEASES

#: Migrations from version N to N + 1, run in order on open.
_MIGRATIONS: dict[int, str] = {1: _LEASES}

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

    async def _write(
        self,
        work: Callable[[sqlite3.Connection], object],
        run_id: str = "",
        lease: Lease | None = None,
    ) -> None:
        """One write transaction; with ``lease``, refused (``LeaseLost``) unless that lease is
        still the run's, checked in the same transaction."""

        def fenced(db: sqlite3.Connection) -> object:
            if lease is not None:
                check_fence(run_id, lease, _lease(db, run_id))
            return work(db)

        # Not abandoned on cancel: a write either commits or fails before the caller goes on.
        await anyio.to_thread.run_sync(self._call, fenced, True)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._call, work, False)

    def close(self) -> None:
        """Close the file. The ledger cannot be used afterwards."""
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------------------------------
    # The Ledger protocol
    # ----------------------------------------------------------------------------------------

    async def record_run(
        self, run_id: str, thread_id: str, status: str, machine: str, *, lease: Lease | None = None
    ) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "thread_id = CASE WHEN excluded.thread_id = '' THEN thread_id "
                "ELSE excluded.thread_id END, status = excluded.status, "
                "machine = CASE WHEN excluded.machine = '' THEN machine ELSE excluded.machine END,"
                " updated_at = excluded.updated_at",
                (run_id, thread_id, status, machine, now, now),
            ),
            run_id,
            lease,
        )

    async def call_started(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        *,
        lease: Lease | None = None,
    ) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO calls (run_id, call_id, round, name, arguments, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, call_id) DO UPDATE SET "
                "started_at = excluded.started_at WHERE output IS NULL",
                (run_id, call_id, round, name, arguments, now),
            ),
            run_id,
            lease,
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
        *,
        lease: Lease | None = None,
    ) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "INSERT INTO calls VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?) "
                "ON CONFLICT (run_id, call_id) DO UPDATE SET finished_at = excluded.finished_at,"
                " output = excluded.output, error = excluded.error WHERE output IS NULL",
                (run_id, call_id, round, name, arguments, now, output, error),
            ),
            run_id,
            lease,
        )

    async def round_submitted(
        self, run_id: str, round: int, call_ids: frozenset[str], *, lease: Lease | None = None
    ) -> None:
        now = time.time()
        ids = json.dumps(sorted(call_ids))
        await self._write(
            lambda db: db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING",
                (run_id, round, ids, now),
            ),
            run_id,
            lease,
        )

    async def round_accepted(self, run_id: str, round: int, *, lease: Lease | None = None) -> None:
        now = time.time()
        await self._write(
            lambda db: db.execute(
                "UPDATE rounds SET accepted_at = ? "
                "WHERE run_id = ? AND round = ? AND accepted_at IS NULL",
                (now, run_id, round),
            ),
            run_id,
            lease,
        )

    async def load(self, run_id: str) -> RunEntry | None:
        return await self._read(lambda db: _load(db, run_id))

    async def runs(self) -> list[RunEntry]:
        def everything(db: sqlite3.Connection) -> list[RunEntry]:
            ids = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY created_at, rowid")]
            return [e for e in (_load(db, i) for i in ids) if e is not None]

        return await self._read(everything)

    # ----------------------------------------------------------------------------------------
    # Leases
    # ----------------------------------------------------------------------------------------

    async def _leased(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._call, work, True)

    async def claim(
        self, run_id: str, holder: str, ttl: float, *, thread_id: str = "", machine: str = ""
    ) -> Lease:
        def take(db: sqlite3.Connection) -> Lease:
            lease = _take(db, run_id, holder, ttl)
            now = time.time()
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "thread_id = CASE WHEN excluded.thread_id = '' THEN thread_id "
                "ELSE excluded.thread_id END, "
                "machine = CASE WHEN excluded.machine = '' THEN machine ELSE excluded.machine END",
                (run_id, thread_id, lifecycle.INITIAL_STATE, machine, now, now),
            )
            return lease

        return await self._leased(take)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        def extend(db: sqlite3.Connection) -> Lease:
            check_fence(lease.run_id, lease, _lease(db, lease.run_id))
            until = time.time() + ttl
            db.execute("UPDATE leases SET expires_at = ? WHERE run_id = ?", (until, lease.run_id))
            db.execute(
                "UPDATE claims SET expires_at = ? WHERE run_id = ? AND epoch = ?",
                (until, lease.run_id, lease.epoch),
            )
            return Lease(lease.run_id, lease.holder, lease.epoch, until)

        return await self._leased(extend)

    async def release(self, lease: Lease, *, handoff: bool = False) -> None:
        def give_up(db: sqlite3.Connection) -> None:
            current = _lease(db, lease.run_id)
            if current is None or (current.epoch, current.holder) != (lease.epoch, lease.holder):
                return
            now = time.time()
            if handoff:
                db.execute("UPDATE leases SET expires_at = ? WHERE run_id = ?", (now, lease.run_id))
            else:
                db.execute("DELETE FROM leases WHERE run_id = ?", (lease.run_id,))
            db.execute(
                _RELEASED,
                (now, lease.run_id, lease.epoch),
            )

        await self._leased(give_up)

    async def lease_of(self, run_id: str) -> Lease | None:
        return await self._read(lambda db: _lease(db, run_id))

    async def claim_orphan(
        self, holder: str, ttl: float, *, machines: Collection[str] | None = None
    ) -> tuple[Lease, RunEntry] | None:
        finished = sorted(FINISHED)
        wanted = sorted(machines) if machines is not None else None
        only = f" AND runs.machine IN ({', '.join('?' * len(wanted))})" if wanted else ""

        def take_one(db: sqlite3.Connection) -> tuple[Lease, RunEntry] | None:
            if wanted == []:
                return None
            # BEGIN IMMEDIATE serialises claimers: no two get the same run.
            row = db.execute(
                "SELECT runs.run_id FROM runs JOIN leases ON leases.run_id = runs.run_id "
                f"WHERE leases.expires_at <= ? AND runs.status NOT IN "
                f"({', '.join('?' * len(finished))}){only} "
                "ORDER BY runs.created_at, runs.rowid LIMIT 1",
                (time.time(), *finished, *(wanted or ())),
            ).fetchone()
            if row is None:
                return None
            lease = _take(db, row[0], holder, ttl)
            entry = _load(db, row[0])
            assert entry is not None
            return lease, entry

        return await self._leased(take_one)

    async def claims(self, run_id: str) -> list[Claim]:
        return await self._read(
            lambda db: [
                Claim(*r)
                for r in db.execute(
                    "SELECT run_id, holder, epoch, claimed_at, expires_at, released_at "
                    "FROM claims WHERE run_id = ? ORDER BY epoch",
                    (run_id,),
                )
            ]
        )


#: A release keeps its first time (a hand-off, then a claim by the same holder).
_RELEASED = (
    "UPDATE claims SET released_at = COALESCE(released_at, ?) WHERE run_id = ? AND epoch = ?"
)


def _lease(db: sqlite3.Connection, run_id: str) -> Lease | None:
    row = db.execute(
        "SELECT run_id, holder, epoch, expires_at FROM leases WHERE run_id = ?", (run_id,)
    ).fetchone()
    return Lease(*row) if row is not None else None


def _take(db: sqlite3.Connection, run_id: str, holder: str, ttl: float) -> Lease:
    """Claim the run for ``holder`` inside the open write transaction (see ``claim``)."""
    now = time.time()
    current = _lease(db, run_id)
    if current is not None and current.holder != holder and current.expires_at > now:
        raise RunHeld(run_id, current.holder, current.expires_at)
    if current is not None and current.holder == holder:
        db.execute(  # superseded by this holder's new claim
            _RELEASED,
            (now, run_id, current.epoch),
        )
    # Epochs never repeat, even after a lease row was deleted: the audit remembers the last one.
    last = db.execute("SELECT MAX(epoch) FROM claims WHERE run_id = ?", (run_id,)).fetchone()[0]
    lease = Lease(run_id, holder, (last or 0) + 1, now + ttl)
    db.execute(
        "INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
        "holder = excluded.holder, epoch = excluded.epoch, expires_at = excluded.expires_at",
        (run_id, holder, lease.epoch, lease.expires_at),
    )
    db.execute(
        "INSERT INTO claims VALUES (?, ?, ?, ?, ?, NULL)",
        (run_id, holder, lease.epoch, now, lease.expires_at),
    )
    return lease


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
