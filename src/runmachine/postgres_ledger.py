"""``PostgresLedger``: the durable tool ledger and lease table, in a PostgreSQL database.

Built on psycopg 3 and its connection pool (the ``runmachine[postgres]`` extra), used from worker
threads through ``anyio.to_thread``, so it works under asyncio and trio alike. Where
:class:`~runmachine.sqlite_ledger.SQLiteLedger` is shared by the processes of one host, this
ledger is shared by every host that reaches the database: workers on several machines claim runs,
renew their leases while they drive them, and take over the runs of a worker that is gone.

The tables live in their own schema (``schema="runmachine"`` by default), so the ledger can share a
database with an application. A ``runmachine_ledger`` table there carries an application marker and
the schema version, checked on open: a schema written by a newer runmachine, or tables of the
ledger's names that are not a ledger's, is refused with :class:`~runmachine.ledger.LedgerError`,
and is never written to. The first open creates the tables in one transaction, under an advisory
lock, so processes opening a new database at once create them once.

Every write is one transaction, committed before the coroutine returns; a write fenced by a lease
(``lease=``) checks in that same transaction that the lease is still the run's, and raises
:class:`~runmachine.errors.LeaseLost` (writing nothing) when it is not. A cancelled caller waits
for its worker thread to finish the transaction: nothing is left half done. Every time the ledger
records, and every lease's expiry, is read from the database server's clock, never the client's,
so hosts whose clocks disagree still agree on who holds a run.
"""

from __future__ import annotations

import math
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.rows import TupleRow
except ImportError as exc:  # pragma: no cover - exercised by a test that hides psycopg
    raise ImportError(
        "runmachine.postgres_ledger needs psycopg 3 and psycopg_pool, which are not installed: "
        'pip install "runmachine[postgres]"',
        name=exc.name,
    ) from exc

import anyio.to_thread

from runmachine import lifecycle
from runmachine.errors import OptionError
from runmachine.ledger import (
    FINISHED,
    CallEntry,
    Claim,
    Lease,
    LedgerError,
    RoundEntry,
    RunEntry,
    RunHeld,
    check_fence,
)

__all__ = ["APPLICATION", "SCHEMA_VERSION", "PostgresLedger"]

SCHEMA_VERSION = 1
#: The marker in ``runmachine_ledger.application``: what tells a ledger from look-alike tables.
APPLICATION = "runmachine ledger"
#: The first key of the advisory lock taken while the schema is checked or created: "rmLG".
_LOCK_CLASS = 0x726D4C47

META = "runmachine_ledger"
#: Every relation the ledger creates in its schema: one of these names already there, without a
#: ledger's meta row, means the schema holds something else, and the ledger refuses it.
TABLES = (META, "runs", "calls", "rounds", "leases", "claims")
INDEXES = ("runmachine_runs_by_age", "runmachine_leases_by_expiry")

#: The database server's clock, as Unix seconds.
_CLOCK = "extract(epoch FROM clock_timestamp())::float8"

_SCHEMA = (
    """CREATE TABLE {runmachine_ledger} (
        singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        application    TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        created_at     DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE {runs} (
        run_id     TEXT PRIMARY KEY,
        thread_id  TEXT NOT NULL,
        status     TEXT NOT NULL,
        machine    TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        seq        BIGINT GENERATED ALWAYS AS IDENTITY
    )""",
    "CREATE INDEX {runmachine_runs_by_age} ON {runs} (created_at, seq)",
    """CREATE TABLE {calls} (
        run_id      TEXT NOT NULL,
        call_id     TEXT NOT NULL,
        round       INTEGER NOT NULL,
        name        TEXT NOT NULL,
        arguments   TEXT NOT NULL,
        started_at  DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        output      TEXT,
        error       TEXT,
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (run_id, call_id)
    )""",
    """CREATE TABLE {rounds} (
        run_id       TEXT NOT NULL,
        round        INTEGER NOT NULL,
        call_ids     TEXT[] NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL,
        accepted_at  DOUBLE PRECISION,
        PRIMARY KEY (run_id, round)
    )""",
    """CREATE TABLE {leases} (
        run_id     TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        epoch      BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX {runmachine_leases_by_expiry} ON {leases} (expires_at)",
    """CREATE TABLE {claims} (
        run_id      TEXT NOT NULL,
        epoch       BIGINT NOT NULL,
        holder      TEXT NOT NULL,
        claimed_at  DOUBLE PRECISION NOT NULL,
        expires_at  DOUBLE PRECISION NOT NULL,
        released_at DOUBLE PRECISION,
        PRIMARY KEY (run_id, epoch)
    )""",
)

#: Migrations from version N to N + 1 (statements, in the templates' ``{table}`` form), run in
#: order on open. Empty while there is one version.
_MIGRATIONS: dict[int, Sequence[str]] = {}

#: Errors after which the whole transaction is simply run again (nothing of it was kept).
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_ATTEMPTS = 3

_Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")


class PostgresLedger:
    """A ledger in a PostgreSQL database:
    ``RunMachine(client, ledger=PostgresLedger("postgresql://user@host/db"))``.

    ``dsn`` is anything libpq accepts (a ``postgresql://`` URI or ``key=value`` words); the
    ledger's tables live in ``schema``. ``pool_size`` connections at most are open at once, and a
    call waits up to ``timeout`` seconds for one. Opening checks the schema, creating it in a new
    database; it raises :class:`~runmachine.ledger.LedgerError` for a DSN it cannot use, a server
    it cannot reach, or a schema it must not use. The password is never shown: not in ``repr``,
    not in any error.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "runmachine",
        pool_size: int = 10,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(dsn, str):
            raise LedgerError(f"a PostgreSQL DSN is a string, not {type(dsn).__name__}")
        if not isinstance(schema, str) or not schema or len(schema.encode()) > 63 or "\0" in schema:
            raise OptionError(f"schema must be a PostgreSQL name (1 to 63 bytes), not {schema!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise OptionError(f"pool_size must be an int of at least 1, not {pool_size!r}")
        for option, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise OptionError(f"{option} must be a positive number of seconds, not {value!r}")
        self.schema = schema
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's own message may quote any part of the DSN, its password too: not shown.
            raise LedgerError(
                f"not a usable PostgreSQL DSN {_redact_text(dsn)!r}: libpq cannot parse it (check "
                "its syntax and percent-encoding)"
            ) from None
        self._password = str(params.get("password") or "")
        #: The DSN as shown: without its password.
        self.dsn = _redact(dsn, params)
        self._where = f"{self.dsn} (schema {schema})"
        self._names = {
            name: sql.Identifier(schema, name) if name in TABLES else sql.Identifier(name)
            for name in (*TABLES, *INDEXES)
        }
        self._queries: dict[str, sql.Composed] = {}
        self._timeout = float(timeout)
        self._closed = False
        self._lock = threading.Lock()
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            # libpq counts whole seconds, and at least 2.
            extra["connect_timeout"] = max(2, math.ceil(connect_timeout))
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            extra["application_name"] = "runmachine"

        try:
            first = psycopg.connect(dsn, **extra)
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot reach the ledger database {self.dsn}: {self._scrub(exc)}"
            ) from exc
        try:
            with first.transaction():
                self._open(first)
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot open ledger {self._where}: {self._scrub(exc)}; "
                "the database was left untouched"
            ) from exc
        finally:
            first.close()

        self._pool: psycopg_pool.ConnectionPool[_Connection] = psycopg_pool.ConnectionPool(
            dsn,
            kwargs=extra,
            min_size=1,
            max_size=pool_size,
            open=False,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=self._timeout,
            name=f"runmachine ledger {self.dsn}",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise LedgerError(
                f"cannot reach the ledger database {self.dsn}: {self._scrub(exc)}"
            ) from exc

    def __repr__(self) -> str:
        return f"PostgresLedger({self.dsn!r}, schema={self.schema!r})"

    def _scrub(self, exc: BaseException) -> str:
        """An error's text, with the DSN's password (should the driver quote it) blotted out."""
        text = _redact_text(str(exc).strip())
        if len(self._password) >= 3:
            text = text.replace(self._password, "***")
        return text

    def _sql(self, template: str) -> sql.Composed:
        """``template`` with its ``{table}`` names as the schema's identifiers (cached)."""
        query = self._queries.get(template)
        if query is None:
            query = self._queries[template] = sql.SQL(template).format(**self._names)
        return query

    # ----------------------------------------------------------------------------------------
    # Opening: the meta row, the schema version, migrations
    # ----------------------------------------------------------------------------------------

    def _open(self, db: _Connection) -> None:
        """Check the schema (creating it in a new database), inside one transaction that holds
        the schema's advisory lock: a concurrent first open waits, then finds it made."""
        db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, self.schema))
        found = {
            row[0]
            for row in db.execute(
                "SELECT c.relname FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (self.schema, [*TABLES, *INDEXES]),
            )
        }
        if not found:
            self._create(db)
            return
        not_ours = (
            f"{self._where} has tables named like a runmachine ledger's "
            f"({', '.join(sorted(found))}) but they are not a ledger's"
        )
        if META not in found:
            raise LedgerError(f"{not_ours} (no {META} table); they were left untouched")
        try:
            rows = db.execute(
                self._sql("SELECT application, schema_version FROM {runmachine_ledger}")
            ).fetchall()
        except psycopg.Error as exc:
            raise LedgerError(
                f"{not_ours} (its {META} table is not a ledger's: {self._scrub(exc)}); "
                "they were left untouched"
            ) from exc
        if len(rows) != 1 or rows[0][0] != APPLICATION or not isinstance(rows[0][1], int):
            raise LedgerError(
                f"{not_ours} (no ledger row in its {META} table); they were left untouched"
            )
        version: int = rows[0][1]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self._where} has schema version {version}, newer than this runmachine "
                f"understands ({SCHEMA_VERSION}); upgrade runmachine to use it. "
                "The database was left untouched"
            )
        if version < SCHEMA_VERSION:
            self._migrate(db, version)
            return
        missing = sorted(set(TABLES) - found)
        if missing:
            raise LedgerError(
                f"ledger {self._where} is incomplete (no {', '.join(missing)}): tables were "
                "dropped from it; it was left untouched"
            )

    def _create(self, db: _Connection) -> None:
        exists = db.execute(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,)
        ).fetchone()
        if exists is None:
            db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        for statement in _SCHEMA:
            db.execute(self._sql(statement))
        db.execute(
            self._sql(
                "INSERT INTO {runmachine_ledger} (application, schema_version, created_at) "
                f"VALUES (%s, %s, {_CLOCK})"
            ),
            (APPLICATION, SCHEMA_VERSION),
        )

    def _migrate(self, db: _Connection, version: int) -> None:
        current = version
        while current < SCHEMA_VERSION:
            if current not in _MIGRATIONS:
                raise LedgerError(
                    f"ledger {self._where} has schema version {current}, which this runmachine "
                    "cannot migrate; the database was left untouched"
                )
            for statement in _MIGRATIONS[current]:
                db.execute(self._sql(statement))
            current += 1
        db.execute(
            self._sql("UPDATE {runmachine_ledger} SET schema_version = %s"), (SCHEMA_VERSION,)
        )

    # ----------------------------------------------------------------------------------------
    # The worker thread
    # ----------------------------------------------------------------------------------------

    def _call(self, what: str, work: Callable[[_Connection], T], write: bool) -> T:
        if self._closed:
            raise LedgerError(f"{what}: {self!r} is closed")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._pool.connection() as db, db.transaction():
                    if not write:
                        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    return work(db)
            except _RETRIED:
                if attempt == _ATTEMPTS:
                    raise
            except psycopg_pool.PoolClosed as exc:
                raise LedgerError(f"{what}: {self!r} is closed") from exc
            except psycopg.Error as exc:
                raise LedgerError(
                    f"ledger {self._where}: {what} failed: {self._scrub(exc)}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, what: str, work: Callable[[_Connection], T]) -> T:
        # Not abandoned on cancel: the transaction commits or rolls back before the caller goes on.
        return await anyio.to_thread.run_sync(self._call, what, work, True)

    async def _read(self, what: str, work: Callable[[_Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._call, what, work, False)

    def close(self) -> None:
        """Close the pool's connections. The ledger cannot be used afterwards."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._pool.close()

    async def clock(self) -> float:
        """The database server's clock, in Unix seconds: the clock of every time the ledger
        records and of every lease's expiry."""
        return await self._read("clock", _now)

    # ----------------------------------------------------------------------------------------
    # Inside a transaction
    # ----------------------------------------------------------------------------------------

    def _lease_row(self, db: _Connection, run_id: str, lock: str) -> Lease | None:
        row = db.execute(
            self._sql(f"SELECT holder, epoch, expires_at FROM {{leases}} WHERE run_id = %s {lock}"),
            (run_id,),
        ).fetchone()
        return None if row is None else Lease(run_id, row[0], row[1], row[2])

    def _fence(self, db: _Connection, run_id: str, lease: Lease | None) -> None:
        """Raise ``LeaseLost`` unless ``lease`` (when given) is still the run's. The lease row
        stays share-locked until the transaction ends: no claim can slip in before it commits."""
        if lease is not None:
            check_fence(run_id, lease, self._lease_row(db, run_id, "FOR SHARE"))

    def _take(
        self, db: _Connection, run_id: str, holder: str, ttl: float, thread_id: str, machine: str
    ) -> Lease:
        # A lease row to lock even for a new run (or one released for good): a placeholder that
        # the claim overwrites below. A concurrent claim waits on it, then finds this one's.
        db.execute(
            self._sql(
                "INSERT INTO {leases} (run_id, holder, epoch, expires_at) VALUES (%s, '', 0, 0) "
                "ON CONFLICT (run_id) DO NOTHING"
            ),
            (run_id,),
        )
        current = self._lease_row(db, run_id, "FOR UPDATE")
        assert current is not None
        now = _now(db)
        if current.holder != holder and current.expires_at > now:
            raise RunHeld(run_id, current.holder, current.expires_at)
        if current.holder == holder and current.epoch > 0:
            self._audit(db, current, "released_at", now)  # superseded by this new claim
        # Epochs never repeat, even after a release deleted the lease row: the audit keeps them.
        last = db.execute(
            self._sql("SELECT coalesce(max(epoch), 0) FROM {claims} WHERE run_id = %s"), (run_id,)
        ).fetchone()
        epoch = max(current.epoch, last[0] if last is not None else 0) + 1
        lease = Lease(run_id, holder, epoch, now + ttl)
        db.execute(
            self._sql(
                "UPDATE {leases} SET holder = %s, epoch = %s, expires_at = %s WHERE run_id = %s"
            ),
            (holder, epoch, lease.expires_at, run_id),
        )
        db.execute(
            self._sql(
                "INSERT INTO {claims} (run_id, epoch, holder, claimed_at, expires_at) "
                "VALUES (%s, %s, %s, %s, %s)"
            ),
            (run_id, epoch, holder, now, lease.expires_at),
        )
        db.execute(
            self._sql(
                "INSERT INTO {runs} (run_id, thread_id, status, machine, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING"
            ),
            (run_id, thread_id, lifecycle.INITIAL_STATE, machine, now, now),
        )
        if thread_id or machine:
            db.execute(
                self._sql(
                    "UPDATE {runs} SET thread_id = CASE WHEN %s = '' THEN thread_id ELSE %s END, "
                    "machine = CASE WHEN %s = '' THEN machine ELSE %s END WHERE run_id = %s"
                ),
                (thread_id, thread_id, machine, machine, run_id),
            )
        return lease

    def _audit(self, db: _Connection, lease: Lease, column: str, value: float) -> None:
        # A release keeps its first time (a hand-off, then a claim by the same holder).
        new = "COALESCE(released_at, %s)" if column == "released_at" else "%s"
        db.execute(
            self._sql(f"UPDATE {{claims}} SET {column} = {new} WHERE run_id = %s AND epoch = %s"),
            (value, lease.run_id, lease.epoch),
        )

    def _load(self, db: _Connection, run_ids: Sequence[str] | None) -> list[RunEntry]:
        """The entries of ``run_ids`` (every run for ``None``), oldest first."""
        where, params = ("", ()) if run_ids is None else (" WHERE run_id = ANY(%s)", (run_ids,))
        runs = db.execute(
            self._sql(
                "SELECT run_id, thread_id, status, machine, created_at, updated_at FROM {runs}"
                + where
                + " ORDER BY created_at, seq"
            ),
            params,
        ).fetchall()
        calls: dict[str, dict[str, CallEntry]] = {row[0]: {} for row in runs}
        for row in db.execute(
            self._sql(
                "SELECT run_id, call_id, round, name, arguments, started_at, finished_at, output, "
                "error FROM {calls}" + where + " ORDER BY round, seq"
            ),
            params,
        ):
            if row[0] in calls:
                calls[row[0]][row[1]] = CallEntry(*row)
        rounds: dict[str, list[RoundEntry]] = {row[0]: [] for row in runs}
        for row in db.execute(
            self._sql(
                "SELECT run_id, round, call_ids, submitted_at, accepted_at FROM {rounds}"
                + where
                + " ORDER BY round"
            ),
            params,
        ):
            if row[0] in rounds:
                rounds[row[0]].append(RoundEntry(row[0], row[1], frozenset(row[2]), row[3], row[4]))
        return [
            RunEntry(
                run_id,
                thread_id,
                status,
                machine,
                created_at,
                updated_at,
                calls=calls[run_id],
                rounds=tuple(rounds[run_id]),
            )
            for run_id, thread_id, status, machine, created_at, updated_at in runs
        ]

    # ----------------------------------------------------------------------------------------
    # The Ledger protocol
    # ----------------------------------------------------------------------------------------

    async def record_run(
        self, run_id: str, thread_id: str, status: str, machine: str, *, lease: Lease | None = None
    ) -> None:
        def work(db: _Connection) -> None:
            self._fence(db, run_id, lease)
            now = _now(db)
            db.execute(
                self._sql(
                    "INSERT INTO {runs} AS r "
                    "(run_id, thread_id, status, machine, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
                    "thread_id = CASE WHEN excluded.thread_id = '' THEN r.thread_id "
                    "ELSE excluded.thread_id END, status = excluded.status, "
                    "machine = CASE WHEN excluded.machine = '' THEN r.machine "
                    "ELSE excluded.machine END, updated_at = excluded.updated_at"
                ),
                (run_id, thread_id, status, machine, now, now),
            )

        await self._write(f"record_run({run_id})", work)

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
        def work(db: _Connection) -> None:
            self._fence(db, run_id, lease)
            db.execute(
                self._sql(
                    "INSERT INTO {calls} AS c (run_id, call_id, round, name, arguments, "
                    "started_at) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (run_id, call_id) DO UPDATE SET "
                    "started_at = excluded.started_at WHERE c.output IS NULL"
                ),
                (run_id, call_id, round, name, arguments, _now(db)),
            )

        await self._write(f"call_started({run_id}, {call_id})", work)

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
        def work(db: _Connection) -> None:
            self._fence(db, run_id, lease)
            db.execute(
                self._sql(
                    "INSERT INTO {calls} AS c (run_id, call_id, round, name, arguments, "
                    "started_at, finished_at, output, error) "
                    "VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s) "
                    "ON CONFLICT (run_id, call_id) DO UPDATE SET "
                    "finished_at = excluded.finished_at, output = excluded.output, "
                    "error = excluded.error WHERE c.output IS NULL"
                ),
                (run_id, call_id, round, name, arguments, _now(db), output, error),
            )

        await self._write(f"call_finished({run_id}, {call_id})", work)

    async def round_submitted(
        self, run_id: str, round: int, call_ids: frozenset[str], *, lease: Lease | None = None
    ) -> None:
        ids = sorted(call_ids)

        def work(db: _Connection) -> None:
            self._fence(db, run_id, lease)
            db.execute(
                self._sql(
                    "INSERT INTO {rounds} (run_id, round, call_ids, submitted_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ),
                (run_id, round, ids, _now(db)),
            )

        await self._write(f"round_submitted({run_id}, {round})", work)

    async def round_accepted(self, run_id: str, round: int, *, lease: Lease | None = None) -> None:
        def work(db: _Connection) -> None:
            self._fence(db, run_id, lease)
            db.execute(
                self._sql(
                    "UPDATE {rounds} SET accepted_at = %s "
                    "WHERE run_id = %s AND round = %s AND accepted_at IS NULL"
                ),
                (_now(db), run_id, round),
            )

        await self._write(f"round_accepted({run_id}, {round})", work)

    async def load(self, run_id: str) -> RunEntry | None:
        entries = await self._read(f"load({run_id})", lambda db: self._load(db, [run_id]))
        return entries[0] if entries else None

    async def runs(self) -> list[RunEntry]:
        return await self._read("runs()", lambda db: self._load(db, None))

    # ----------------------------------------------------------------------------------------
    # Leases
    # ----------------------------------------------------------------------------------------

    async def claim(
        self, run_id: str, holder: str, ttl: float, *, thread_id: str = "", machine: str = ""
    ) -> Lease:
        ttl = _ttl(ttl)
        return await self._write(
            f"claim({run_id}, {holder})",
            lambda db: self._take(db, run_id, holder, ttl, thread_id, machine),
        )

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        ttl = _ttl(ttl)

        def work(db: _Connection) -> Lease:
            check_fence(lease.run_id, lease, self._lease_row(db, lease.run_id, "FOR UPDATE"))
            renewed = Lease(lease.run_id, lease.holder, lease.epoch, _now(db) + ttl)
            db.execute(
                self._sql("UPDATE {leases} SET expires_at = %s WHERE run_id = %s"),
                (renewed.expires_at, lease.run_id),
            )
            self._audit(db, lease, "expires_at", renewed.expires_at)
            return renewed

        return await self._write(f"renew({lease.run_id}, {lease.holder})", work)

    async def release(self, lease: Lease, *, handoff: bool = False) -> None:
        def work(db: _Connection) -> None:
            current = self._lease_row(db, lease.run_id, "FOR UPDATE")
            if current is None or (current.epoch, current.holder) != (lease.epoch, lease.holder):
                return
            now = _now(db)
            if handoff:
                db.execute(
                    self._sql("UPDATE {leases} SET expires_at = %s WHERE run_id = %s"),
                    (now, lease.run_id),
                )
            else:
                db.execute(self._sql("DELETE FROM {leases} WHERE run_id = %s"), (lease.run_id,))
            self._audit(db, lease, "released_at", now)

        await self._write(f"release({lease.run_id}, {lease.holder})", work)

    async def lease_of(self, run_id: str) -> Lease | None:
        return await self._read(f"lease_of({run_id})", lambda db: self._lease_row(db, run_id, ""))

    async def claim_orphan(
        self, holder: str, ttl: float, *, machines: Collection[str] | None = None
    ) -> tuple[Lease, RunEntry] | None:
        ttl = _ttl(ttl)
        wanted = None if machines is None else sorted(machines)
        only = "" if wanted is None else "AND r.machine = ANY(%(machines)s) "

        def work(db: _Connection) -> tuple[Lease, RunEntry] | None:
            if wanted == []:
                return None
            skipped: list[str] = []
            while True:
                # The oldest orphan nobody else is claiming right now: a lease row another
                # claimer has locked is skipped, so concurrent claimers never get the same run.
                row = db.execute(
                    self._sql(
                        "SELECT l.run_id FROM {leases} l JOIN {runs} r ON r.run_id = l.run_id "
                        "WHERE l.expires_at <= %(now)s AND r.status <> ALL(%(finished)s) "
                        f"{only}AND l.run_id <> ALL(%(skipped)s) "
                        "ORDER BY r.created_at, r.seq LIMIT 1 FOR UPDATE OF l SKIP LOCKED"
                    ),
                    {
                        "now": _now(db),
                        "finished": sorted(FINISHED),
                        "machines": wanted,
                        "skipped": skipped,
                    },
                ).fetchone()
                if row is None:
                    return None
                try:
                    lease = self._take(db, row[0], holder, ttl, "", "")
                except RunHeld:
                    # Claimed and committed by another holder while this one looked: its lease
                    # is fresh now. (The recheck of the locked row normally skips it already.)
                    skipped.append(row[0])
                    continue
                (entry,) = self._load(db, [row[0]])
                return lease, entry

        return await self._write(f"claim_orphan({holder})", work)

    async def claims(self, run_id: str) -> list[Claim]:
        def work(db: _Connection) -> list[Claim]:
            rows = db.execute(
                self._sql(
                    "SELECT run_id, holder, epoch, claimed_at, expires_at, released_at "
                    "FROM {claims} WHERE run_id = %s ORDER BY epoch"
                ),
                (run_id,),
            )
            return [Claim(*row) for row in rows]

        return await self._read(f"claims({run_id})", work)


def _now(db: _Connection) -> float:
    """The database server's clock, read inside the transaction (after its locks)."""
    row = db.execute(f"SELECT {_CLOCK}").fetchone()
    assert row is not None
    return float(row[0])


def _ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or math.isnan(ttl):
        raise OptionError(f"ttl must be a number of seconds, not {ttl!r}")
    return float(ttl)


#: A URI's user and password, up to the last ``@`` before its path (a password may hold ``@``).
_URI = re.compile(r"(postgres(?:ql)?://[^:/?#@]*):[^/?#]*@")
_PASSWORD_WORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


def _redact_text(text: str) -> str:
    """``text`` with anything shaped like a DSN's password blotted out."""
    return _PASSWORD_WORD.sub(r"\1***", _URI.sub(r"\1:***@", text))


def _redact(dsn: str, params: dict[str, Any]) -> str:
    """The DSN as shown: a URI without its password, or ``key=value`` words without it."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlsplit(dsn)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hosts}" if at and user else hosts
        query = [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key != "password"
        ]
        return urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), parts.fragment)
        )
    shown = {key: value for key, value in params.items() if key != "password"}
    return make_conninfo("", **shown)
