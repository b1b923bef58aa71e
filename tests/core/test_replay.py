"""Real recordings, read by the real SDK off a real socket, drive the machine.

The same bytes also go through the SDK's own ``AsyncAssistantEventHandler``; both must see the
same hook calls with the same snapshots, and end with the recorded text.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import AsyncAssistantEventHandler

from runmachine import RunMachine

from .replay import load, serve_recording, sse_events

pytestmark = pytest.mark.anyio


def _log_entry(name: str, *args: Any) -> tuple[Any, ...]:
    def plain(value: Any) -> Any:
        return value.model_dump(exclude_unset=False) if hasattr(value, "model_dump") else value

    return (name, *(plain(a) for a in args))


class _Logging:
    log: list[tuple[Any, ...]]

    async def on_message_created(self, message: Any) -> None:
        self.log.append(_log_entry("message_created", message))

    async def on_message_delta(self, delta: Any, snapshot: Any) -> None:
        self.log.append(_log_entry("message_delta", delta, snapshot))

    async def on_message_done(self, message: Any) -> None:
        self.log.append(_log_entry("message_done", message))

    async def on_text_created(self, text: Any) -> None:
        self.log.append(_log_entry("text_created", text))

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.log.append(_log_entry("text_delta", delta, snapshot))

    async def on_text_done(self, text: Any) -> None:
        self.log.append(_log_entry("text_done", text))

    async def on_run_step_created(self, step: Any) -> None:
        self.log.append(_log_entry("step_created", step))

    async def on_run_step_delta(self, delta: Any, snapshot: Any) -> None:
        self.log.append(_log_entry("step_delta", delta, snapshot))

    async def on_run_step_done(self, step: Any) -> None:
        self.log.append(_log_entry("step_done", step))

    async def on_tool_call_created(self, call: Any) -> None:
        self.log.append(_log_entry("tool_call_created", call))

    async def on_tool_call_delta(self, delta: Any, snapshot: Any) -> None:
        self.log.append(_log_entry("tool_call_delta", delta, snapshot))

    async def on_tool_call_done(self, call: Any) -> None:
        self.log.append(_log_entry("tool_call_done", call))


class LoggingMachine(_Logging, RunMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = []


class LoggingHandler(_Logging, AsyncAssistantEventHandler):
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.log = log


def _once_per_call(log: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The SDK's handler reports the last tool call done again at every later step end of the
    same stream; the machine reports each call done once. Drop the SDK's repeats."""
    seen: set[str] = set()
    kept = []
    for entry in log:
        if entry[0] == "tool_call_done":
            if entry[1]["id"] in seen:
                continue
            seen.add(entry[1]["id"])
        kept.append(entry)
    return kept


def _completed_text(entry: dict[str, Any]) -> str:
    for name, data in sse_events(entry):
        if name == "thread.message.completed":
            return "".join(c["text"]["value"] for c in json.loads(data)["content"])
    raise AssertionError("no thread.message.completed in the recording")


async def _feed_stream(machine: RunMachine, stream: Any) -> None:
    async with stream:
        async for event in stream:
            await machine.feed(event)


async def test_streaming_tool_call_recording() -> None:
    entries = load("StreamingToolCall.json")
    create, submit = entries[1], entries[2]
    with serve_recording(entries) as base_url:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="sk-test", max_retries=0
        ) as client:
            machine = LoggingMachine()
            stream = await client.beta.threads.create_and_run(assistant_id="asst_x", stream=True)
            await _feed_stream(machine, stream)
            assert machine.state == "requires_action"
            run = machine.current_run()
            assert run is not None and run.required_action is not None
            call_ids = [c.id for c in run.required_action.submit_tool_outputs.tool_calls]
            await machine.core.hand_over_outputs(call_ids)
            assert machine.state == "submitting"
            stream = await client.beta.threads.runs.submit_tool_outputs(
                run_id=run.id,
                thread_id=run.thread_id,
                tool_outputs=[{"tool_call_id": c, "output": "warm and sunny"} for c in call_ids],
                stream=True,
            )
            await _feed_stream(machine, stream)

            # The SDK's own handler reads the same bytes.
            sdk_log: list[tuple[Any, ...]] = []
            async with client.beta.threads.create_and_run_stream(
                assistant_id="asst_x", event_handler=LoggingHandler(sdk_log)
            ) as handler:
                await handler.until_done()
            async with client.beta.threads.runs.submit_tool_outputs_stream(
                run_id=run.id,
                thread_id=run.thread_id,
                tool_outputs=[{"tool_call_id": c, "output": "warm and sunny"} for c in call_ids],
                event_handler=LoggingHandler(sdk_log),
            ) as handler:
                await handler.until_done()
                sdk_final_messages = await handler.get_final_messages()
                sdk_final_run = await handler.get_final_run()

    path = [(r.source, r.dest) for r in machine.history]
    assert path == [
        ("pending", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "requires_action"),
        ("requires_action", "submitting"),
        ("submitting", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "completed"),
    ]
    assert machine.text() == _completed_text(submit)
    assert machine.final_run().model_dump() == sdk_final_run.model_dump()
    assert [m.model_dump() for m in machine.final_messages()] == [
        m.model_dump() for m in sdk_final_messages
    ]
    # Hook for hook, snapshot for snapshot, the same as the SDK's handler.
    assert [e[0] for e in machine.log] == [e[0] for e in _once_per_call(sdk_log)]
    assert machine.log == _once_per_call(sdk_log)
    assert any(e[0] == "tool_call_created" for e in machine.log)
    assert sum(1 for e in machine.log if e[0] == "text_delta") == sum(
        1 for name, _ in sse_events(submit) if name == "thread.message.delta"
    )
    assert create["StatusCode"] == 200


@pytest.mark.parametrize("recording", ["StreamingRunWorks.json", "FileSearchStreamingWorks.json"])
async def test_streaming_text_recordings(recording: str) -> None:
    entries = load(recording)
    streamed = next(e for e in entries if isinstance(e["ResponseBody"], list))
    thread_id = streamed["RequestUri"].split("/threads/")[1].split("/")[0]
    with serve_recording(entries) as base_url:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="sk-test", max_retries=0
        ) as client:
            machine = LoggingMachine()
            stream = await client.beta.threads.runs.create(
                thread_id=thread_id, assistant_id="asst_x", stream=True
            )
            await _feed_stream(machine, stream)
            sdk_log: list[tuple[Any, ...]] = []
            async with client.beta.threads.runs.stream(
                thread_id=thread_id, assistant_id="asst_x", event_handler=LoggingHandler(sdk_log)
            ) as handler:
                await handler.until_done()
    assert [r.dest for r in machine.history] == ["queued", "in_progress", "completed"]
    assert machine.text() == _completed_text(streamed)
    assert machine.log == _once_per_call(sdk_log)
    assert machine.tolerated == [] or all(t.kind == "repeat" for t in machine.tolerated)
