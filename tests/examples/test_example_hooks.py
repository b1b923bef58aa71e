"""examples/hooks.py against the emulator: its hooks log the run, in order, as it happens."""

from __future__ import annotations

import json
import logging

import pytest

from .example_loader import load

hooks = load("hooks")


@pytest.mark.anyio
async def test_hooks_log_the_run(openai_client, emulator, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="support_bot")
    result = await hooks.ask(openai_client, hooks.QUESTION)
    assert result.status == "completed"
    assert result.rounds == 1
    run_id = result.run_id
    lines = [r.getMessage() for r in caplog.records if r.name == "support_bot"]
    assert lines[0] == f"run {run_id} queued (thread {result.thread_id})"
    assert lines[1] == (
        f'run {run_id} needs 2 tool call(s): lookup_order{{"order_id": "A1"}}, refund_policy{{}}'
    )
    assert lines[2] == f"run {run_id}: the server took the outputs"
    assert lines[3] == lines[0]  # queued again after the submission
    assert lines[4].startswith("assistant said (")
    assert 'refund_policy returned "30 days, no questions asked".' in lines[4]
    assert lines[5].startswith(f"run {run_id} completed (")
    assert len(lines) == 6
    # What the server received: both outputs, in one submission.
    stats = emulator.run_stats(run_id)
    assert stats.submissions_accepted == 1
    (outputs,) = stats.tool_outputs
    assert sorted(outputs.values()) == [
        "30 days, no questions asked",
        json.dumps({"order_id": "A1", "status": "shipped on Monday"}),
    ]
