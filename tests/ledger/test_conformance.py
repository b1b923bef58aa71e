"""The ``Ledger`` and ``LeasedLedger`` protocols, one suite for every ledger runmachine ships:
``MemoryLedger``, ``SQLiteLedger`` and ``PostgresLedger`` alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runmachine import MemoryLedger, SQLiteLedger
from runmachine.errors import LeaseLost, RunHeld
from runmachine.ledger import LeasedLedger, Ledger

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def ledger(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryLedger()
    elif request.param == "sqlite":
        sqlite = SQLiteLedger(tmp_path / "runs.db")
        yield sqlite
        sqlite.close()
    else:
        yield request.getfixturevalue("postgres_ledger")


async def test_it_is_a_leased_ledger(ledger: Any) -> None:
    assert isinstance(ledger, Ledger)
    assert isinstance(ledger, LeasedLedger)


async def test_records_round_trip(ledger: Any) -> None:
    await ledger.record_run("run_1", "thread_1", "requires_action", "mod:Cls")
    await ledger.call_started("run_1", "call_a", 1, "charge", '{"amount": 5}')
    await ledger.call_started("run_1", "call_b", 1, "lookup", "{}")
    await ledger.call_finished("run_1", "call_a", 1, "charge", '{"amount": 5}', "ok", None)
    await ledger.round_submitted("run_1", 1, frozenset({"call_a", "call_b"}))
    await ledger.round_accepted("run_1", 1)
    entry = await ledger.load("run_1")
    assert entry is not None
    assert (entry.thread_id, entry.status, entry.machine) == (
        "thread_1",
        "requires_action",
        "mod:Cls",
    )
    assert list(entry.calls) == ["call_a", "call_b"]
    assert entry.calls["call_a"].finished and entry.calls["call_a"].output == "ok"
    assert not entry.calls["call_b"].finished and entry.calls["call_b"].started_at is not None
    (round_1,) = entry.rounds
    assert round_1.call_ids == {"call_a", "call_b"} and round_1.accepted
    assert await ledger.load("run_unknown") is None


async def test_a_finished_call_is_never_overwritten(ledger: Any) -> None:
    await ledger.record_run("run_1", "thread_1", "requires_action", "mod:Cls")
    await ledger.call_finished("run_1", "call_a", 1, "charge", "{}", "first", None)
    await ledger.call_finished("run_1", "call_a", 1, "charge", "{}", "second", "err")
    await ledger.call_started("run_1", "call_a", 1, "charge", "{}")
    entry = await ledger.load("run_1")
    assert entry is not None
    call = entry.calls["call_a"]
    assert (call.output, call.error) == ("first", None)


async def test_a_round_is_recorded_once_and_accepted_once(ledger: Any) -> None:
    await ledger.record_run("run_1", "thread_1", "requires_action", "mod:Cls")
    await ledger.round_submitted("run_1", 1, frozenset({"a"}))
    await ledger.round_submitted("run_1", 1, frozenset({"b"}))
    await ledger.round_accepted("run_1", 1)
    first = await ledger.load("run_1")
    await ledger.round_accepted("run_1", 1)
    again = await ledger.load("run_1")
    assert first is not None and again is not None
    assert first.rounds[0].call_ids == {"a"}
    assert first.rounds[0].accepted_at == again.rounds[0].accepted_at


async def test_empty_thread_and_machine_keep_what_was_recorded(ledger: Any) -> None:
    await ledger.record_run("run_1", "thread_1", "queued", "mod:Cls")
    await ledger.record_run("run_1", "", "completed", "")
    entry = await ledger.load("run_1")
    assert entry is not None
    assert (entry.thread_id, entry.status, entry.machine) == ("thread_1", "completed", "mod:Cls")


async def test_runs_are_listed_oldest_first(ledger: Any) -> None:
    for run_id in ("run_b", "run_a", "run_c"):
        await ledger.record_run(run_id, "t", "queued", "m")
    assert [e.run_id for e in await ledger.runs()] == ["run_b", "run_a", "run_c"]


async def test_one_holder_at_a_time(ledger: Any) -> None:
    lease = await ledger.claim("run_1", "worker-a", 30, thread_id="thread_1", machine="m:C")
    assert (lease.holder, lease.epoch) == ("worker-a", 1)
    entry = await ledger.load("run_1")
    assert entry is not None and entry.thread_id == "thread_1" and entry.status == "pending"
    with pytest.raises(RunHeld, match=r"run run_1 is held by worker-a until \d{4}-") as info:
        await ledger.claim("run_1", "worker-b", 30)
    assert info.value.holder == "worker-a" and info.value.until == pytest.approx(lease.expires_at)
    assert await ledger.lease_of("run_1") == lease


async def test_an_expired_lease_is_taken_over_and_the_old_holder_fenced(ledger: Any) -> None:
    old = await ledger.claim("run_1", "worker-a", 0.05)
    await _after(ledger, old)
    new = await ledger.claim("run_1", "worker-b", 30)
    assert new.epoch == old.epoch + 1
    for write in (
        ledger.record_run("run_1", "t", "requires_action", "m", lease=old),
        ledger.call_started("run_1", "c", 1, "tool", "{}", lease=old),
        ledger.call_finished("run_1", "c", 1, "tool", "{}", "out", None, lease=old),
        ledger.round_submitted("run_1", 1, frozenset({"c"}), lease=old),
        ledger.round_accepted("run_1", 1, lease=old),
    ):
        with pytest.raises(LeaseLost, match=r"worker-a on run run_1 \(epoch 1\) is no longer"):
            await write
    entry = await ledger.load("run_1")
    assert entry is not None and entry.calls == {} and entry.rounds == ()
    with pytest.raises(LeaseLost):
        await ledger.renew(old, 30)
    # The new holder writes.
    await ledger.call_started("run_1", "c", 1, "tool", "{}", lease=new)
    await ledger.round_submitted("run_1", 1, frozenset({"c"}), lease=new)
    entry = await ledger.load("run_1")
    assert entry is not None and "c" in entry.calls and len(entry.rounds) == 1


async def test_renew_extends_and_release_ends(ledger: Any) -> None:
    lease = await ledger.claim("run_1", "worker-a", 5)
    renewed = await ledger.renew(lease, 60)
    assert renewed.epoch == lease.epoch and renewed.expires_at > lease.expires_at
    await ledger.release(renewed)
    assert await ledger.lease_of("run_1") is None
    # Released for good: not an orphan, and anyone may claim it.
    await ledger.record_run("run_1", "t", "requires_action", "m")
    assert await ledger.claim_orphan("worker-b", 30) is None
    again = await ledger.claim("run_1", "worker-b", 30)
    assert again.epoch == lease.epoch + 1  # epochs never repeat


async def test_a_handed_off_run_is_an_orphan_at_once(ledger: Any) -> None:
    await ledger.record_run("run_1", "t", "requires_action", "m")
    lease = await ledger.claim("run_1", "worker-a", 60)
    await ledger.release(lease, handoff=True)
    taken = await ledger.claim_orphan("worker-b", 30)
    assert taken is not None
    new, entry = taken
    assert (new.run_id, new.holder, new.epoch) == ("run_1", "worker-b", lease.epoch + 1)
    assert entry.run_id == "run_1" and entry.thread_id == "t"


async def test_orphans_are_unfinished_runs_whose_lease_expired(ledger: Any) -> None:
    await ledger.record_run("run_done", "t", "completed", "m")
    done = await ledger.claim("run_done", "worker-a", 0.05)
    await ledger.record_run("run_live", "t", "requires_action", "m")
    live = await ledger.claim("run_live", "worker-a", 0.05)
    await ledger.record_run("run_held", "t", "requires_action", "m")
    await ledger.claim("run_held", "worker-a", 60)
    await ledger.record_run("run_never", "t", "requires_action", "m")
    await _after(ledger, done)
    await _after(ledger, live)
    taken = await ledger.claim_orphan("worker-b", 30)
    assert taken is not None and taken[0].run_id == "run_live"
    assert await ledger.claim_orphan("worker-c", 30) is None


async def test_release_of_a_lease_taken_over_does_nothing(ledger: Any) -> None:
    old = await ledger.claim("run_1", "worker-a", 0.05)
    await _after(ledger, old)
    new = await ledger.claim("run_1", "worker-b", 30)
    await ledger.release(old)
    assert await ledger.lease_of("run_1") == new


async def test_the_claim_audit(ledger: Any) -> None:
    first = await ledger.claim("run_1", "worker-a", 0.05)
    await _after(ledger, first)
    second = await ledger.claim("run_1", "worker-b", 30)
    await ledger.release(second)
    claims = await ledger.claims("run_1")
    assert [(c.holder, c.epoch) for c in claims] == [("worker-a", 1), ("worker-b", 2)]
    assert claims[0].released_at is None and claims[0].ended_at == pytest.approx(first.expires_at)
    assert claims[1].released_at is not None
    # No overlap: each claim starts after the one before it ended.
    assert claims[1].claimed_at >= claims[0].ended_at


async def test_concurrent_orphan_claims_never_share_a_run(ledger: Any) -> None:
    for n in range(6):
        await ledger.record_run(f"run_{n}", "t", "requires_action", "m")
        lease = await ledger.claim(f"run_{n}", "dead", 60)
        await ledger.release(lease, handoff=True)
    got: list[str] = []

    async def worker(name: str) -> None:
        while (taken := await ledger.claim_orphan(name, 30)) is not None:
            got.append(taken[0].run_id)

    async with anyio.create_task_group() as tg:
        for name in ("w1", "w2", "w3"):
            tg.start_soon(worker, name)
    assert sorted(got) == [f"run_{n}" for n in range(6)]


async def test_orphans_can_be_limited_to_some_machines(ledger: Any) -> None:
    for run_id, machine in (("run_a", "app:A"), ("run_b", "app:B"), ("run_t", "app:A@sessions")):
        await ledger.record_run(run_id, "t", "requires_action", machine)
        await ledger.release(await ledger.claim(run_id, "dead", 60), handoff=True)
    assert await ledger.claim_orphan("w", 30, machines=[]) is None
    taken = await ledger.claim_orphan("w", 30, machines=["app:B"])
    assert taken is not None and taken[0].run_id == "run_b"
    taken = await ledger.claim_orphan("w", 30, machines=["app:A", "app:A@sessions"])
    assert taken is not None and taken[0].run_id == "run_a"
    taken = await ledger.claim_orphan("w", 30, machines=["app:A", "app:A@sessions"])
    assert taken is not None and taken[0].run_id == "run_t"
    assert await ledger.claim_orphan("w", 30) is None


async def test_a_holder_claiming_again_ends_its_previous_claim(ledger: Any) -> None:
    first = await ledger.claim("run_1", "worker-a", 30)
    second = await ledger.claim("run_1", "worker-a", 30)
    assert second.epoch == first.epoch + 1
    with pytest.raises(LeaseLost):
        await ledger.call_started("run_1", "c", 1, "tool", "{}", lease=first)
    claims = await ledger.claims("run_1")
    assert claims[0].released_at is not None and claims[0].released_at <= claims[1].claimed_at
    assert claims[1].released_at is None


async def _after(ledger: Any, lease: Any) -> None:
    """Wait until ``lease`` has expired on the ledger's own clock (its next claim succeeds)."""
    while True:
        current = await ledger.lease_of(lease.run_id)
        probe = await _expired(ledger, current)
        if probe:
            return
        await anyio.sleep(0.02)


async def _expired(ledger: Any, lease: Any) -> bool:
    import time

    # The ledger's clock is the local one for Memory and SQLite; PostgresLedger exposes its own.
    clock = getattr(ledger, "clock", None)
    now = await clock() if clock is not None else time.time()
    return bool(lease is None or lease.expires_at <= now)
