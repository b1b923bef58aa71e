"""examples/agent_session.py against the emulator: a session's two turns with their tools, then a
turn whose approvals are the policy's (a trusted MCP server) and a person's (via ``resume``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .example_loader import EXAMPLES, load

example = load("agent_session")


@pytest.fixture
def scripted(emulator):
    """The emulator, with the agent's turns the example expects queued in order."""
    for scenario in example.EMULATED_TURNS:
        emulator.enqueue_turn(scenario)
    return emulator


@pytest.mark.anyio
async def test_a_session_and_a_second_turn_on_it(openai_client, scripted):
    first, second = await example.plan_trip(openai_client)
    assert (first.status, first.rounds) == ("completed", 1)
    # Both tools of the first turn were asked in one round, and both answered.
    assert sorted((r.name, r.output) for r in first.tool_calls) == [
        ("get_weather", "sunny, 24 C"),
        ("local_time", "14:05"),
    ]
    assert first.text == 'get_weather returned "sunny, 24 C". local_time returned "14:05".'
    assert second.session_id == first.session_id and second.turn_id != first.turn_id
    assert (second.status, second.text) == ("completed", 'get_weather returned "cloudy, 19 C".')
    # The agent got the class's two tools and the two MCP servers.
    snapshot = scripted.sessions_snapshot(first.session_id)
    tools = snapshot["agent"]["tools"]
    assert [t["name"] for t in tools if t["type"] == "function"] == ["get_weather", "local_time"]
    assert [t["server_label"] for t in tools if t["type"] == "mcp"] == ["docs", "bookings"]
    for result in (first, second):
        stats = scripted.turn_stats(result.turn_id)
        assert stats.status == "completed"
        assert set(stats.results_applied.values()) == {1}


@pytest.mark.anyio
async def test_the_policy_approves_the_trusted_server_and_leaves_the_rest_waiting(
    openai_client, scripted
):
    first, _ = await example.plan_trip(openai_client)
    waiting = await example.ask_to_book(openai_client, first.session_id)

    assert waiting.status == "requires_action"
    (pending,) = waiting.pending_approvals
    assert pending.type == "mcp_approval_request"
    assert (pending.request.server_label, pending.request.name) == ("bookings", "book_hotel")
    # The server has the policy's answer to the docs lookup, and nothing for the booking.
    stats = scripted.turn_stats(waiting.turn_id)
    assert stats.status == "waiting"
    ((docs_request, decision),) = stats.approvals.items()
    assert decision == "approve" and docs_request != pending.request_id
    assert scripted.sessions_snapshot(first.session_id)["status"] == "requires_action"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("decision", "text"),
    [
        ("approve", 'book_hotel returned "book_hotel ran on bookings.".'),
        ("deny", "The call to book_hotel on bookings was denied."),
    ],
)
async def test_a_person_answers_the_waiting_request_with_resume(
    openai_client, scripted, decision, text
):
    first, _ = await example.plan_trip(openai_client)
    waiting = await example.ask_to_book(openai_client, first.session_id)
    (pending,) = waiting.pending_approvals

    done = await example.answer(openai_client, waiting, decision)

    assert done.turn_id == waiting.turn_id
    assert (done.status, done.pending_approvals) == ("completed", ())
    # The agent's answer speaks of both requests: the policy's approval, then the person's.
    assert done.text == f'search_docs returned "search_docs ran on docs.". {text}'
    stats = scripted.turn_stats(done.turn_id)
    assert stats.status == "completed"
    assert stats.approvals[pending.request_id] == decision
    assert len(stats.approvals) == 2


def test_the_example_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_session.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5, done.stdout
    assert lines[0].endswith(
        'completed after 1 round(s): get_weather returned "sunny, 24 C". '
        'local_time returned "14:05".'
    )
    assert lines[2].endswith("requires_action after 2 round(s): ")
    assert lines[3].startswith("  waiting on apr_") and lines[3].endswith("book_hotel on bookings")
    assert lines[4].endswith(
        'completed after 1 round(s): search_docs returned "search_docs ran on docs.". '
        'book_hotel returned "book_hotel ran on bookings.".'
    )
    assert "Traceback" not in done.stderr
