"""Real processes, real kills: a run driven with a ``SQLiteLedger`` is SIGKILLed at a chosen point,
and a second process resumes it with ``runmachine resume``.

Each run has one round of two parallel calls: ``charge`` (``idempotent=False``) and ``lookup``
(idempotent). Each tool appends to a file before it returns: its side effect, counted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runmachine.testing import Emulator, Faults, Scenario

from ..processes import count as _count
from ..processes import kill, wait_for_point

HERE = Path(__file__).parent

#: kill point -> (times charge ran in all, times lookup ran in all, charge's output is the
#: "interrupted" error). The first process always got as far as running both tools once.
EXPECTED = {
    # Killed inside charge, after its effect: never run again; it gets the error output.
    "mid-charge": (1, 1, True),
    # Killed inside lookup, whose output was never recorded: idempotent, so it runs again.
    "mid-lookup": (1, 2, False),
    # Both outputs recorded; the submit request never left: the recorded outputs are sent.
    "before-submit": (1, 1, False),
    # The server took the outputs and had not answered yet: nothing is sent again.
    "during-submit": (1, 1, False),
    # The server's answer arrived, its stream was not read: nothing is sent again.
    "after-accept": (1, 1, False),
}


def _env(emulator: Emulator, effects: Path, point: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": "test",
        "SHOP_EFFECTS": str(effects),
    }
    env.pop("SHOP_POINT", None)
    return env


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("point", list(EXPECTED))
def test_kill_then_resume(emulator: Emulator, tmp_path: Path, point: str, backend: str) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    ledger = tmp_path / "runs.db"
    faults = Faults(submit_response_delay=2.0) if point == "during-submit" else Faults()
    emulator.enqueue(
        Scenario()
        .tool_round([("charge", {"amount": 5}), ("lookup", {"sku": "sku-1"})])
        .reply("all done")
        .with_faults(faults)
    )

    child = subprocess.Popen(
        [sys.executable, str(HERE / "shop.py"), backend, str(ledger), point],
        env=_env(emulator, effects),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id, _ = wait_for_point(child, point)
        if point == "during-submit":
            _until(lambda: emulator.run_stats(run_id).submissions_accepted == 1, "the submission")
    finally:
        kill(child)

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "runmachine",
            "resume",
            "--ledger",
            str(ledger),
            run_id,
            "shop:Shop",
            "--wait",  # the killed process's lease holds the run for up to a second more
        ],
        env=_env(emulator, effects),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {run_id}: completed after 1 round(s), 2 tool call(s)" in resumed.stdout
    assert "all done" in resumed.stdout

    charges, lookups, interrupted = EXPECTED[point]
    assert (_count(effects, "charge"), _count(effects, "lookup")) == (charges, lookups)

    stats = emulator.run_stats(run_id)
    assert stats.status == "completed"
    assert stats.submissions_accepted == 1
    assert stats.submissions_rejected == 0
    assert stats.cancel_requests == 0
    (outputs,) = stats.tool_outputs
    charge_output, lookup_output = sorted(outputs.values(), key=lambda o: o.startswith("sku"))
    assert lookup_output == "sku-1: in stock"
    if interrupted:
        error = json.loads(charge_output)["error"]
        assert error["type"] == "interrupted" and error["tool"] == "charge"
    else:
        assert charge_output == "charged 5"

    listed = subprocess.run(
        [sys.executable, "-m", "runmachine", "runs", "--ledger", str(ledger), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["run_id"] == run_id and row["status"] == "completed"
    assert (row["rounds"], row["rounds_accepted"], row["calls"], row["calls_finished"]) == (
        1,
        1,
        2,
        2,
    )
    assert row["calls_failed"] == (1 if interrupted else 0)
    assert row["machine"] == "shop:Shop" or row["machine"].endswith(".shop:Shop")
