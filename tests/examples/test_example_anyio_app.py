"""examples/anyio_app.py against the emulator, on asyncio and trio: runs at once on one client,
and the one cancelled from outside is cancelled on the server too."""

from __future__ import annotations

import pytest

from .example_loader import load

anyio_app = load("anyio_app")


@pytest.mark.anyio
async def test_many_runs_one_cancelled_from_outside(openai_client, emulator):
    outcomes = {o.city: o for o in await anyio_app.app(openai_client)}
    assert set(outcomes) == set(anyio_app.CITIES)
    for city in ("Paris", "Oslo", "Lima"):
        outcome = outcomes[city]
        assert outcome.status == "completed"
        assert outcome.text == f'get_weather returned "mild in {city}".'
        assert emulator.run_stats(outcome.run_id).status == "completed"
    stuck = outcomes["Kyoto"]
    assert stuck.status == "cancelled by the app"
    assert stuck.text == "server run status: cancelled"
    stats = emulator.run_stats(stuck.run_id)
    assert stats.status == "cancelled"
    assert stats.cancel_requests == 1
    assert stats.submissions_received == 0  # the waiting tool never produced an output
    assert len({o.run_id for o in outcomes.values()}) == 4
    assert len({o.thread_id for o in outcomes.values()}) == 4
