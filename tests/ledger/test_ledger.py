"""The ledger: both implementations, the SQLite file's checks, and the driver recording into it
under concurrency (50 runs in one process, two processes on one file)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from runmachine import LedgerError, MemoryLedger, SQLiteLedger
from runmachine.ledger import Ledger, interrupted_output
from runmachine.sqlite_ledger import SCHEMA_VERSION
from runmachine.testing import Emulator, Scenario

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from shop import Counter  # noqa: E402


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryLedger()
        return
    sqlite = SQLiteLedger(tmp_path / "runs.db")
    yield sqlite
    sqlite.close()


async def test_records_round_trip(ledger: Ledger) -> None:
    assert isinstance(ledger, Ledger)
    assert await ledger.load("run_1") is None
    await ledger.record_run("run_1", "thread_1", "requires_action", "app:Shop")
    await ledger.call_started("run_1", "call_a", 1, "charge", '{"amount": 5}')
    await ledger.call_started("run_1", "call_b", 1, "lookup", '{"sku": "x"}')
    await ledger.call_finished("run_1", "call_a", 1, "charge", '{"amount": 5}', "charged", None)
    entry = await ledger.load("run_1")
    assert entry is not None
    assert (entry.thread_id, entry.status, entry.machine) == (
        "thread_1",
        "requires_action",
        "app:Shop",
    )
    a, b = entry.calls["call_a"], entry.calls["call_b"]
    assert a.finished and a.output == "charged" and a.started_at is not None
    assert a.finished_at is not None and a.finished_at >= a.started_at
    assert not b.finished and b.started_at is not None and b.output is None
    assert entry.rounds == () and entry.last_round == 1

    await ledger.call_finished("run_1", "call_b", 1, "lookup", '{"sku": "x"}', "{}", "boom")
    await ledger.round_submitted("run_1", 1, frozenset({"call_a", "call_b"}))
    entry = await ledger.load("run_1")
    assert entry is not None
    sent = entry.round_for(["call_b", "call_a"])
    assert sent is not None and sent.round == 1 and not sent.accepted
    await ledger.round_accepted("run_1", 1)
    await ledger.record_run("run_1", "", "completed", "")
    entry = await ledger.load("run_1")
    assert entry is not None
    sent = entry.round_for({"call_a", "call_b"})
    assert sent is not None and sent.accepted
    assert entry.round_for({"call_a"}) is None
    assert entry.calls["call_b"].error == "boom"
    # An empty thread or machine never erases what was recorded.
    assert (entry.thread_id, entry.status, entry.machine) == ("thread_1", "completed", "app:Shop")


async def test_a_finished_call_is_never_overwritten(ledger: Ledger) -> None:
    await ledger.record_run("run_1", "thread_1", "requires_action", "")
    await ledger.call_finished("run_1", "call_a", 1, "charge", "{}", "first", None)
    await ledger.call_started("run_1", "call_a", 1, "charge", "{}")
    await ledger.call_finished("run_1", "call_a", 1, "charge", "{}", "second", "late")
    await ledger.round_submitted("run_1", 1, frozenset({"call_a"}))
    await ledger.round_submitted("run_1", 1, frozenset({"call_other"}))
    entry = await ledger.load("run_1")
    assert entry is not None
    assert entry.calls["call_a"].output == "first" and entry.calls["call_a"].error is None
    assert [r.call_ids for r in entry.rounds] == [frozenset({"call_a"})]


async def test_runs_lists_every_run_oldest_first(ledger: Ledger) -> None:
    for i in range(3):
        await ledger.record_run(f"run_{i}", f"thread_{i}", "queued", "")
    await ledger.record_run("run_0", "thread_0", "completed", "")
    assert [r.run_id for r in await ledger.runs()] == ["run_0", "run_1", "run_2"]


def test_interrupted_output_names_the_tool_and_the_reason() -> None:
    error = json.loads(interrupted_output("charge"))["error"]
    assert error["type"] == "interrupted" and error["tool"] == "charge"
    assert "not idempotent" in error["message"] and "not run again" in error["message"]


# --------------------------------------------------------------------------------------------
# The file: WAL, schema version, refusals that leave the file untouched
# --------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_file_is_a_versioned_wal_ledger(tmp_path: Path) -> None:
    SQLiteLedger(tmp_path / "runs.db").close()
    db = sqlite3.connect(tmp_path / "runs.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    # Opening it again finds the same schema and changes nothing.
    SQLiteLedger(tmp_path / "runs.db").close()


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SQLiteLedger(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = _digest(path)
    with pytest.raises(LedgerError, match=rf"schema version {SCHEMA_VERSION + 1}, newer") as info:
        SQLiteLedger(path)
    assert str(path) in str(info.value) and "upgrade runmachine" in str(info.value)
    assert _digest(path) == before


def test_a_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(os.urandom(8192))
    before = _digest(path)
    with pytest.raises(LedgerError, match="not a SQLite file") as info:
        SQLiteLedger(path)
    assert str(path) in str(info.value)
    assert _digest(path) == before


def test_a_damaged_ledger_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SQLiteLedger(path).close()
    data = bytearray(path.read_bytes())
    # Keep the header, wreck the schema page that follows it.
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(LedgerError, match="left untouched"):
        SQLiteLedger(path)
    assert _digest(path) == before


def test_a_sqlite_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER)")
    db.commit()
    db.close()
    before = _digest(path)
    with pytest.raises(LedgerError, match=r"not a runmachine ledger.*customers"):
        SQLiteLedger(path)
    assert _digest(path) == before


# --------------------------------------------------------------------------------------------
# The driver records into the ledger
# --------------------------------------------------------------------------------------------


def _scenario(i: int) -> Scenario:
    return (
        Scenario()
        .tool_round([("add", {"a": i, "b": 1}), ("note", {"text": f"n{i}"})])
        .reply(f"done {i}")
    )


async def _one_run(client: Any, ledger: Ledger, emulator: Emulator, i: int) -> str:
    assistant = await client.beta.assistants.create(
        model="gpt-4o", tools=Counter.tool_definitions()
    )
    emulator.script(assistant.id, _scenario(i))
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "go"}])
    result = await Counter(client, ledger=ledger).run(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert result.status == "completed", result
    assert result.run_id is not None
    return result.run_id


def _check_complete(entry: Any, i: int | None = None) -> None:
    assert entry.status == "completed"
    assert entry.machine.endswith(":Counter")
    assert len(entry.calls) == 2 and all(c.finished for c in entry.calls.values())
    assert len(entry.rounds) == 1 and entry.rounds[0].accepted
    assert entry.rounds[0].call_ids == frozenset(entry.calls)
    outputs = sorted(c.output for c in entry.calls.values())
    if i is not None:
        assert outputs == sorted([str(i + 1), f"noted n{i}"])


async def test_fifty_concurrent_runs_share_one_sqlite_ledger(
    emulator: Emulator, openai_client: Any, tmp_path: Path
) -> None:
    ledger = SQLiteLedger(tmp_path / "runs.db")
    run_ids: dict[int, str] = {}

    async def one(i: int) -> None:
        run_ids[i] = await _one_run(openai_client, ledger, emulator, i)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    ledger.close()

    reopened = SQLiteLedger(tmp_path / "runs.db")
    entries = {e.run_id: e for e in await reopened.runs()}
    reopened.close()
    assert set(entries) == set(run_ids.values())
    for i, run_id in run_ids.items():
        _check_complete(entries[run_id], i)
        assert emulator.run_stats(run_id).submissions_accepted == 1


def test_two_processes_share_one_ledger_file(emulator: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    env = {**os.environ, "OPENAI_BASE_URL": emulator.base_url, "OPENAI_API_KEY": "test"}
    children = [
        subprocess.Popen(
            [sys.executable, str(HERE / "many.py"), backend, str(path), "15"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in ("asyncio", "trio")
    ]
    run_ids: list[str] = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        run_ids += out.split()
    assert len(run_ids) == 30

    async def read() -> list[Any]:
        ledger = SQLiteLedger(path)
        try:
            return await ledger.runs()
        finally:
            ledger.close()

    entries = {e.run_id: e for e in anyio.run(read)}
    assert set(entries) == set(run_ids)
    for entry in entries.values():
        _check_complete(entry)
