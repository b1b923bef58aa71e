"""``PostgresLedger`` on a real PostgreSQL server: what the conformance suite cannot say.

The schema and its refusals (a newer version, look-alike tables: refused and left exactly as they
were), concurrent first opens, the database's clock (never the client's), racing claimers, fencing
against a takeover that commits while a write waits, a cancelled caller, a dropped connection,
the command line, the DSN's password kept out of sight, and the driver recording into it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from runmachine.errors import LeaseLost, LedgerError, OptionError, RunHeld
from runmachine.ledger import Lease, LeasedLedger
from runmachine.postgres_ledger import APPLICATION, SCHEMA_VERSION, PostgresLedger
from runmachine.testing import Emulator, Scenario
from tests.ledger.shop import Counter

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word"
Factory = Callable[..., PostgresLedger]


def _with_password(dsn: str) -> str:
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection to the test's database, autocommit, for looking behind the ledger."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every schema, relation and row of the database's own schemas: equal means untouched."""
    schemas = [
        r[0]
        for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY 1"
        )
    ]
    relations = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind, c.relfilenode FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) ORDER BY 1, 2",
        (schemas,),
    ).fetchall()
    rows = {
        f"{ns}.{name}": sorted(
            repr(r)
            for r in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(ns, name)))
        )
        for ns, name, kind, _ in relations
        if kind == "r"
    }
    return {"schemas": schemas, "relations": relations, "rows": rows}


# --------------------------------------------------------------------------------------------
# The schema: created once, checked on open, refused when it is not a ledger's
# --------------------------------------------------------------------------------------------


def test_a_new_database_gets_a_versioned_schema(pg_dsn: str, admin: Any) -> None:
    ledger = PostgresLedger(pg_dsn)
    ledger.close()
    tables = {
        r[0]
        for r in admin.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'runmachine' ORDER BY 1"
        )
    }
    assert tables == {"runmachine_ledger", "runs", "calls", "rounds", "leases", "claims"}
    meta = admin.execute(
        "SELECT application, schema_version FROM runmachine.runmachine_ledger"
    ).fetchall()
    assert meta == [(APPLICATION, SCHEMA_VERSION)]
    # Opening it again finds the same schema and changes nothing.
    before = _snapshot(admin)
    PostgresLedger(pg_dsn).close()
    assert _snapshot(admin) == before


@pytest.mark.anyio
async def test_it_shares_a_database_with_an_app(pg_dsn: str, admin: Any) -> None:
    admin.execute("CREATE TABLE public.runs (id int PRIMARY KEY, what text)")
    admin.execute("INSERT INTO public.runs VALUES (1, 'the app''s own')")
    main = PostgresLedger(pg_dsn)
    other = PostgresLedger(pg_dsn, schema="ledger two")
    try:
        await main.record_run("run_1", "t", "queued", "m")
        await other.record_run("run_2", "t", "queued", "m")
        assert [e.run_id for e in await main.runs()] == ["run_1"]
        assert [e.run_id for e in await other.runs()] == ["run_2"]
    finally:
        main.close()
        other.close()
    assert admin.execute("SELECT * FROM public.runs").fetchall() == [(1, "the app's own")]
    assert admin.execute('SELECT run_id FROM "ledger two".runs').fetchall() == [("run_2",)]


@pytest.mark.anyio
async def test_a_newer_schema_is_refused_and_left_untouched(pg_dsn: str, admin: Any) -> None:
    ledger = PostgresLedger(pg_dsn)
    await ledger.record_run("run_1", "t", "queued", "m")
    ledger.close()
    admin.execute(
        "UPDATE runmachine.runmachine_ledger SET schema_version = %s", (SCHEMA_VERSION + 1,)
    )
    before = _snapshot(admin)
    with pytest.raises(LedgerError, match=rf"schema version {SCHEMA_VERSION + 1}, newer") as info:
        PostgresLedger(_with_password(pg_dsn))
    message = str(info.value)
    assert pg_dsn in message and "upgrade runmachine" in message and "untouched" in message
    assert PASSWORD not in message
    assert _snapshot(admin) == before


LOOKALIKES = {
    "tables, no meta table": [
        "CREATE SCHEMA runmachine",
        "CREATE TABLE runmachine.runs (id int, customer text)",
        "INSERT INTO runmachine.runs VALUES (1, 'ada')",
        "CREATE TABLE runmachine.calls (id int)",
    ],
    "an empty meta table": [
        "CREATE SCHEMA runmachine",
        "CREATE TABLE runmachine.runmachine_ledger "
        "(application text, schema_version int, created_at float8)",
        "CREATE TABLE runmachine.runs (id int)",
    ],
    "a meta table of other columns": [
        "CREATE SCHEMA runmachine",
        "CREATE TABLE runmachine.runmachine_ledger (key text, value text)",
        "INSERT INTO runmachine.runmachine_ledger VALUES ('version', '1')",
    ],
    "another application's meta row": [
        "CREATE SCHEMA runmachine",
        "CREATE TABLE runmachine.runmachine_ledger "
        "(application text, schema_version int, created_at float8)",
        "INSERT INTO runmachine.runmachine_ledger VALUES ('something else', 1, 0)",
    ],
    "an index of the ledger's name": [
        "CREATE SCHEMA runmachine",
        "CREATE TABLE runmachine.app (x int)",
        "CREATE INDEX runmachine_runs_by_age ON runmachine.app (x)",
    ],
}


@pytest.mark.parametrize("setup", LOOKALIKES.values(), ids=list(LOOKALIKES))
def test_lookalike_tables_are_refused_and_left_untouched(
    pg_dsn: str, admin: Any, setup: list[str]
) -> None:
    for statement in setup:
        admin.execute(statement)
    before = _snapshot(admin)
    with pytest.raises(LedgerError, match="not a ledger's") as info:
        PostgresLedger(_with_password(pg_dsn))
    assert pg_dsn in str(info.value) and "untouched" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert _snapshot(admin) == before


def test_an_app_table_of_the_same_name_in_the_chosen_schema_is_refused(
    pg_dsn: str, admin: Any
) -> None:
    admin.execute("CREATE TABLE public.calls (id int)")
    before = _snapshot(admin)
    with pytest.raises(LedgerError, match=r"schema public.*\(calls\) but they are not"):
        PostgresLedger(pg_dsn, schema="public")
    assert _snapshot(admin) == before


def test_a_ledger_missing_a_table_is_refused(pg_dsn: str, admin: Any) -> None:
    PostgresLedger(pg_dsn).close()
    admin.execute("DROP TABLE runmachine.claims")
    before = _snapshot(admin)
    with pytest.raises(LedgerError, match=r"incomplete \(no claims\)"):
        PostgresLedger(pg_dsn)
    assert _snapshot(admin) == before


def test_concurrent_first_opens_from_threads_create_the_schema_once(
    pg_dsn: str, admin: Any
) -> None:
    count = 8
    barrier = threading.Barrier(count)
    opened: list[PostgresLedger] = []
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        barrier.wait()
        try:
            ledger = PostgresLedger(pg_dsn)
            anyio.run(ledger.record_run, f"run_{i}", "t", "queued", "m")
            opened.append(ledger)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for ledger in opened:
        ledger.close()
    assert errors == [] and len(opened) == count
    assert admin.execute("SELECT count(*) FROM runmachine.runmachine_ledger").fetchone() == (1,)
    assert admin.execute("SELECT count(*) FROM runmachine.runs").fetchone() == (count,)


def test_concurrent_first_opens_from_processes_create_the_schema_once(
    pg_dsn: str, admin: Any
) -> None:
    script = textwrap.dedent(
        """
        import sys, anyio
        from runmachine.postgres_ledger import PostgresLedger
        dsn, run_id = sys.argv[1], sys.argv[2]
        print("ready", flush=True)
        sys.stdin.readline()  # every child imported: they open together
        ledger = PostgresLedger(dsn)
        anyio.run(ledger.record_run, run_id, "t", "queued", "m")
        ledger.close()
        """
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, pg_dsn, f"run_{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert admin.execute("SELECT count(*) FROM runmachine.runmachine_ledger").fetchone() == (1,)
    assert admin.execute("SELECT count(*) FROM runmachine.runs").fetchone() == (4,)


# --------------------------------------------------------------------------------------------
# The constructor, repr, close, and the password
# --------------------------------------------------------------------------------------------


def test_the_password_is_never_shown(pg_dsn: str) -> None:
    uri = _with_password(pg_dsn)
    ledger = PostgresLedger(uri)  # trust authentication: the password is accepted, unused
    try:
        assert PASSWORD not in repr(ledger) and PASSWORD not in ledger.dsn
        assert repr(ledger) == f"PostgresLedger({pg_dsn!r}, schema='runmachine')"
    finally:
        ledger.close()
    with pytest.raises(LedgerError, match="is closed") as info:
        anyio.run(ledger.runs)
    assert PASSWORD not in str(info.value)
    words = psycopg.conninfo.make_conninfo("", **psycopg.conninfo.conninfo_to_dict(uri))
    assert PASSWORD in words
    ledger = PostgresLedger(words)
    try:
        assert PASSWORD not in repr(ledger) and "dbname=" in repr(ledger)
    finally:
        ledger.close()
    query = f"{pg_dsn}?password={PASSWORD}&connect_timeout=5"
    ledger = PostgresLedger(query)
    try:
        assert PASSWORD not in repr(ledger) and "connect_timeout=5" in repr(ledger)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "dsn",
    [f"host=127.0.0.1 password={PASSWORD} garbage", f"postgresql://u:{PASSWORD}@h/db?x=%zz&="],
    ids=["words", "uri"],
)
def test_a_bad_dsn_is_a_ledger_error(dsn: str) -> None:
    with pytest.raises(LedgerError, match="DSN") as info:
        PostgresLedger(dsn)
    assert PASSWORD not in str(info.value)


def test_an_unreachable_server_is_a_ledger_error_with_its_cause(pg_server: Any) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/db"
    started = time.monotonic()
    with pytest.raises(LedgerError, match="cannot reach the ledger database") as info:
        PostgresLedger(dsn)
    assert time.monotonic() - started < 10
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert "refused" in str(info.value).lower()
    assert f"postgresql://postgres@127.0.0.1:{port}/db" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_a_missing_database_is_a_ledger_error(pg_server: Any) -> None:
    with pytest.raises(LedgerError, match='database "no_such_db" does not exist'):
        PostgresLedger(pg_server.dsn("no_such_db"))


@pytest.mark.parametrize(
    "options",
    [{"schema": ""}, {"schema": "x" * 64}, {"pool_size": 0}, {"timeout": 0}, {"timeout": "5"}],
)
def test_bad_options_are_refused_before_connecting(options: dict[str, Any]) -> None:
    with pytest.raises(OptionError):
        PostgresLedger("postgresql://nobody@127.0.0.1:1/none", **options)


def test_a_dsn_that_is_not_a_string_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="a PostgreSQL DSN is a string, not bytes"):
        PostgresLedger(b"postgresql://x/y")  # type: ignore[arg-type]


def test_close_is_idempotent(postgres_ledger: PostgresLedger) -> None:
    postgres_ledger.close()
    postgres_ledger.close()


# --------------------------------------------------------------------------------------------
# The database's clock
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_time_is_the_database_servers_clock(
    postgres_ledger: PostgresLedger, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This client's clock is a day and a half off: nothing the ledger records may follow it.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 131_072.0)

    def server_now() -> float:
        row = admin.execute("SELECT extract(epoch FROM now())::float8").fetchone()
        return float(row[0])

    lease = await postgres_ledger.claim("run_1", "worker-a", 30, thread_id="t", machine="m")
    await postgres_ledger.call_started("run_1", "c", 1, "tool", "{}", lease=lease)
    await postgres_ledger.call_finished("run_1", "c", 1, "tool", "{}", "out", None, lease=lease)
    await postgres_ledger.round_submitted("run_1", 1, frozenset({"c"}), lease=lease)
    await postgres_ledger.round_accepted("run_1", 1, lease=lease)
    now = server_now()
    assert lease.expires_at - 30 == pytest.approx(now, abs=2.0)
    assert await postgres_ledger.clock() == pytest.approx(server_now(), abs=2.0)
    entry = await postgres_ledger.load("run_1")
    assert entry is not None
    call, round_1 = entry.calls["c"], entry.rounds[0]
    for stamp in (
        entry.created_at,
        entry.updated_at,
        call.started_at,
        call.finished_at,
        round_1.submitted_at,
        round_1.accepted_at,
    ):
        assert stamp == pytest.approx(now, abs=2.0)
    (claim,) = await postgres_ledger.claims("run_1")
    assert claim.claimed_at == pytest.approx(now, abs=2.0)
    renewed = await postgres_ledger.renew(lease, 60)
    assert renewed.expires_at - 60 == pytest.approx(server_now(), abs=2.0)
    # The database's own rows say the same.
    stored = admin.execute("SELECT expires_at FROM runmachine.leases").fetchone()
    assert stored == (renewed.expires_at,)


# --------------------------------------------------------------------------------------------
# Claimers racing, on connections of their own (as workers on different hosts)
# --------------------------------------------------------------------------------------------


def _race(workers: int, target: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_racing_orphan_claimers_never_get_the_same_run(
    postgres_ledger_factory: Factory,
) -> None:
    setup = postgres_ledger_factory()
    run_ids = [f"run_{n:02d}" for n in range(40)]

    async def orphans() -> None:
        for run_id in run_ids:
            await setup.record_run(run_id, "t", "requires_action", "m")
            lease = await setup.claim(run_id, "dead", 60)
            await setup.release(lease, handoff=True)

    anyio.run(orphans)
    ledgers = [postgres_ledger_factory(pool_size=2) for _ in range(8)]

    def worker(i: int) -> list[str]:
        async def go() -> list[str]:
            got = []
            while (taken := await ledgers[i].claim_orphan(f"w{i}", 60)) is not None:
                lease, entry = taken
                assert lease.holder == f"w{i}" and entry.run_id == lease.run_id
                got.append(lease.run_id)
            return got

        return anyio.run(go, backend="trio" if i % 2 else "asyncio")

    results = _race(len(ledgers), worker)
    for result in results:
        assert isinstance(result, list), result
    claimed = [run_id for result in results for run_id in result]
    assert sorted(claimed) == run_ids  # every orphan once, none twice
    assert sum(1 for result in results if result) > 1  # they really raced

    async def audit() -> None:
        for run_id in run_ids:
            claims = await setup.claims(run_id)
            assert (claims[0].holder, claims[0].epoch) == ("dead", 1)
            assert len(claims) == 2 and claims[1].epoch == 2 and claims[1].holder != "dead"

    anyio.run(audit)


def test_racing_claims_of_one_new_run_have_one_winner(postgres_ledger_factory: Factory) -> None:
    ledgers = [postgres_ledger_factory(pool_size=1) for _ in range(10)]
    results = _race(
        len(ledgers),
        lambda i: anyio.run(lambda: ledgers[i].claim("run_new", f"w{i}", 60, thread_id="t")),
    )
    won = [r for r in results if isinstance(r, Lease)]
    held = [r for r in results if isinstance(r, RunHeld)]
    assert len(won) == 1 and len(held) == 9, results
    assert won[0].epoch == 1 and all(h.holder == won[0].holder for h in held)
    claims = anyio.run(ledgers[0].claims, "run_new")
    assert [(c.holder, c.epoch) for c in claims] == [(won[0].holder, 1)]


# --------------------------------------------------------------------------------------------
# Fencing, in the write's own transaction
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stale_epoch_writes_nothing(
    postgres_ledger_factory: Factory, admin: Any, anyio_backend: str
) -> None:
    host_a, host_b = postgres_ledger_factory(), postgres_ledger_factory()
    await host_a.record_run("run_1", "t", "requires_action", "m")
    old = await host_a.claim("run_1", "worker-a", 60)
    await host_a.release(old, handoff=True)
    new = await host_b.claim("run_1", "worker-b", 60)
    before = _snapshot(admin)
    with pytest.raises(LeaseLost, match=r"worker-a on run run_1 \(epoch 1\).*worker-b \(epoch 2"):
        await host_a.call_started("run_1", "c", 1, "tool", "{}", lease=old)
    with pytest.raises(LeaseLost):
        await host_a.record_run("run_1", "", "completed", "", lease=old)
    with pytest.raises(LeaseLost):
        await host_a.renew(old, 60)
    await host_a.release(old)  # no longer the run's: does nothing
    assert _snapshot(admin) == before
    assert await host_a.lease_of("run_1") == new


@pytest.mark.anyio
async def test_a_takeover_committed_while_a_write_waits_refuses_the_write(
    postgres_ledger: PostgresLedger, pg_dsn: str, admin: Any, anyio_backend: str
) -> None:
    lease = await postgres_ledger.claim("run_1", "worker-a", 60, thread_id="t")
    # Another holder's claim, in flight: it holds the lease row and bumps the epoch.
    other = psycopg.connect(pg_dsn)
    other.execute("SELECT * FROM runmachine.leases WHERE run_id = 'run_1' FOR UPDATE")
    other.execute(
        "UPDATE runmachine.leases SET holder = 'worker-b', epoch = epoch + 1 WHERE run_id = 'run_1'"
    )
    committer = threading.Timer(0.3, other.commit)
    committer.start()
    started = time.monotonic()
    try:
        with pytest.raises(LeaseLost, match=r"held by worker-b \(epoch 2\)"):
            await postgres_ledger.call_started("run_1", "c", 1, "tool", "{}", lease=lease)
    finally:
        committer.join()
        other.close()
    assert time.monotonic() - started >= 0.25  # it waited for the takeover to commit
    assert admin.execute("SELECT count(*) FROM runmachine.calls").fetchone() == (0,)


@pytest.mark.anyio
async def test_a_write_waited_on_by_a_claim_goes_first(
    postgres_ledger_factory: Factory, admin: Any, anyio_backend: str
) -> None:
    host_a, host_b = postgres_ledger_factory(), postgres_ledger_factory()
    lease = await host_a.claim("run_1", "worker-a", 0.2)
    await anyio.sleep(0.3)
    # worker-a's write and worker-b's takeover at once: one after the other, never interleaved.
    outcome: dict[str, Any] = {}

    async def write() -> None:
        try:
            await host_a.call_started("run_1", "c", 1, "tool", "{}", lease=lease)
            outcome["write"] = "done"
        except LeaseLost:
            outcome["write"] = "lost"

    async def take() -> None:
        outcome["claim"] = await host_b.claim("run_1", "worker-b", 60)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        tg.start_soon(take)
    calls = admin.execute("SELECT count(*) FROM runmachine.calls").fetchone()[0]
    assert outcome["claim"].epoch == 2
    assert calls == (1 if outcome["write"] == "done" else 0)


# --------------------------------------------------------------------------------------------
# Cancellation, dropped connections, durability
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_write_finishes_its_transaction(
    postgres_ledger: PostgresLedger, pg_dsn: str, admin: Any, anyio_backend: str
) -> None:
    lease = await postgres_ledger.claim("run_1", "worker-a", 60)
    blocker = psycopg.connect(pg_dsn)  # holds the lease row: the fenced write must wait
    blocker.execute("SELECT * FROM runmachine.leases FOR UPDATE")
    releaser = threading.Timer(0.4, blocker.commit)
    releaser.start()
    started = time.monotonic()
    try:
        with anyio.move_on_after(0.1) as scope:
            await postgres_ledger.call_started("run_1", "c", 1, "tool", "{}", lease=lease)
            waited = time.monotonic() - started
            await anyio.sleep(30)  # the cancellation arrives at the next checkpoint
    finally:
        releaser.join()
        blocker.close()
    assert scope.cancelled_caught and time.monotonic() - started < 10
    # The caller was cancelled while its write waited on a lock; the write did not return
    # before it was done, and it was committed whole.
    assert waited >= 0.35
    assert admin.execute("SELECT call_id FROM runmachine.calls").fetchall() == [("c",)]
    locks = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%'"
    ).fetchone()
    assert locks == (0,)


@pytest.mark.anyio
async def test_a_dropped_connection_is_replaced(
    postgres_ledger: PostgresLedger, admin: Any, anyio_backend: str
) -> None:
    await postgres_ledger.record_run("run_1", "t", "queued", "m")
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    await postgres_ledger.record_run("run_1", "", "completed", "")
    entry = await postgres_ledger.load("run_1")
    assert entry is not None and entry.status == "completed"


@pytest.mark.anyio
async def test_records_outlive_the_ledger_object(
    postgres_ledger_factory: Factory, anyio_backend: str
) -> None:
    first = postgres_ledger_factory()
    lease = await first.claim("run_1", "worker-a", 60, thread_id="t", machine="m:C")
    await first.call_finished("run_1", "c", 1, "tool", "{}", "out", None, lease=lease)
    await first.round_submitted("run_1", 1, frozenset({"c"}), lease=lease)
    written = await first.load("run_1")
    first.close()
    second = postgres_ledger_factory()
    assert isinstance(second, LeasedLedger)
    assert await second.load("run_1") == written
    assert await second.lease_of("run_1") == lease


# --------------------------------------------------------------------------------------------
# The command line, and the import
# --------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runmachine", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_the_cli_lists_the_runs_of_a_postgres_ledger(postgres_ledger: PostgresLedger) -> None:
    async def fill() -> None:
        await postgres_ledger.record_run("run_a", "thread_a", "completed", "shop:Counter")
        await postgres_ledger.call_finished("run_a", "c1", 1, "add", "{}", "2", None)
        await postgres_ledger.record_run("run_b", "thread_b", "requires_action", "shop:Counter")

    anyio.run(fill)
    dsn = _with_password(postgres_ledger.dsn)
    done = _cli("runs", "--ledger", dsn)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "/", "TURN"]
    assert lines[1].split()[:3] == ["run_a", "thread_a", "completed"]
    assert lines[2].split()[:3] == ["run_b", "thread_b", "requires_action"]
    done = _cli("runs", "--json", "--ledger", dsn.replace("postgresql://", "postgres://"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["run_id"], r["calls_finished"]) for r in rows] == [("run_a", 1), ("run_b", 0)]


def test_the_cli_refuses_an_unreachable_postgres_ledger() -> None:
    done = _cli("runs", "--ledger", f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/db")
    assert done.returncode == 2
    assert "cannot reach the ledger database" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def test_nothing_of_the_core_imports_psycopg() -> None:
    done = _python(
        """
        import sys
        import runmachine, runmachine.cli, runmachine.ledger_cli, runmachine.machine
        import runmachine.sqlite_ledger
        loaded = sorted(m for m in sys.modules if m.startswith(("psycopg", "runmachine.postgres")))
        print(loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_psycopg_the_import_names_the_extra() -> None:
    done = _python(
        """
        import sys
        sys.modules["psycopg"] = None  # as if it were not installed
        try:
            import runmachine.postgres_ledger
        except ImportError as exc:
            print(exc)
        from runmachine.cli import main
        sys.exit(main(["runs", "--ledger", "postgresql://x@127.0.0.1:1/db"]))
        """
    )
    assert done.returncode == 2, done.stderr
    assert 'pip install "runmachine[postgres]"' in done.stdout
    assert 'pip install "runmachine[postgres]"' in done.stderr


# --------------------------------------------------------------------------------------------
# The driver records into it
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_twenty_concurrent_runs_record_into_one_postgres_ledger(
    emulator: Emulator, openai_client: Any, postgres_ledger_factory: Factory
) -> None:
    ledger = postgres_ledger_factory()
    run_ids: dict[int, str] = {}

    async def one(i: int) -> None:
        assistant = await openai_client.beta.assistants.create(
            model="gpt-4o", tools=Counter.tool_definitions()
        )
        emulator.script(
            assistant.id,
            Scenario()
            .tool_round([("add", {"a": i, "b": 1}), ("note", {"text": f"n{i}"})])
            .reply(f"done {i}"),
        )
        thread = await openai_client.beta.threads.create(
            messages=[{"role": "user", "content": "go"}]
        )
        result = await Counter(openai_client, ledger=ledger).run(
            thread_id=thread.id, assistant_id=assistant.id
        )
        assert result.status == "completed", result
        assert result.run_id is not None
        run_ids[i] = result.run_id

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    ledger.close()

    reopened = postgres_ledger_factory()
    entries = {e.run_id: e for e in await reopened.runs()}
    assert set(entries) == set(run_ids.values())
    for i, run_id in run_ids.items():
        entry = entries[run_id]
        assert entry.status == "completed" and entry.machine.endswith(":Counter")
        assert len(entry.rounds) == 1 and entry.rounds[0].accepted
        assert entry.rounds[0].call_ids == frozenset(entry.calls)
        assert sorted(c.output for c in entry.calls.values()) == sorted([str(i + 1), f"noted n{i}"])
        assert emulator.run_stats(run_id).submissions_accepted == 1
