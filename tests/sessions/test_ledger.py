"""Turns survive their process: real processes, real kills, ``runmachine resume`` in a new one.

A turn driven with a ``SQLiteLedger`` is SIGKILLed at a chosen point of its one round (two
parallel calls: ``charge``, not idempotent, and ``lookup``); a second process resumes it with
``runmachine resume``. Each tool appends to a file before it returns: its side effect, counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from runmachine import SQLiteLedger
from runmachine.testing import Emulator, TurnScenario

from ..processes import count as _count
from ..processes import kill, wait_for_point
from .desk import Desk

HERE = Path(__file__).parent
ROUND = TurnScenario().tool_round([("charge", {"amount": 5}), ("lookup", {"sku": "sku-1"})])

#: kill point -> (times charge ran in all, times lookup ran in all, charge's result is the
#: "interrupted" error).
EXPECTED = {
    "mid-charge": (1, 1, True),
    "mid-lookup": (1, 2, False),
    "before-submit": (1, 1, False),
    "after-accept": (1, 1, False),
}


def _env(emulator: Emulator, effects: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": "test",
        "DESK_EFFECTS": str(effects),
    }
    env.pop("DESK_POINT", None)
    return env


def _resume(emulator: Emulator, effects: Path, ledger: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runmachine", "resume", "--ledger", str(ledger), *args],
        env=_env(emulator, effects),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("point", list(EXPECTED))
def test_kill_then_resume_a_turn(
    emulator: Emulator, tmp_path: Path, point: str, backend: str
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    ledger = tmp_path / "turns.db"
    emulator.enqueue_turn(ROUND.reply("all done"))
    child = subprocess.Popen(
        [sys.executable, str(HERE / "desk.py"), backend, str(ledger), point],
        env=_env(emulator, effects),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        turn_id, _ = wait_for_point(child, point)
    finally:
        kill(child)

    out = _resume(emulator, effects, ledger, turn_id, "desk:Desk", "--wait")
    assert f"turn {turn_id}: completed" in out
    charge_runs, lookup_runs, interrupted = EXPECTED[point]
    assert (_count(effects, "charge"), _count(effects, "lookup")) == (charge_runs, lookup_runs)
    stats = emulator.turn_stats(turn_id)
    assert stats.status == "completed"
    assert sorted(stats.results_applied.values()) == [1, 1]  # never a second result
    sent = {o["call_id"]: o for o in stats.outputs.values()}
    assert len(sent) == 2
    charge = next(o for o in sent.values() if o.get("output") != "sku-1: in stock")
    assert (charge["success"] is False) == interrupted
    if interrupted:
        assert "is not idempotent, so it was not run again" in charge["error"]

    listed = subprocess.run(
        [sys.executable, "-m", "runmachine", "runs", "--ledger", str(ledger), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["kind"] == "turn" and row["run_id"] == turn_id
    assert row["status"] == "completed" and row["machine"] == "desk:Desk"


@pytest.mark.anyio
async def test_an_approval_left_pending_is_answered_from_a_new_process(
    emulator: Emulator, tmp_path: Path, anyio_backend: str
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    ledger = tmp_path / "turns.db"
    emulator.enqueue_turn(TurnScenario().approval("mcp").reply("Searched."))
    async with openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key="test", _strict_response_validation=True
    ) as client:
        machine = Desk(client, ledger=SQLiteLedger(ledger))
        result = await machine.create_session(
            environment={"type": "none"}, agent={"model": "gpt-test"}, input="search"
        )
    assert result.status == "requires_action"
    (pending,) = result.pending_approvals
    turn_id = result.turn_id or ""
    assert emulator.turn_stats(turn_id).approvals == {}

    # Hours later, in another process: the ledger knows the turn is a turn, and where it lives.
    out = _resume(emulator, effects, ledger, turn_id, "desk:Desk", "--approve", pending.request_id)
    assert f"turn {turn_id}: completed" in out
    assert "Searched." in out
    assert emulator.turn_stats(turn_id).approvals == {pending.request_id: "approve"}


def test_resume_of_a_turn_still_waiting_says_on_what(emulator: Emulator, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    ledger = tmp_path / "turns.db"
    emulator.enqueue_turn(TurnScenario().approval("mcp").reply("Searched."))
    child = subprocess.run(
        [sys.executable, str(HERE / "desk.py"), "asyncio", str(ledger), "none"],
        env=_env(emulator, effects),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    _, status, turn_id, _ = child.stdout.split()
    assert status == "requires_action"
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "runmachine",
            "resume",
            "--ledger",
            str(ledger),
            turn_id,
            "desk:Desk",
        ],
        env=_env(emulator, effects),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "waiting on approval request(s) apr_" in again.stdout
