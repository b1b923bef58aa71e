"""The emulator's streams match the real recordings: same event order, same payload key sets.

Runs of ``thread.message.delta`` / ``thread.run.step.delta`` are collapsed (token counts
differ); key sets are compared recursively, except inside values that depend on the request
(``tools``, ``metadata``, ``tool_resources``, JSON-schema ``parameters``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from runmachine.testing import Emulator, Scenario

from .emu_support import RECORDINGS, collapse, raw_get, raw_post, raw_sse

pytestmark = pytest.mark.anyio

OPAQUE = {"tools", "metadata", "tool_resources", "parameters"}


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (None if k in OPAQUE else shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def recorded(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(Path(RECORDINGS / name).read_text())["Entries"]
    return entries


def recorded_events(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    from .emu_support import parse_sse

    out: list[tuple[str, Any]] = []
    for event, data in parse_sse("".join(entry["ResponseBody"])):
        assert event is not None
        out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


def assert_same_stream(ours: list[tuple[str, Any]], real: list[tuple[str, Any]]) -> None:
    assert collapse([n for n, _ in ours]) == collapse([n for n, _ in real])

    def shapes(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        last = None
        for name, data in events:
            # The first delta of a run of deltas carries the extra keys (id/name, annotations).
            if name.endswith(".delta") and name == last:
                continue
            out.append((name, shape(data)))
            last = name
        return out

    for (name, ours_shape), (_, real_shape) in zip(shapes(ours), shapes(real), strict=True):
        assert ours_shape == real_shape, name


async def test_plain_text_stream_matches_recording(emulator: Emulator) -> None:
    entries = recorded("StreamingRunWorks.json")
    base = emulator.base_url
    assistant = (await raw_post(base, "/assistants", entries[0]["RequestBody"])).json()
    assert shape(assistant) == shape(entries[0]["ResponseBody"])
    thread = (await raw_post(base, "/threads", entries[1]["RequestBody"])).json()
    assert shape(thread) == shape(entries[1]["ResponseBody"])
    emulator.enqueue(Scenario.text("Hello! I'm doing well, thank you for asking."))
    body = {**entries[2]["RequestBody"], "assistant_id": assistant["id"]}
    ours = await raw_sse(base, f"/threads/{thread['id']}/runs", body)
    assert_same_stream(ours, recorded_events(entries[2]))


async def test_tool_call_streams_match_recording(emulator: Emulator) -> None:
    entries = recorded("StreamingToolCall.json")
    base = emulator.base_url
    assistant = (await raw_post(base, "/assistants", entries[0]["RequestBody"])).json()
    assert shape(assistant) == shape(entries[0]["ResponseBody"])
    assert assistant["tools"] == entries[0]["ResponseBody"]["tools"]
    emulator.enqueue(
        Scenario()
        .tool_round([("get_current_weather", {})])
        .reply("Since it's warm and sunny outside, wear light clothes.")
    )
    ours = await raw_sse(
        base, "/threads/runs", {**entries[1]["RequestBody"], "assistant_id": assistant["id"]}
    )
    assert_same_stream(ours, recorded_events(entries[1]))
    run = ours[-2][1]
    call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    assert call["function"]["arguments"] == "{}"
    body = {"tool_outputs": [{"tool_call_id": call["id"], "output": "warm and sunny"}]}
    resumed = await raw_sse(
        base, f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs", body
    )
    assert_same_stream(resumed, recorded_events(entries[2]))
    assert resumed[0][1]["step_details"]["tool_calls"][0]["function"]["output"] == "warm and sunny"


async def test_non_streamed_function_call_matches_recording(emulator: Emulator) -> None:
    entries = recorded("FunctionToolsWork.json")
    base = emulator.base_url
    assistant = (await raw_post(base, "/assistants", entries[0]["RequestBody"])).json()
    emulator.enqueue(
        Scenario()
        .tool_round([("get_favorite_food_for_day_of_week", {"day_of_week": "Thursday"})])
        .reply("You should eat tacos on Thursday.")
    )
    created = (
        await raw_post(
            base, "/threads/runs", {**entries[1]["RequestBody"], "assistant_id": assistant["id"]}
        )
    ).json()
    assert shape(created) == shape(entries[1]["ResponseBody"])
    assert created["status"] == "queued"
    path = f"/threads/{created['thread_id']}/runs/{created['id']}"
    real_polls = [e for e in entries if e["RequestMethod"] == "GET" and "/runs/" in e["RequestUri"]]
    with anyio.fail_after(30):
        while (run := await raw_get(base, path))["status"] != "requires_action":
            await anyio.sleep(0.01)
    waiting = next(
        e["ResponseBody"] for e in real_polls if e["ResponseBody"]["status"] == "requires_action"
    )
    assert shape(run) == shape(waiting)
    call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    submit = next(e for e in entries if e["RequestUri"].endswith("/submit_tool_outputs"))
    response = await raw_post(
        base,
        path + "/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "tacos"}]},
    )
    assert response.json()["status"] == submit["ResponseBody"]["status"] == "queued"
    assert shape(response.json()) == shape(submit["ResponseBody"])
    with anyio.fail_after(30):
        while (run := await raw_get(base, path))["status"] != "completed":
            await anyio.sleep(0.01)
    done = real_polls[-1]["ResponseBody"]
    assert done["status"] == "completed"
    assert shape(run) == shape(done)
    assert run["expires_at"] is None and run["usage"] is not None
    messages = await raw_get(base, f"/threads/{created['thread_id']}/messages?order=desc")
    assert shape(messages) == shape(entries[-1]["ResponseBody"])
    assert [m["role"] for m in messages["data"]] == ["assistant", "user"]


async def test_rest_shapes_match_basic_operations(emulator: Emulator) -> None:
    entries = recorded("BasicRunOperationsWork.json")
    base = emulator.base_url
    assistant = (await raw_post(base, "/assistants", entries[0]["RequestBody"])).json()
    thread = (await raw_post(base, "/threads", {})).json()
    runs = await raw_get(base, f"/threads/{thread['id']}/runs")
    assert runs == entries[2]["ResponseBody"]
    message = (
        await raw_post(base, f"/threads/{thread['id']}/messages", entries[3]["RequestBody"])
    ).json()
    assert shape(message) == shape(entries[3]["ResponseBody"])
    run = (
        await raw_post(
            base,
            f"/threads/{thread['id']}/runs",
            {**entries[4]["RequestBody"], "assistant_id": assistant["id"]},
        )
    ).json()
    assert shape(run) == shape(entries[4]["ResponseBody"])
    listing = await raw_get(base, f"/threads/{thread['id']}/runs")
    real = entries[6]["ResponseBody"]
    assert set(listing) == set(real)
    assert list(listing["data"][0]) == list(real["data"][0])  # same keys, same order
