"""Agent sessions: refused inputs, idempotency, every TurnFaults field, HTTP faults, cut streams,
and a raw walk over every scenario kind that checks each payload against the SDK's types."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import openai.lib.beta.agents
import pytest
from openai._models import validate_type
from openai.lib.streaming.agents._tools import is_pending_call_race
from openai.types.beta import AgentSession, AgentSessionEvent
from openai.types.beta.agent_session_item import AgentSessionItem
from openai.types.beta.agents.sessions import Turn

from runmachine.testing import Emulator, Faults, HTTPFault, TurnFaults, TurnScenario

from .emu_support import collapse
from .session_support import (
    END,
    REPLY,
    START,
    T,
    answer_approvals,
    answer_tools,
    follow,
    message,
    new_session,
    no_extra_keys,
    result,
    round_of,
    run_turn,
    strict_client,
    types,
)

pytestmark = pytest.mark.anyio

ONE_CALL = TurnScenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny.")
CANCEL: Any = {"type": "agent.session.input.cancel"}


@pytest.fixture
async def client(emulator_url: str, anyio_backend: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with strict_client(emulator_url) as client:
        yield client


async def until(stream: Any, kind: str) -> Any:
    async for event in stream:
        if event.type == kind:
            return event
    raise AssertionError(f"the stream ended before {kind}")


class Waiting:
    """A session whose turn waits in ``requires_action``, with its stream open."""

    def __init__(self, client: openai.AsyncOpenAI, session_id: str, stream: Any, event: Any):
        self.client = client
        self.session_id = session_id
        self.stream = stream
        self.event = event
        self.actions = event.session.required_actions
        self.turn_id = event.session.required_actions[0].turn_id

    async def send(self, *events: Any, key: str | None = None) -> None:
        extra: Any = {} if key is None else {"idempotency_key": key}
        await self.client.beta.agents.sessions.events.create(
            self.session_id, events=list(events), **extra
        )


async def waiting(client: openai.AsyncOpenAI, emulator: Emulator, scenario: TurnScenario) -> Any:
    session = await new_session(client)
    emulator.enqueue_turn(scenario)
    sessions = client.beta.agents.sessions
    stream = await sessions.events.stream(session.id)
    await sessions.events.create(session.id, events=[message("go")])  # type: ignore[list-item]
    event = await until(stream, "agent.session.requires_action")
    return Waiting(client, session.id, stream, event)


# --- refused inputs ---------------------------------------------------------------------------


async def test_an_unknown_call_is_the_sdks_pending_call_race(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, ONE_CALL)
    async with w.stream:
        bogus: Any = {**result(w.actions[0]), "call_id": "call_nope"}
        with pytest.raises(openai.BadRequestError) as err:
            await w.send(bogus)
        assert err.value.body == {
            "message": "Unknown pending tool call: call_nope",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request_error",
        }
        assert is_pending_call_race(err.value, "call_nope")
        assert err.value.response.json()["error"] == err.value.body
        await w.send(result(w.actions[0]))
        events = await follow(w.stream)
    assert types(events)[-2:] == END
    stats = emulator.turn_stats(w.turn_id)
    assert stats.races == 0  # a call never asked is no race
    assert stats.results_applied == {w.actions[0].call_id: 1}


async def test_a_second_result_is_a_409_conflict(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, TurnScenario().tool_round([("a", {}), ("b", {})]))
    async with w.stream:
        first = w.actions[0]
        await w.send(result(first, "one"), key="key-1")
        with pytest.raises(openai.ConflictError) as err:  # not retried by the SDK
            await w.send(result(first, "two"), key="key-2")
        assert err.value.body == {
            "message": f"Tool call {first.call_id} already has a result",
            "type": "invalid_request_error",
            "param": None,
            "code": "conflict",
        }
        assert err.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.ConflictError):  # the 409 is kept for its key
            await w.send(result(first, "two"), key="key-2")
        await w.send(result(w.actions[1]))
        await follow(w.stream)
    stats = emulator.turn_stats(w.turn_id)
    assert stats.results_applied == {first.call_id: 1, w.actions[1].call_id: 1}
    assert stats.outputs[first.call_id]["output"] == "one"
    assert (stats.conflicts, stats.replays, stats.result_posts) == (2, 1, 4)
    assert stats.keys == ("key-1", "key-2", "key-2")
    # Answered calls stay conflicts after the turn has ended.
    with pytest.raises(openai.ConflictError):
        await w.send(result(first, "late"))


async def test_an_idempotency_key_replays_its_answer(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, TurnScenario().tool_round([("a", {}), ("b", {})]))
    async with w.stream:
        answer = result(w.actions[0])
        await w.send(answer, key="same")
        await w.send(answer, key="same")
        with pytest.raises(openai.ConflictError, match="different request body"):
            await w.send(result(w.actions[1]), key="same")
        await w.send(result(w.actions[1]), key="other")
        await follow(w.stream)
    stats = emulator.turn_stats(w.turn_id)
    assert stats.replays == 1 and stats.results_applied == dict.fromkeys(
        [a.call_id for a in w.actions], 1
    )


async def test_a_replayed_message_starts_no_second_turn(client: openai.AsyncOpenAI) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    for _ in range(2):
        await sessions.events.create(session.id, events=[message("hi")], idempotency_key="m")  # type: ignore[list-item]
    turns = await sessions.turns.list(session.id)
    assert len(turns.data) == 1


async def test_inputs_the_session_cannot_take_are_400(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, ONE_CALL)
    async with w.stream:
        cases: list[tuple[Any, str]] = [
            ([message("more")], f"already has an active turn ({w.turn_id})"),
            ([{**result(w.actions[0]), "turn_id": "turn_other"}], "turn_other is not the active"),
            ([{"type": "agent.session.input.frobnicate"}], "'agent.session.input.frobnicate'"),
            ([{"type": "agent.session.input.tool_result", "turn_id": w.turn_id}], "call_id"),
            ([{**result(w.actions[0]), "success": "yes"}], "success"),
            ([{"type": "agent.session.input.message", "input": []}], "events[0].input"),
            ([], "non-empty"),
            (
                [
                    {
                        "type": "agent.session.input.mcp_approval_request_result",
                        "request_id": "apr_nope",
                        "response": {"decision": "approve", "type": "mcp_tool_call"},
                    }
                ],
                "Unknown pending approval request: apr_nope",
            ),
            (
                [
                    {
                        "type": "agent.session.input.mcp_approval_request_result",
                        "request_id": "apr_nope",
                        "response": {"decision": "maybe", "type": "mcp_tool_call"},
                    }
                ],
                "'maybe'",
            ),
            ([result(w.actions[0]), CANCEL, {"type": 7}], "Invalid value: '7'"),
        ]
        for events, text in cases:
            with pytest.raises(openai.BadRequestError, match=re.escape(text)) as err:
                await w.send(*events)
        assert isinstance(err.value.body, dict) and err.value.body["param"] == "events[2].type"
        stats = emulator.turn_stats(w.turn_id)
        assert stats.results_applied == {w.actions[0].call_id: 0}  # a refused batch applies nothing
        await w.send(result(w.actions[0]))
        await follow(w.stream)


async def test_approval_answers_are_checked(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    w = await waiting(client, emulator, TurnScenario().approval("computer_use"))
    (action,) = w.actions
    mcp_answer: Any = {
        "type": "agent.session.input.mcp_approval_request_result",
        "request_id": action.request_id,
        "response": {"decision": "approve", "type": "mcp_tool_call"},
    }
    async with w.stream:
        with pytest.raises(openai.BadRequestError, match="computer_use_approval_request"):
            await w.send(mcp_answer)
        await answer_approvals(client, w.session_id, "approve")(w.event)
        with pytest.raises(openai.ConflictError, match=f"{action.request_id} already has a result"):
            await answer_approvals(client, w.session_id, "deny")(w.event)
        await follow(w.stream)
    assert emulator.turn_stats(w.turn_id).approvals == {action.request_id: "approve"}


# --- TurnFaults -------------------------------------------------------------------------------


def test_turn_faults_and_scenarios_are_validated() -> None:
    for bad in (
        {"drop_at": {-1}},
        {"duplicate": {1.5}},
        {"lose_result_response": {0}},
        {"pending_race": -1},
        {"delta_delay": -0.1},
        {"start_delay": -1},
        {"http_errors": [HTTPFault("create_run")]},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            TurnFaults(**bad)
    with pytest.raises(ValueError, match="unknown turn error code"):
        TurnScenario().fail("bogus")
    with pytest.raises(TypeError):
        TurnScenario().with_faults(Faults())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        TurnScenario().approval("email")  # type: ignore[arg-type]
    assert TurnScenario().hang().with_faults(TurnFaults(pending_race=1)).faults.pending_race == 1


async def test_drop_at_cuts_every_stream_and_the_turn_goes_on(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    emulator.enqueue_turn(TurnScenario.text("Hi there.").with_faults(TurnFaults(drop_at={4})))
    first = await sessions.events.stream(session.id)
    second = await sessions.events.stream(session.id)
    await sessions.events.create(session.id, events=[message("hi")])  # type: ignore[list-item]
    for stream in (first, second):
        seen: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            async with stream:
                async for event in stream:
                    seen.append(event.type)
        assert seen == ["agent.session.idle", *START, T + "item.added"]
    again = await sessions.events.stream(session.id)
    async with again:
        await until(again, "agent.session.idle")  # now, or once the turn is over
    (turn,) = (await sessions.turns.list(session.id)).data
    assert turn.status == "completed"
    items = await sessions.items.list(session.id)
    assert items.data[0].content[0].text == "Hi there."  # type: ignore[union-attr]


async def test_drop_at_cuts_a_creation_stream(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    emulator.enqueue_turn(TurnScenario.text("Hi.").with_faults(TurnFaults(drop_at={2})))
    stream = await client.beta.agents.sessions.create(
        environment={"type": "none"}, agent={"model": "gpt-5"}, input="hi", stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async with stream:
            async for event in stream:
                seen.append(event.type)
    assert seen == ["agent.session.created", T + "created", "agent.session.in_progress"]


async def test_duplicate_sends_an_event_twice_with_its_id(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(TurnScenario.text("Hi.").with_faults(TurnFaults(duplicate={0, 4})))
    events = await run_turn(client, session.id)
    assert [e.type for e in events[:2]] == [T + "created", T + "created"]
    assert events[0].event_id == events[1].event_id
    assert events[5].type == events[6].type == T + "content_part.added"
    assert events[5].event_id == events[6].event_id
    # The SDK's helper drops repeats by event_id.
    emulator.enqueue_turn(TurnScenario.text("Hi.").with_faults(TurnFaults(duplicate={0, 4})))
    async with client.beta.agents.sessions.stream(session.id, input="again") as stream:
        seen = [event.type async for event in stream]
    assert collapse(seen) == ["agent.session.idle", *START, *REPLY, *END]


async def test_lose_result_response_then_the_sdk_retry_is_replayed(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    faults = TurnFaults(lose_result_response={1})
    w = await waiting(client, emulator, ONE_CALL.with_faults(faults))
    async with w.stream:
        await w.send(result(w.actions[0]), key="result-1")  # dropped, retried, replayed: 202
        events = await follow(w.stream)
    assert types(events)[-2:] == END
    stats = emulator.turn_stats(w.turn_id)
    assert (stats.result_posts, stats.replays) == (2, 1)
    assert stats.keys == ("result-1", "result-1")
    assert stats.results_applied == {w.actions[0].call_id: 1}


async def test_lose_result_response_without_a_key_is_a_conflict_on_retry(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, ONE_CALL.with_faults(TurnFaults(lose_result_response={1})))
    async with w.stream:
        with pytest.raises(openai.ConflictError):
            await w.send(result(w.actions[0]))
        await follow(w.stream)
    stats = emulator.turn_stats(w.turn_id)
    assert (stats.result_posts, stats.conflicts, stats.replays) == (2, 1, 0)
    assert stats.results_applied == {w.actions[0].call_id: 1}


async def test_pending_race_answers_400_then_applies(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    w = await waiting(client, emulator, ONE_CALL.with_faults(TurnFaults(pending_race=2)))
    async with w.stream:
        call_id = w.actions[0].call_id
        for _ in range(2):
            with pytest.raises(openai.BadRequestError) as err:
                await w.send(result(w.actions[0]), key="k")  # a 400 is not kept for its key
            assert is_pending_call_race(err.value, call_id)
        await w.send(result(w.actions[0]), key="k")
        await follow(w.stream)
    stats = emulator.turn_stats(w.turn_id)
    assert (stats.races, stats.replays, stats.results_applied) == (2, 0, {call_id: 1})


async def test_the_sdk_helper_rides_out_the_pending_race(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    emulator.enqueue_turn(
        TurnScenario()
        .tool_round([("get_weather", {}), ("get_rain", {})])
        .with_faults(TurnFaults(pending_race=1))
    )
    turn_ids: list[str] = []
    async with client.beta.agents.sessions.stream(
        session.id,
        input="go",
        tool_handlers={"get_weather": lambda a: "sun", "get_rain": lambda a: "dry"},
    ) as stream:
        outcome = await stream.get_final_result()
        turn_ids.append(outcome.turn_id)
    assert outcome.output_text == 'get_weather returned "sun". get_rain returned "dry".'
    stats = emulator.turn_stats(turn_ids[0])
    assert stats.races == 2 and set(stats.results_applied.values()) == {1}
    assert stats.result_posts == 4 and len(set(stats.keys)) == 2  # one key per call, reused


async def test_a_result_before_the_required_action_is_a_race(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    slow = TurnFaults(delta_delay=1.0)  # a window for the early result
    emulator.enqueue_turn(
        TurnScenario().tool_round([("a", {}), ("b", {})]).reply("Ok").with_faults(slow)
    )
    stream = await sessions.events.stream(session.id)
    async with stream:
        await sessions.events.create(session.id, events=[message("go")])  # type: ignore[list-item]
        added = await until(stream, T + "item.added")
        early: Any = {**result(added.item), "turn_id": added.turn_id}
        with pytest.raises(openai.BadRequestError) as err:
            await sessions.events.create(session.id, events=[early])
        assert is_pending_call_race(err.value, added.item.call_id)
        required = await until(stream, "agent.session.requires_action")
        await answer_tools(client, session.id)(required)
        await follow(stream)
    assert emulator.turn_stats(added.turn_id).races == 1


async def test_start_delay_keeps_the_turn_queued(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    emulator.enqueue_turn(TurnScenario.text("Late.").with_faults(TurnFaults(start_delay=30)))

    async def look_then_cancel(event: Any) -> None:
        if event.type == T + "created":
            turn = await sessions.turns.retrieve(event.turn_id, session_id=session.id)
            assert turn.status == "queued" and turn.started_at is None
            assert (await sessions.retrieve(session.id)).status == "in_progress"
            await sessions.events.create(session.id, events=[CANCEL])

    events = await run_turn(client, session.id, on_event=look_then_cancel)
    assert types(events) == [T + "created", T + "cancelled", "agent.session.idle"]


async def test_http_errors_of_a_turn(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    faults = TurnFaults(
        http_errors=(
            HTTPFault("send_events", nth=1, status=500),
            HTTPFault("retrieve_turn", nth=1, status=429, retry_after=0),
            HTTPFault("list_turn_items", nth=1, status=503),
        )
    )
    w = await waiting(client, emulator, ONE_CALL.with_faults(faults))
    sessions = client.beta.agents.sessions
    async with w.stream:
        await w.send(result(w.actions[0]))  # 500, retried by the SDK
        await follow(w.stream)
    turn = await sessions.turns.retrieve(w.turn_id, session_id=w.session_id)  # 429, retried
    assert turn.status == "completed"
    async with strict_client(emulator.base_url, max_retries=0) as once:
        with pytest.raises(openai.InternalServerError):
            await once.beta.agents.sessions.turns.items.list(w.turn_id, session_id=w.session_id)
    stats = emulator.turn_stats(w.turn_id)
    assert stats.requests["send_events"] == 2 and stats.requests["retrieve_turn"] == 2
    assert stats.results_applied == {w.actions[0].call_id: 1}


async def test_http_errors_on_create_and_emulator_wide(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    faults = TurnFaults(http_errors=(HTTPFault("create_session", nth=1, status=500),))
    emulator.enqueue_turn(TurnScenario.text("Made it.").with_faults(faults))
    stream = await client.beta.agents.sessions.create(
        environment={"type": "none"}, agent={"model": "gpt-5"}, input="hi", stream=True
    )
    async with stream:
        events = [event async for event in stream]
    assert types(events) == ["agent.session.created", *START, *REPLY, *END]
    assert emulator.turn_stats(events[1].turn_id).requests["create_session"] == 2
    emulator.inject(HTTPFault("session_events", nth=1, status=503))
    emulator.inject(HTTPFault("retrieve_session", nth=1, status=500))
    session_id = events[0].session.id
    async with strict_client(emulator.base_url, max_retries=0) as once:
        with pytest.raises(openai.InternalServerError):
            await once.beta.agents.sessions.events.stream(session_id)
        with pytest.raises(openai.InternalServerError):
            await once.beta.agents.sessions.retrieve(session_id)
        assert (await once.beta.agents.sessions.retrieve(session_id)).status == "idle"


# --- streams ----------------------------------------------------------------------------------


async def test_close_streams_and_reset_cut_the_event_streams(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    session = await new_session(client)
    sessions = client.beta.agents.sessions
    for cut in (emulator.close_streams, emulator.reset):
        stream = await sessions.events.stream(session.id)
        with pytest.raises(openai.APIConnectionError):
            async with stream:
                async for event in stream:
                    assert event.type == "agent.session.idle"
                    cut()
    with pytest.raises(openai.NotFoundError):  # reset forgot the session
        await sessions.retrieve(session.id)


async def test_an_idle_stream_sends_keepalives_and_plain_data_frames(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    emulator.keepalive_interval = 0.05
    session = await new_session(client)
    url = f"{emulator.base_url}/agents/sessions/{session.id}/events?include_obfuscation=false"
    lines: list[str] = []
    async with httpx2.AsyncClient(timeout=30) as http, http.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines.append(line)
            if line == ": keep-alive":
                break
    assert lines[0].startswith("data: {") and lines[1] == ""
    first = json.loads(lines[0][6:])
    assert first["type"] == "agent.session.idle" and "obfuscation" not in first


# --- every payload, checked against the SDK's types --------------------------------------------


def _checked(kind: Any, data: Any) -> Any:
    parsed = validate_type(type_=kind, value=data)
    assert no_extra_keys(parsed) == [], data
    return parsed


WALK = {
    "reply": (TurnScenario.text("Hello, world."), None),
    "tool_round": (TurnScenario().tool_round([("get_weather", {"city": "Oslo"})]), "tools"),
    "mcp": (TurnScenario().approval("mcp").reply("Ok."), "approve"),
    "computer_use": (TurnScenario().approval("computer_use"), "deny"),
    "fail": (TurnScenario().reply("Hm.").fail("server_overloaded"), None),
    "session_fail": (TurnScenario().session_fail(), None),
    "hang": (TurnScenario().hang(), "cancel"),
    "loop": (TurnScenario().loop([("get_rain", {}), ("slow_report", {})], times=2), "tools"),
    "toy": (None, "tools"),
}


@pytest.mark.parametrize("name", list(WALK))
async def test_every_payload_of_every_scenario_kind_is_strict(
    client: openai.AsyncOpenAI, emulator: Emulator, name: str
) -> None:
    scenario, answer = WALK[name]
    sessions = client.beta.agents.sessions
    session = await new_session(client)
    if scenario is not None:
        emulator.enqueue_turn(scenario)
    url = f"{emulator.base_url}/agents/sessions/{session.id}/events"
    frames: list[Any] = []
    async with httpx2.AsyncClient(timeout=30) as http, http.stream("GET", url) as response:
        lines = response.aiter_lines()
        ended = False
        async for line in lines:
            if not line or line.startswith(":"):
                continue
            assert line.startswith("data: "), line
            event = _checked(AgentSessionEvent, json.loads(line[6:]))
            frames.append(event)
            if len(frames) == 1:
                text = "get_weather and slow_report in Paris" if scenario is None else "go"
                await sessions.events.create(session.id, events=[message(text)])  # type: ignore[list-item]
            elif event.type == T + "in_progress" and answer == "cancel":
                await sessions.events.create(session.id, events=[CANCEL])
            elif event.type == "agent.session.requires_action":
                if answer == "tools":
                    await answer_tools(client, session.id)(event)
                else:
                    await answer_approvals(client, session.id, str(answer))(event)
            ended = ended or event.type in (T + "completed", T + "failed", T + "cancelled")
            if event.type == "agent.session.failed" or (
                ended and event.type == "agent.session.idle"
            ):
                break
    assert len({e.event_id for e in frames}) == len(frames)
    assert all(e.obfuscation for e in frames)
    async with httpx2.AsyncClient(base_url=emulator.base_url, timeout=30) as http:
        base = f"/agents/sessions/{session.id}"
        _checked(AgentSession, (await http.get(base)).json())
        pages = [(await http.get(base + "/turns")).json(), (await http.get(base + "/items")).json()]
        for page in pages:
            assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
        for turn in pages[0]["data"]:
            _checked(Turn, turn)
            _checked(Turn, (await http.get(f"{base}/turns/{turn['id']}")).json())
            turn_items = (await http.get(f"{base}/turns/{turn['id']}/items")).json()
            for item in turn_items["data"]:
                _checked(AgentSessionItem, item)
        for item in pages[1]["data"]:
            _checked(AgentSessionItem, item)
    expected_end = {
        "fail": [T + "failed", "agent.session.idle"],
        "session_fail": [T + "failed", "agent.session.failed"],
        "hang": [T + "cancelled", "agent.session.idle"],
    }.get(name, END)
    assert types(frames)[-2:] == expected_end
    assert types(frames)[1:4] == START
    if name == "reply":
        assert types(frames) == ["agent.session.idle", *START, *REPLY, *END]
    if name == "loop":
        assert types(frames) == ["agent.session.idle", *START, *round_of(2) * 2, *REPLY, *END]
