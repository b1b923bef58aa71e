"""Runs outlive their process: real worker processes take over the runs of dead ones.

The runs are made on the emulator and recorded in a shared ledger as orphans (their holder
gone), each with two tool rounds: ``charge`` (not idempotent; its side effect counted in a file)
then ``lookup``. ``runmachine worker`` processes take them over; the tests kill (SIGKILL), pause
(SIGSTOP) and race them, and check what the server, the side effects and the claim audit show.
Ledgers: ``SQLiteLedger`` (processes of one host) and ``PostgresLedger`` (any number of hosts).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from runmachine import SQLiteLedger
from runmachine.ledger import FINISHED, LeasedLedger
from runmachine.testing import Emulator, Scenario

from .fleet import Fleet

HERE = Path(__file__).parent
TTL = 1.0
MACHINE = "fleet:Fleet"
ROUNDS = (
    Scenario()
    .tool_round([("charge", {"amount": 5})])
    .tool_round([("lookup", {"sku": "sku-1"})])
    .reply("done")
)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    return str(request.getfixturevalue("pg_dsn"))


def _open(url: str) -> Any:
    if url.startswith("postgresql://"):
        from runmachine.postgres_ledger import PostgresLedger

        return PostgresLedger(url)
    return SQLiteLedger(url)


def _env(emulator: Emulator, effects: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": "test",
        "FLEET_EFFECTS": str(effects),
        **extra,
    }


def _orphans(emulator: Emulator, url: str, count: int) -> list[str]:
    """``count`` runs on the server, recorded in the ledger as runs whose holder died."""

    async def make() -> list[str]:
        ledger = _open(url)
        ids = []
        async with openai.AsyncOpenAI(base_url=emulator.base_url, api_key="test") as client:
            assistant = await client.beta.assistants.create(
                model="gpt-4o",
                tools=Fleet.tool_definitions(),  # type: ignore[arg-type]
            )
            for _ in range(count):
                emulator.enqueue(ROUNDS)
                thread = await client.beta.threads.create()
                run = await client.beta.threads.runs.create(
                    thread_id=thread.id, assistant_id=assistant.id
                )
                await ledger.record_run(run.id, thread.id, "queued", MACHINE)
                lease = await ledger.claim(run.id, "a-process-that-died", 60)
                await ledger.release(lease, handoff=True)
                ids.append(run.id)
        ledger.close()
        return ids

    with warnings_off():
        return anyio.run(make)


class warnings_off:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", DeprecationWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


def _worker(emulator: Emulator, effects: Path, url: str, holder: str, **env: str) -> Any:
    """A ``runmachine worker`` process, once it says it is ready (SIGTERM then hands off)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runmachine",
            "worker",
            "--ledger",
            url,
            MACHINE,
            "--holder",
            holder,
            "--lease-ttl",
            str(TTL),
            "--poll-interval",
            "0.05",
        ],
        env=_env(emulator, effects, **env),
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        ready = child.stdout.readline()
    finally:
        watchdog.cancel()
    assert ready.startswith("runmachine worker: taking over"), ready + child.stderr.read()
    return child


def _entries(url: str) -> list[Any]:
    async def read() -> list[Any]:
        ledger = _open(url)
        try:
            return list(await ledger.runs())
        finally:
            ledger.close()

    return anyio.run(read)


def _claims(url: str, run_ids: list[str]) -> dict[str, list[Any]]:
    async def read() -> dict[str, list[Any]]:
        ledger: LeasedLedger = _open(url)
        try:
            return {run_id: await ledger.claims(run_id) for run_id in run_ids}
        finally:
            ledger.close()  # type: ignore[attr-defined]

    return anyio.run(read)


def _until(condition: Callable[[], bool], what: str, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate()


def _stop(child: Any) -> str:
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return str(out)


def test_a_fleet_with_workers_killed_at_random_drives_every_run_once(
    emulator: Emulator, tmp_path: Path, ledger_url: str, processes: list[Any]
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    runs = _orphans(emulator, ledger_url, 60)
    rng = random.Random(1729)
    workers = {}
    for n in range(3):
        workers[n] = _worker(emulator, effects, ledger_url, f"w{n}.0")
        processes.append(workers[n])

    def finished() -> bool:
        return all(e.status in FINISHED for e in _entries(ledger_url))

    for kill in range(6):
        time.sleep(rng.uniform(0.1, 0.8))  # a random moment: whatever it hits must be survived
        if finished():
            break
        victim = rng.randrange(3)
        workers[victim].kill()  # SIGKILL: no handler, no cleanup
        workers[victim].communicate()
        workers[victim] = _worker(emulator, effects, ledger_url, f"w{victim}.{kill + 1}")
        processes.append(workers[victim])
    _until(finished, "every run to finish")
    for child in workers.values():
        _stop(child)

    entries = {e.run_id: e for e in _entries(ledger_url)}
    assert sorted(entries) == sorted(runs)
    charges = _lines(effects / "charge")
    for run_id in runs:
        entry = entries[run_id]
        assert entry.status == "completed", (run_id, entry.status)
        stats = emulator.run_stats(run_id)
        assert stats.status == "completed"
        assert stats.submissions_accepted == 2  # each round accepted once, never twice
        (charge,) = [c for c in entry.calls.values() if c.name == "charge"]
        assert charges.count(run_id) <= 1  # the side effect at most once, fleet-wide
        if charge.error is None:
            assert charges.count(run_id) == 1  # and exactly once where the output shows it
    # No two holders ever drove one run at the same time.
    for run_id, claims in _claims(ledger_url, runs).items():
        ordered = sorted(claims, key=lambda c: c.claimed_at)
        for before, after in itertools.pairwise(ordered):
            assert after.claimed_at >= before.ended_at, (run_id, before, after)


def test_a_paused_worker_cannot_write_or_submit_after_another_took_over(
    emulator: Emulator, tmp_path: Path, ledger_url: str, processes: list[Any]
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    hold = tmp_path / "hold"
    (run_id,) = _orphans(emulator, ledger_url, 1)
    paused = _worker(emulator, effects, ledger_url, "paused", FLEET_HOLD=str(hold))
    processes.append(paused)
    _until(lambda: run_id in _lines(effects / "charge-started"), "the charge to start")
    paused.send_signal(signal.SIGSTOP)
    try:
        taker = _worker(emulator, effects, ledger_url, "taker")
        processes.append(taker)
        _until(
            lambda: (
                next(e for e in _entries(ledger_url) if e.run_id == run_id).status == "completed"
            ),
            "the other worker to finish the run",
        )
        hold.touch()  # the paused charge may now return...
    finally:
        paused.send_signal(signal.SIGCONT)
    # ...and its late write is refused: the paused worker stops the run, submitting nothing.
    out = _stop(paused) + _stop(taker)
    assert "1 taken by others" in out
    stats = emulator.run_stats(run_id)
    assert stats.status == "completed"
    assert stats.submissions_accepted == 2 and stats.submissions_received == 2
    (entry,) = [e for e in _entries(ledger_url) if e.run_id == run_id]
    (charge,) = [c for c in entry.calls.values() if c.name == "charge"]
    assert charge.error is not None and "not run again" in charge.error
    # The paused charge's effect: once if it returned before the paused worker learned of the
    # takeover (its write was then refused), not at all if it was stopped first; never twice.
    assert _lines(effects / "charge") in ([], [run_id])
    claims = _claims(ledger_url, [run_id])[run_id]
    assert [c.holder for c in claims][-1] == "taker"


def test_two_processes_resuming_one_run_on_sqlite_one_drives_the_other_is_told(
    emulator: Emulator, tmp_path: Path, processes: list[Any]
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    hold = tmp_path / "hold"
    url = str(tmp_path / "runs.db")
    (run_id,) = _orphans(emulator, url, 1)

    def resume() -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "runmachine", "resume", "--ledger", url, run_id, MACHINE],
            env=_env(emulator, effects, FLEET_HOLD=str(hold)),
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = resume()
    processes.append(first)
    _until(lambda: run_id in _lines(effects / "charge-started"), "the first to drive")
    second = resume()
    processes.append(second)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 4, err
    assert f"run {run_id} is held by " in err and " until " in err
    hold.touch()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert f"run {run_id}: completed" in out
    assert _lines(effects / "charge") == [run_id]
    assert emulator.run_stats(run_id).submissions_accepted == 2
