"""Fixtures of the ledger tests: a real PostgreSQL server for the session, a fresh database and a
``PostgresLedger`` on it for each test.

The server is started only when a test asks for it (``pg_server``, ``pg_dsn``,
``postgres_ledger``). Where this machine has no PostgreSQL server programs those tests skip, with
the reason; in CI (the ``CI`` environment variable, which ``.ci/run``'s runner sets) they fail
instead, so a missing install never passes as a green run.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ledger import pg_server as pg

_databases = itertools.count(1)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server of this machine's, in a temporary directory, for the whole session."""
    try:
        server = pg.start()
    except pg.ServerUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc}; in CI the PostgreSQL tests must run, not skip")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: pg.PostgresServer) -> Iterator[str]:
    """The DSN of a new, empty database on the session's server (dropped after the test)."""
    name = f"rm_test_{next(_databases)}_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def postgres_ledger_factory(pg_dsn: str) -> Iterator[Callable[..., Any]]:
    """``open(**options)``: another ``PostgresLedger`` on the test's database (closed after)."""
    from runmachine.postgres_ledger import PostgresLedger

    opened: list[PostgresLedger] = []

    def open_ledger(**options: Any) -> PostgresLedger:
        ledger = PostgresLedger(pg_dsn, **options)
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()


@pytest.fixture
def postgres_ledger(postgres_ledger_factory: Callable[..., Any]) -> Any:
    """A ``PostgresLedger`` on a fresh database of the session's server."""
    return postgres_ledger_factory()
