"""examples/parallel_tools.py against the emulator: the concurrency limit holds, a tool past its
timeout and a tool past the run's deadline get error outputs, and one submission carries all."""

from __future__ import annotations

import json

import pytest

from .example_loader import load

parallel_tools = load("parallel_tools")


@pytest.mark.anyio
@pytest.mark.emulator(run_ttl=8.0)
async def test_limits_timeouts_and_deadline(openai_client, emulator):
    machine, result = await parallel_tools.brief(openai_client)
    assert result.status == "completed"
    assert result.rounds == 1
    assert machine.peak == 2  # tools overlapped, but never more than tool_concurrency
    calls = {c.name: c for c in result.tool_calls}
    assert len(calls) == 6
    for name in ("fetch_weather", "fetch_news", "fetch_traffic", "fetch_calendar"):
        assert calls[name].error is None
    assert calls["fetch_traffic"].output == "light"
    assert "did not finish within 0.5 s" in calls["slow_report"].error
    assert json.loads(calls["slow_report"].output)["error"]["type"] == "timeout"
    assert "before the run's expires_at" in calls["archive_search"].error
    assert json.loads(calls["archive_search"].output)["error"]["type"] == "deadline"
    stats = emulator.run_stats(result.run_id)
    assert stats.status == "completed"
    assert stats.submissions_accepted == 1
    assert stats.tool_outputs[0] == {c.id: c.output for c in result.tool_calls}
