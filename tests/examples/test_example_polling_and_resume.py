"""examples/polling_and_resume.py against the emulator: a run driven by polling alone, and a run
started elsewhere and taken over by id."""

from __future__ import annotations

import pytest

from .example_loader import load

example = load("polling_and_resume")


@pytest.mark.anyio
async def test_polling(openai_client, emulator):
    machine, result = await example.by_polling(openai_client)
    assert result.status == "completed"
    assert machine.entered == ["requires_action", "completed"]
    assert result.text == 'shipping_quote returned "12 EUR to Norway".'
    stats = emulator.run_stats(result.run_id)
    assert stats.requests.get("retrieve_run", 0) >= 2
    assert stats.submissions_accepted == 1
    assert stats.tool_outputs == ({result.tool_calls[0].id: "12 EUR to Norway"},)


@pytest.mark.anyio
async def test_resume(openai_client, emulator):
    status_before, result = await example.by_resume(openai_client)
    assert status_before == "requires_action"
    assert result.status == "completed"
    first = result.transitions[0]
    assert (first.source, first.trigger, first.dest) == ("pending", "adopt", "requires_action")
    assert result.text == 'shipping_quote returned "12 EUR to Chile".'
    stats = emulator.run_stats(result.run_id)
    assert stats.submissions_accepted == 1
