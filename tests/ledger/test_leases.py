"""How the driver holds its lease: the edges a review found (each was a bug, now a test).

Real SDK over real HTTP to the emulator, on asyncio and trio, with an ``SQLiteLedger`` file shared
by two machines standing for two hosts. A ledger subclass stands for a database link that stalls
or fails (the ledger is ours; the SDK is not touched).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from runmachine import LeaseLost, LedgerError, RunHeld, RunMachine, SQLiteLedger, tool
from runmachine.testing import Emulator, Scenario

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROUND = Scenario().tool_round([("lookup", {"sku": "a"})]).reply("done")


class Shop(RunMachine):
    started: anyio.Event

    @tool
    async def lookup(self, sku: str) -> str:
        """Look a product up (slowly, when asked to)."""
        started = getattr(type(self), "started", None)
        if started is not None and not started.is_set():
            started.set()
            await anyio.sleep_forever()
        return "in stock"


class Stalled(SQLiteLedger):
    """A ledger whose link stalls for renewals: they never answer."""

    async def renew(self, lease: Any, ttl: float) -> Any:
        await anyio.sleep_forever()


class LastWriteFails(SQLiteLedger):
    """A ledger that fails the run's last status write once (a short outage)."""

    async def record_run(self, *args: Any, **kwargs: Any) -> None:
        if args[2] == "completed":
            raise sqlite3.OperationalError("database is locked")
        await super().record_run(*args, **kwargs)


async def _thread_and_assistant(client: openai.AsyncOpenAI) -> tuple[str, str]:
    assistant = await client.beta.assistants.create(
        model="gpt-4o",
        tools=Shop.tool_definitions(),  # type: ignore[arg-type]
    )
    thread = await client.beta.threads.create()
    return thread.id, assistant.id


async def _unless_held(machine: RunMachine, run_id: str) -> Any:
    try:
        return await machine.resume(run_id=run_id)
    except RunHeld as held:
        if held.holder != "host-a":
            raise
        return None


async def test_a_holder_whose_renewals_stall_stops_and_never_cancels_the_run(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "runs.db"
    thread_id, assistant_id = await _thread_and_assistant(openai_client)
    emulator.enqueue(ROUND)

    class Slow(Shop):
        started = anyio.Event()

    a = Slow(openai_client, ledger=Stalled(path), lease_ttl=0.3, lease_holder="host-a")
    with pytest.raises(LeaseLost, match=r"could not be renewed within its 0\.3 s"):
        await a.run(thread_id=thread_id, assistant_id=assistant_id)
    run_id = a.run_id or ""
    # A stopped without cancelling: the run waits for whoever takes it over next.
    assert emulator.run_stats(run_id).cancel_requests == 0
    b = Shop(openai_client, ledger=SQLiteLedger(path), lease_holder="host-b")
    with anyio.fail_after(30):
        while (result := await _unless_held(b, run_id)) is None:
            await anyio.sleep(0.05)  # A's lease, until it has run out on the ledger's clock
    assert result.status == "completed"
    assert emulator.run_stats(run_id).cancel_requests == 0


async def test_hand_off_as_the_run_finishes_is_not_a_hand_off(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, tmp_path: Path
) -> None:
    class Finisher(Shop):
        def on_enter_completed(self, run: Any) -> None:
            self.hand_off()  # a worker's stop, at this very instant

    ledger = SQLiteLedger(tmp_path / "runs.db")
    thread_id, assistant_id = await _thread_and_assistant(openai_client)
    emulator.enqueue(ROUND)
    machine = Finisher(openai_client, ledger=ledger)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    entry = await ledger.load(machine.run_id or "")
    assert entry is not None and entry.status == "completed"
    assert await ledger.claim_orphan("next-worker", 5) is None


async def test_the_lease_is_released_when_the_last_status_write_fails(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, tmp_path: Path
) -> None:
    ledger = LastWriteFails(tmp_path / "runs.db")
    thread_id, assistant_id = await _thread_and_assistant(openai_client)
    emulator.enqueue(ROUND)
    machine = Shop(openai_client, ledger=ledger)
    with pytest.raises(LedgerError, match="failed to record run"):
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert machine.state == "completed"
    assert await ledger.lease_of(machine.run_id or "") is None
    assert await ledger.claim_orphan("next-worker", 5) is None


async def test_a_resume_that_cannot_read_the_run_hands_it_off_instead_of_stranding_it(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, tmp_path: Path
) -> None:
    from runmachine import RunAborted
    from runmachine.testing import HTTPFault

    ledger = SQLiteLedger(tmp_path / "runs.db")
    thread_id, assistant_id = await _thread_and_assistant(openai_client)
    emulator.enqueue(ROUND)
    run = await openai_client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id
    )
    await ledger.record_run(run.id, thread_id, "queued", "x:Shop")
    for nth in range(1, 40):
        emulator.inject(HTTPFault("retrieve_run", nth=nth, status=503))
    machine = Shop(openai_client, ledger=ledger, recovery_attempts=2)
    with pytest.raises(RunAborted, match="gave up reading run"):
        await machine.resume(run_id=run.id)
    # Not cancelled (it could not be read), and not stranded: any worker may take it over now.
    taken = await ledger.claim_orphan("worker", 5)
    assert taken is not None and taken[0].run_id == run.id


async def test_run_worker_takes_an_orphan_over_and_stops_when_told(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, tmp_path: Path
) -> None:
    # The library call, in this process, on asyncio and trio: an orphan of its class is
    # driven to its end; one of another class is left alone; stop ends the loop.
    from runmachine.machine import importable_name
    from runmachine.worker import run_worker

    ledger = SQLiteLedger(tmp_path / "runs.db")
    thread_id, assistant_id = await _thread_and_assistant(openai_client)
    emulator.enqueue(ROUND)
    run = await openai_client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id
    )
    for run_id, machine in ((run.id, importable_name(Shop)), ("run_other", "elsewhere:Other")):
        await ledger.record_run(run_id, thread_id, "queued", machine)
        await ledger.release(await ledger.claim(run_id, "dead", 60), handoff=True)
    stop = anyio.Event()
    finished: list[str] = []

    def on_result(entry: Any, result: Any) -> None:
        finished.append(f"{entry.run_id}:{result.status}")
        stop.set()

    with anyio.fail_after(60):
        stats = await run_worker(
            Shop, ledger, openai_client, stop=stop, poll_interval=0.05, on_result=on_result
        )
    assert finished == [f"{run.id}:completed"]
    assert (stats.taken, stats.finished, stats.failed) == (1, 1, 0)
    other = await ledger.lease_of("run_other")
    assert other is not None and other.holder == "dead"  # not its class: not taken
