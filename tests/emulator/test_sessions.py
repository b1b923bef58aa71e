"""The agent-sessions API of the emulator, driven by the real SDK (strict validation) over HTTP:
each scenario operation's event sequence, inputs, cancellation, creation streams, listings,
404s and the toy model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from runmachine.testing import Emulator, TurnScenario

from .session_support import (
    END,
    REPLY,
    START,
    TOOLS,
    T,
    answer_approvals,
    answer_tools,
    message,
    new_session,
    round_of,
    run_turn,
    strict_client,
    types,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(emulator_url: str, anyio_backend: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with strict_client(emulator_url) as client:
        yield client


async def test_a_reply_streams_token_by_token(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    assert (session.status, session.object, session.required_actions) == (
        "idle",
        "agent.session",
        [],
    )
    emulator.enqueue_turn(TurnScenario.text("Hello there, friend!"))
    events = await run_turn(client, session.id)
    assert types(events) == [*START, *REPLY, *END]
    deltas = [e.delta for e in events if e.type == T + "output_text.delta"]
    assert deltas == ["Hello", " there", ",", " friend", "!"]
    done = next(e for e in events if e.type == T + "item.done")
    assert done.item.type == "message" and done.item.status == "completed"
    assert done.item.content[0].text == "Hello there, friend!"
    assert done.item.phase == "final_answer"
    created, completed = events[0], events[-2]
    assert created.turn.status == "queued" and created.turn.session_id == session.id
    assert completed.turn.status == "completed" and completed.usage is not None
    assert completed.turn.usage == completed.usage
    assert len({e.event_id for e in events}) == len(events)
    assert {e.turn_id for e in events if hasattr(e, "turn_id")} == {created.turn_id}
    idle = events[-1]
    assert idle.session.status == "idle" and idle.session.usage is not None
    turn = await client.beta.agents.sessions.turns.retrieve(created.turn_id, session_id=session.id)
    assert turn.status == "completed" and turn.started_at is not None and turn.completed_at


async def test_a_tool_round_waits_for_every_result_then_goes_on(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(
        TurnScenario()
        .tool_round([("get_weather", {"city": "Paris"}), ("get_rain", {"city": "Paris"})])
        .reply("Sunny, no rain.")
    )
    seen_waiting: list[str] = []

    async def answer(event: Any) -> None:
        assert event.session.status == "requires_action"
        actions = event.session.required_actions
        assert [(a.type, a.name) for a in actions] == [
            ("function_call", "get_weather"),
            ("function_call", "get_rain"),
        ]
        assert json.loads(actions[0].arguments) == {"city": "Paris"}
        turn = await client.beta.agents.sessions.turns.retrieve(
            actions[0].turn_id, session_id=session.id
        )
        seen_waiting.append(turn.status)
        await answer_tools(client, session.id)(event)

    events = await run_turn(client, session.id, answer=answer)
    assert types(events) == [*START, *round_of(2), *REPLY, *END]
    assert seen_waiting == ["waiting"]
    calls = [
        e.item for e in events if e.type == T + "item.added" and e.item.type == "function_call"
    ]
    assert [c.status for c in calls] == ["in_progress", "in_progress"]
    assert isinstance(calls[0].arguments, str)
    outputs = [
        e.item
        for e in events
        if e.type == T + "item.added" and e.item.type == "function_call_output"
    ]
    assert [(o.call_id, o.output, o.status) for o in outputs] == [
        (calls[0].call_id, "get_weather: sunny", "completed"),
        (calls[1].call_id, "get_rain: sunny", "completed"),
    ]
    assert (
        events[-3].type == T + "item.done" and events[-3].item.content[0].text == "Sunny, no rain."
    )
    stats = emulator.turn_stats(events[0].turn_id)
    assert stats.status == "completed" and stats.rounds == 1
    assert stats.results_applied == {calls[0].call_id: 1, calls[1].call_id: 1}
    assert stats.result_posts == 2 and stats.races == stats.conflicts == stats.replays == 0
    assert stats.outputs[calls[1].call_id]["output"] == "get_rain: sunny"


async def test_after_a_last_tool_round_the_agent_quotes_the_outputs(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(
        TurnScenario().tool_round([("get_weather", {})]).tool_round([("slow_report", {})])
    )
    events = await run_turn(client, session.id, answer=answer_tools(client, session.id, "ok"))
    assert types(events) == [*START, *round_of(1), *round_of(1), *REPLY, *END]
    text = events[-3].item.content[0].text
    assert text == 'get_weather returned "get_weather: ok". slow_report returned "slow_report: ok".'
    assert emulator.turn_stats(events[0].turn_id).rounds == 2


async def test_a_failed_result_is_a_failed_output_item(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().tool_round([("get_weather", {})]))

    async def answer(event: Any) -> None:
        (action,) = event.session.required_actions
        failed: Any = {
            "type": "agent.session.input.tool_result",
            "turn_id": action.turn_id,
            "call_id": action.call_id,
            "success": False,
            "error": "Tool handler failed.",
        }
        await client.beta.agents.sessions.events.create(session.id, events=[failed])

    events = await run_turn(client, session.id, answer=answer)
    output = next(
        e.item
        for e in events
        if e.type == T + "item.added" and e.item.type == "function_call_output"
    )
    assert (output.status, output.output, output.error) == ("failed", None, "Tool handler failed.")
    assert events[-3].item.content[0].text == 'get_weather returned "Tool handler failed.".'


@pytest.mark.parametrize(
    ("kind", "decision"),
    [
        ("mcp", "approve"),
        ("mcp", "deny"),
        ("mcp", "cancel"),
        ("computer_use", "approve"),
        ("computer_use", "deny"),
        ("computer_use", "cancel"),
    ],
)
async def test_approvals(
    client: openai.AsyncOpenAI, emulator: Emulator, kind: Any, decision: str
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().approval(kind))
    required: list[Any] = []

    async def answer(event: Any) -> None:
        required.extend(event.session.required_actions)
        await answer_approvals(client, session.id, decision)(event)

    events = await run_turn(client, session.id, answer=answer)
    (action,) = required
    resumed = ["agent.session.requires_action", "agent.session.in_progress"]
    mcp_call = [T + "item.added", T + "item.done"] if (kind, decision) == ("mcp", "approve") else []
    assert types(events) == [*START, *resumed, *mcp_call, *REPLY, *END]
    assert action.request_id.startswith("apr_") and action.turn_id == events[0].turn_id
    text = events[-3].item.content[0].text
    if kind == "mcp":
        assert action.type == "mcp_approval_request"
        assert action.request.type == "mcp_tool_call" and action.request.server_label == "docs"
        expected = {
            "approve": 'search_docs returned "search_docs ran on docs.".',
            "deny": "The call to search_docs on docs was denied.",
            "cancel": "The call to search_docs on docs was cancelled.",
        }[decision]
    else:
        assert action.type == "computer_use_approval_request"
        assert action.request.type == "browser_origin_access"
        assert action.request.origin == "https://example.com"
        done = {"approve": "approved", "deny": "denied", "cancel": "cancelled"}[decision]
        expected = f"Access to https://example.com was {done}."
    assert text == expected
    if mcp_call:
        item = events[6].item
        assert (item.type, item.status, item.output) == (
            "mcp_call",
            "completed",
            "search_docs ran on docs.",
        )
    stats = emulator.turn_stats(events[0].turn_id)
    assert stats.approvals == {action.request_id: decision}


async def test_fail_ends_the_turn_and_the_session_goes_on(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(
        TurnScenario().reply("Let me see.").fail("rate_limit_exceeded", "Slow down.")
    )
    events = await run_turn(client, session.id)
    assert types(events) == [*START, *REPLY, T + "failed", "agent.session.idle"]
    assert events[3].item.phase == "commentary"
    failed = events[-2]
    assert failed.turn.status == "failed" and failed.usage is not None
    assert (failed.turn.error.code, failed.turn.error.message) == (
        "rate_limit_exceeded",
        "Slow down.",
    )
    again = await run_turn(client, session.id, "hi")
    assert types(again) == [*START, *REPLY, *END]


async def test_session_fail_fails_the_turn_and_the_session(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().session_fail("The environment is gone."))
    events = await run_turn(client, session.id)
    assert types(events) == [*START, T + "failed", "agent.session.failed"]
    assert events[-2].turn.error.code == "internal_error"
    assert (events[-1].session.status, events[-1].session.error) == (
        "failed",
        "The environment is gone.",
    )
    sessions = client.beta.agents.sessions
    current = await sessions.retrieve(session.id)
    assert current.status == "failed" and current.error == "The environment is gone."
    assert emulator.sessions_snapshot(session.id)["status"] == "failed"
    with pytest.raises(openai.BadRequestError, match="has failed"):
        await sessions.events.create(session.id, events=[message("again")])  # type: ignore[list-item]
    stream = await sessions.events.stream(session.id)
    async with stream:
        first = await stream.__anext__()
    assert first.type == "agent.session.failed"


async def test_hang_until_cancelled(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().hang())
    sessions = client.beta.agents.sessions

    async def cancel_once_running(event: Any) -> None:
        if event.type == T + "in_progress":
            current = await sessions.retrieve(session.id)
            assert current.status == "in_progress"
            await sessions.events.create(
                session.id, events=[{"type": "agent.session.input.cancel"}]
            )

    events = await run_turn(client, session.id, on_event=cancel_once_running)
    assert types(events) == [*START, T + "cancelled", "agent.session.idle"]
    assert events[-2].turn.status == "cancelled"
    stats = emulator.turn_stats(events[0].turn_id)
    assert (stats.status, stats.cancels) == ("cancelled", 1)


async def test_cancel_while_writing_leaves_the_message_incomplete(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    from runmachine.testing import TurnFaults

    session = await new_session(client)
    long = " ".join(["word"] * 200)
    emulator.enqueue_turn(TurnScenario.text(long).with_faults(TurnFaults(delta_delay=0.05)))
    sessions = client.beta.agents.sessions
    sent: list[str] = []

    async def cancel_at_first_delta(event: Any) -> None:
        if event.type == T + "output_text.delta" and not sent:
            sent.append(event.delta)
            await sessions.events.create(
                session.id, events=[{"type": "agent.session.input.cancel"}]
            )

    events = await run_turn(client, session.id, on_event=cancel_at_first_delta)
    kinds = types(events)
    assert kinds[:5] == [*START, T + "item.added", T + "content_part.added"]
    assert kinds[-3:] == [T + "item.done", T + "cancelled", "agent.session.idle"]
    assert events[-3].item.status == "incomplete"


async def test_cancel_without_an_active_turn_does_nothing(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    await sessions.events.create(session.id, events=[{"type": "agent.session.input.cancel"}])
    assert (await sessions.retrieve(session.id)).status == "idle"
    turns = await sessions.turns.list(session.id)
    assert turns.data == []


async def test_loop_asks_the_same_calls_with_new_ids(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().loop([("get_weather", {"city": "Oslo"})], times=3))
    events = await run_turn(client, session.id, answer=answer_tools(client, session.id))
    assert types(events) == [*START, *round_of(1) * 3, *REPLY, *END]
    ids = [
        e.item.call_id
        for e in events
        if e.type == T + "item.added" and e.item.type == "function_call"
    ]
    assert len(set(ids)) == 3
    assert emulator.turn_stats(events[0].turn_id).rounds == 3


async def test_an_endless_loop_runs_until_cancelled(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario().loop([("get_rain", {})]))
    sessions = client.beta.agents.sessions
    rounds: list[str] = []

    async def answer_twice_then_cancel(event: Any) -> None:
        (action,) = event.session.required_actions
        rounds.append(action.call_id)
        if len(rounds) < 3:
            await answer_tools(client, session.id)(event)
        else:
            await sessions.events.create(
                session.id, events=[{"type": "agent.session.input.cancel"}]
            )

    events = await run_turn(client, session.id, answer=answer_twice_then_cancel)
    assert types(events)[-2:] == [T + "cancelled", "agent.session.idle"]
    stats = emulator.turn_stats(events[0].turn_id)
    assert stats.rounds == 3 and stats.results_applied == {
        rounds[0]: 1,
        rounds[1]: 1,
        rounds[2]: 0,
    }


async def test_create_with_stream_streams_the_first_turn_and_ends(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    emulator.enqueue_turn(TurnScenario().tool_round([("get_weather", {})]).reply("Done here."))
    stream = await client.beta.agents.sessions.create(
        environment={"type": "none"},
        agent={"model": "gpt-5", "tools": TOOLS},  # type: ignore[typeddict-item]
        input="What is the weather?",
        metadata={"case": "stream"},
        stream=True,
    )
    events: list[Any] = []
    async with stream:
        async for event in stream:  # ends on its own after the turn's idle
            events.append(event)
            if event.type == "agent.session.requires_action":
                session_id = event.session.id
                await answer_tools(client, session_id)(event)
    assert types(events) == ["agent.session.created", *START, *round_of(1), *REPLY, *END]
    created = events[0].session
    assert created.status == "idle" and created.metadata == {"case": "stream"}
    assert created.last_active_at == created.created_at
    items = await client.beta.agents.sessions.items.list(created.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]


async def test_create_stream_with_sdk_tool_handlers(client: openai.AsyncOpenAI) -> None:
    calls: list[dict[str, Any]] = []

    def get_weather(arguments: dict[str, Any]) -> str:
        calls.append(arguments)
        return "warm"

    stream = await client.beta.agents.sessions.create(
        environment={"type": "none"},
        agent={"model": "gpt-5", "tools": TOOLS},  # type: ignore[typeddict-item]
        input="get_weather for Rome please",
        stream=True,
        tool_handlers={"get_weather": get_weather},
    )
    outcome = await stream.get_final_result()
    assert calls == [{"city": "Rome", "unit": "celsius"}]
    assert outcome.output_text == 'get_weather returned "warm".'
    assert outcome.turn.status == "completed"


async def test_the_sdk_session_stream_helper(client: openai.AsyncOpenAI) -> None:
    session = await new_session(client)
    async with client.beta.agents.sessions.stream(
        session.id,
        input="get_rain in Lima, then slow_report",
        tool_handlers={"get_rain": lambda args: {"chance": 0.1}, "slow_report": lambda args: "ok"},
    ) as stream:
        outcome = await stream.get_final_result()
    assert outcome.output_text == (
        'get_rain returned "{\\"chance\\":0.1}". slow_report returned "ok".'
    )


async def test_create_without_input_is_idle_and_stream_needs_input(
    client: openai.AsyncOpenAI,
) -> None:
    sessions = client.beta.agents.sessions
    session = await new_session(client)
    assert session.status == "idle" and session.environment.type == "none"
    with pytest.raises(openai.BadRequestError, match="'input'"):
        await sessions.create(environment={"type": "none"}, agent={"model": "gpt-5"}, stream=True)
    with pytest.raises(openai.BadRequestError, match="'environment'"):
        await sessions.create(environment=None, agent={"model": "gpt-5"})  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match=r"agent\.model"):
        await sessions.create(environment={"type": "none"})
    with_input = await sessions.create(
        environment={"type": "none"}, agent={"model": "gpt-5"}, input="hi"
    )
    assert with_input.status == "in_progress"


async def test_agents_and_environments_are_echoed(client: openai.AsyncOpenAI) -> None:
    sessions = client.beta.agents.sessions
    tools: Any = [
        *TOOLS,
        {
            "type": "mcp",
            "server_label": "docs",
            "transport": {"type": "http", "server_url": "https://mcp.example"},
        },
        {"type": "web_search"},
        {"type": "computer_use", "include_screenshots": True},
        {"type": "programmatic_tool_calling"},
        {"type": "automations"},
        {"type": "tool_search"},
    ]
    hosted = await sessions.create(
        environment={"type": "openai_hosted", "network": {"access": "enabled"}},
        agent={"model": "gpt-5.1", "instructions": "Be brief.", "tools": tools},
        vault_ids=["vault_1"],
    )
    assert hosted.agent.model == "gpt-5.1" and hosted.agent.instructions == "Be brief."
    assert [t.type for t in hosted.agent.tools] == [
        "function",
        "function",
        "function",
        "mcp",
        "web_search",
        "computer_use",
        "programmatic_tool_calling",
        "automations",
    ]
    assert hosted.environment.type == "openai_hosted" and hosted.vault_ids == ["vault_1"]
    local = await sessions.create(
        environment={"type": "self_hosted", "workspace_directory": "/repo"}, agent_id="agent_saved"
    )
    assert local.agent.id == "agent_saved" and local.environment.type == "self_hosted"
    assert local.environment.workspace_directory == "/repo"


async def test_turns_and_items_are_listed_and_paged(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    turn_ids = []
    for text in ("one", "two", "three"):
        events = await run_turn(client, session.id, text)
        turn_ids.append(events[0].turn_id)
    listed = await sessions.turns.list(session.id)
    assert [t.id for t in listed.data] == turn_ids[::-1]  # newest first by default
    page = await sessions.turns.list(session.id, order="asc", limit=2)
    assert [t.id for t in page.data] == turn_ids[:2] and page.has_more
    rest = await page.get_next_page()
    assert [t.id for t in rest.data] == turn_ids[2:] and not rest.has_more
    everything = [t.id async for t in sessions.turns.list(session.id, limit=1)]
    assert everything == turn_ids[::-1]

    items = await sessions.items.list(session.id, order="asc")
    assert [(i.type, i.role, i.turn_id) for i in items.data] == [  # type: ignore[union-attr]
        (kind, role, turn)
        for turn in turn_ids
        for kind, role in (("message", "user"), ("message", "assistant"))
    ]
    assert items.data[0].content[0].text == "one"  # type: ignore[union-attr]
    desc = [i.id async for i in sessions.items.list(session.id, limit=4)]
    assert desc == [i.id for i in items.data][::-1]
    turn_items = sessions.turns.items.list(turn_ids[1], session_id=session.id, order="asc", limit=1)
    first = await turn_items
    assert first.last_id == first.data[0].id and first.has_more
    walked = [
        i.id
        async for i in sessions.turns.items.list(
            turn_ids[1], session_id=session.id, order="asc", limit=1
        )
    ]
    assert walked == [i.id for i in items.data[2:4]]


async def test_unknown_sessions_and_turns_are_404(client: openai.AsyncOpenAI) -> None:
    sessions = client.beta.agents.sessions
    missing = "sess_missing"
    calls: list[Any] = [
        sessions.retrieve(missing),
        sessions.events.stream(missing),
        sessions.events.create(missing, events=[{"type": "agent.session.input.cancel"}]),
        sessions.turns.list(missing),
        sessions.items.list(missing),
        sessions.turns.retrieve("turn_missing", session_id=missing),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError, match="No session found with id 'sess_missing'"):
            await call
    session = await new_session(client)
    for call in [
        sessions.turns.retrieve("turn_missing", session_id=session.id),
        sessions.turns.items.list("turn_missing", session_id=session.id),
    ]:
        with pytest.raises(
            openai.NotFoundError, match="No turn found with id 'turn_missing'"
        ) as err:
            await call
        assert err.value.body == {
            "message": "No turn found with id 'turn_missing'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


async def test_the_toy_model_calls_the_named_tools(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    asked: list[list[tuple[str, Any]]] = []

    async def answer(event: Any) -> None:
        asked.append([(a.name, json.loads(a.arguments)) for a in event.session.required_actions])
        await answer_tools(client, session.id, "fine")(event)

    events = await run_turn(
        client, session.id, "Check get_weather and get_rain for Paris, then slow_report", answer
    )
    assert types(events) == [*START, *round_of(2), *round_of(1), *REPLY, *END]
    assert asked == [
        [
            ("get_weather", {"city": "Paris", "unit": "celsius"}),
            ("get_rain", {"city": "Paris", "days": 1}),
        ],
        [("slow_report", {})],
    ]
    assert events[-3].item.content[0].text == (
        'get_weather returned "get_weather: fine". get_rain returned "get_rain: fine". '
        'slow_report returned "slow_report: fine".'
    )
    chat = await run_turn(client, session.id, "Just say something nice to me")
    assert types(chat) == [*START, *REPLY, *END]
    assert chat[-3].item.content[0].text == "You said: Just say something nice to me"
