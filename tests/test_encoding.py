"""The SSE/NDJSON encoder: single items, the placement of transitions among stream events, and
whole tool-calling runs against the emulator, parsed back with the SDK's own SSE decoder."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import openai
import pytest
from openai._streaming import SSEDecoder
from openai.types.beta import AssistantStreamEvent

from runmachine import (
    RequiresActionLoop,
    RunMachine,
    TransitionRecord,
    encode_event,
    ndjson_line,
    sse_event,
    stream_run,
    tool,
)
from runmachine.backends.sse import build_event
from runmachine.encoding import ERROR_EVENT, RESULT_EVENT, TRANSITION_EVENT
from runmachine.testing import Emulator, Scenario

PROMPT = "call get_current_temperature and get_rain_probability for Paris, then slow_forecast."


def _sse_objects(body: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """Parse an SSE body with the SDK's own decoder: (event field, the data object)."""
    return [(sse.event, json.loads(sse.data)) for sse in SSEDecoder().iter_bytes(iter([body]))]


# --------------------------------------------------------------------------------------------
# Single items
# --------------------------------------------------------------------------------------------


def _run_json(status: str = "queued") -> dict[str, Any]:
    return {
        "id": "run_1",
        "object": "thread.run",
        "created_at": 1,
        "assistant_id": "asst_1",
        "thread_id": "thread_1",
        "status": status,
        "instructions": "",
        "model": "gpt-4o",
        "tools": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "response_format": "auto",
        "truncation_strategy": {"type": "auto", "last_messages": None},
    }


def test_an_sdk_event_keeps_its_name_and_dumps_its_model() -> None:
    event = build_event("thread.run.created", json.dumps(_run_json()))
    encoded = encode_event(event)
    assert encoded["event"] == "thread.run.created"
    assert encoded["data"] == event.data.model_dump(mode="json")
    assert encoded["data"]["id"] == "run_1"

    sse = sse_event(event)
    assert sse.startswith(b"event: thread.run.created\ndata: {")
    assert sse.endswith(b"\n\n")
    assert _sse_objects(sse) == [("thread.run.created", encoded)]

    line = ndjson_line(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == encoded


def test_transitions_results_and_errors_have_their_own_names() -> None:
    record = TransitionRecord("requires_action", "submitting", "submit_tool_outputs", "run_1", 1.0)
    assert encode_event(record) == {
        "event": TRANSITION_EVENT,
        "data": {
            "source": "requires_action",
            "dest": "submitting",
            "trigger": "submit_tool_outputs",
            "run_id": "run_1",
            "local": True,
        },
    }
    server = TransitionRecord("queued", "in_progress", "thread.run.in_progress", "run_1", 2.0)
    assert encode_event(server)["data"]["local"] is False

    error = encode_event(ValueError("boom"))
    assert error == {
        "event": ERROR_EVENT,
        "data": {"type": "ValueError", "message": "boom", "result": None},
    }


def test_text_with_newlines_and_unicode_stays_one_sse_data_line() -> None:
    payload = {"value": "line one\nline two\r\n«ü»\u2028"}
    event = build_event("thread.future.event", json.dumps(payload))  # an unknown event name
    body = sse_event(event)
    assert body.count(b"\n") == 3  # "event:" line, one "data:" line, the blank line
    expected = {"event": "thread.future.event", "data": payload}
    assert _sse_objects(body) == [("thread.future.event", expected)]


def test_anything_else_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot encode int"):
        encode_event(3)
    with pytest.raises(TypeError, match="cannot encode dict"):
        sse_event({"event": "x", "data": 1})


# --------------------------------------------------------------------------------------------
# Whole runs against the emulator
# --------------------------------------------------------------------------------------------


class Weather(RunMachine):
    @tool
    async def get_current_temperature(self, location: str, unit: Literal["c", "f"] = "c") -> str:
        """Current temperature at a location."""
        return f"18 degrees {unit} in {location}"

    @tool(name="get_rain_probability")
    def rain(self, location: str) -> float:
        """Probability of rain."""
        return 0.2

    @tool
    async def slow_forecast(self, location: str) -> str:
        """A slower tool."""
        await anyio.sleep(0.05)
        return f"dry in {location}"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        super().__init__(client)
        self.seen: list[tuple[str, Any]] = []

    async def on_event(self, event: AssistantStreamEvent) -> None:
        # Dumped now: the machine accumulates later deltas into the objects of created events.
        self.seen.append((event.event, event.data.model_dump(mode="json")))


async def _setup(client: openai.AsyncOpenAI, text: str = PROMPT) -> tuple[str, str]:
    assistant = await client.beta.assistants.create(
        model="gpt-4o",
        tools=Weather.tool_definitions(),  # type: ignore[arg-type]
    )
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": text}])
    return thread.id, assistant.id


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def _check_run(objects: list[dict[str, Any]], machine: Weather) -> dict[str, Any]:
    """Every check a tool-calling run's encoding must pass; returns the result's data."""
    names = [o["event"] for o in objects]
    sdk = [o for o in objects if not o["event"].startswith("runmachine.")]
    # The SDK events, in the order the machine was fed them, each as it arrived.
    assert [o["event"] for o in sdk] == [event for event, _ in machine.seen]
    assert [o["data"] for o in sdk] == [data for _, data in machine.seen]
    # Every transition, once, in the machine's order, each continuing the previous one.
    rows = [o["data"] for o in objects if o["event"] == TRANSITION_EVENT]
    assert [(r["source"], r["dest"], r["trigger"]) for r in rows] == [
        (t.source, t.dest, t.trigger) for t in machine.history
    ]
    assert rows[0]["source"] == "pending"
    for previous, following in itertools.pairwise(rows):
        assert following["source"] == previous["dest"]
    # A server row comes right after its event; a local row right before the next stream.
    for index, name in enumerate(names):
        if name == TRANSITION_EVENT:
            row = objects[index]["data"]
            if row["local"]:
                assert not names[index + 1].startswith("runmachine.")
            else:
                assert names[index - 1] == row["trigger"]
    assert names[-1] == RESULT_EVENT
    assert names[-2] == TRANSITION_EVENT and objects[-2]["data"]["dest"] == "completed"
    result = objects[-1]["data"]
    assert result["status"] == "completed"
    assert result["rounds"] == 2
    assert [(c["name"], c["round"]) for c in result["tool_calls"]] == [
        ("get_current_temperature", 1),
        ("get_rain_probability", 1),
        ("slow_forecast", 2),
    ]
    assert result["tool_calls"][2]["output"] == "dry in Paris"
    assert "dry in Paris" in result["text"]
    return result


@pytest.mark.anyio
async def test_a_tool_calling_run_round_trips_through_sse(
    openai_client: openai.AsyncOpenAI,
) -> None:
    thread_id, assistant_id = await _setup(openai_client)
    machine = Weather(openai_client)
    body = await _collect(stream_run(machine, thread_id=thread_id, assistant_id=assistant_id))
    parsed = _sse_objects(body)
    for field, obj in parsed:
        assert field == obj["event"]
    objects = [obj for _, obj in parsed]
    _check_run(objects, machine)
    names = [o["event"] for o in objects]
    # The submission of each round: requires_action's row, then the local row, then the new
    # stream's first event; the outputs come back in the completed tool-call step.
    submits = [
        i for i, o in enumerate(objects) if o["data"].get("trigger") == "submit_tool_outputs"
    ]
    assert len(submits) == 2
    for index in submits:
        assert objects[index - 1]["data"]["dest"] == "requires_action"
        assert names[index + 1] == "thread.run.step.completed"
    done_steps = [
        o["data"]
        for o in objects
        if o["event"] == "thread.run.step.completed" and o["data"]["type"] == "tool_calls"
    ]
    outputs = [c["function"]["output"] for s in done_steps for c in s["step_details"]["tool_calls"]]
    assert outputs == ["18 degrees c in Paris", "0.2", "dry in Paris"]


@pytest.mark.anyio
async def test_ndjson_gives_the_same_objects_one_per_line(
    openai_client: openai.AsyncOpenAI,
) -> None:
    thread_id, assistant_id = await _setup(openai_client)
    machine = Weather(openai_client)
    body = await _collect(
        stream_run(machine, thread_id=thread_id, assistant_id=assistant_id, format="ndjson")
    )
    objects = [json.loads(line) for line in body.decode().split("\n")[:-1]]
    result = _check_run(objects, machine)
    assert result["thread_id"] == thread_id
    assert result["transitions"] == [o["data"] for o in objects if o["event"] == TRANSITION_EVENT]


@pytest.mark.anyio
async def test_closing_the_body_early_cancels_the_server_run(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    emulator.enqueue(Scenario().hang())
    thread_id, assistant_id = await _setup(openai_client, "hello")
    machine = Weather(openai_client)
    body = stream_run(machine, thread_id=thread_id, assistant_id=assistant_id, format="ndjson")
    seen = []
    async for chunk in body:
        seen.append(json.loads(chunk))
        if seen[-1]["event"] == TRANSITION_EVENT and seen[-1]["data"]["dest"] == "in_progress":
            break
    await body.aclose()  # type: ignore[attr-defined]
    run_id = seen[0]["data"]["id"]
    run = await openai_client.beta.threads.runs.retrieve(run_id=run_id, thread_id=thread_id)
    assert run.status == "cancelled"
    assert [r.trigger for r in machine.history][-2:] == ["cancel", "thread.run.cancelled"]


@pytest.mark.anyio
async def test_a_guard_ends_the_body_with_the_error_and_the_cancel(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    emulator.enqueue(Scenario().loop([("get_rain_probability", {"location": "Oslo"})]))
    thread_id, assistant_id = await _setup(openai_client, "hello")
    machine = Weather(openai_client)
    body = await _collect(
        stream_run(machine, thread_id=thread_id, assistant_id=assistant_id, format="ndjson")
    )
    objects = [json.loads(line) for line in body.decode().splitlines()]
    assert objects[-1]["event"] == ERROR_EVENT
    error = objects[-1]["data"]
    assert error["type"] == RequiresActionLoop.__name__
    assert "max_identical_rounds=3" in error["message"]
    assert error["result"]["rounds"] == 3
    rows = [o["data"] for o in objects if o["event"] == TRANSITION_EVENT]
    assert [(r["source"], r["dest"], r["trigger"]) for r in rows] == [
        (t.source, t.dest, t.trigger) for t in machine.history
    ]
    assert ("requires_action", "cancelling", "cancel") in [
        (r["source"], r["dest"], r["trigger"]) for r in rows
    ]
    assert RESULT_EVENT not in [o["event"] for o in objects]
