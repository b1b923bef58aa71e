"""The real SDK drives the emulator over HTTP: stream helpers, handlers, raw streams, polling."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import AsyncAssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, Text, TextDelta
from openai.types.beta.threads.runs import RunStep, ToolCall

from runmachine.testing import Emulator, Scenario

from .emu_support import make_assistant

pytestmark = [
    pytest.mark.anyio,
    # assistants.create() warns with the bare text "deprecated" (not covered by pyproject).
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]


class Recorder(AsyncAssistantEventHandler):
    """Collects what the SDK's handler callbacks see."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text = ""
        self.tool_calls_created: list[str] = []
        self.tool_calls_done: list[ToolCall] = []
        self.messages_done: list[Message] = []
        self.steps_done: list[RunStep] = []

    async def on_event(self, event: AssistantStreamEvent) -> None:
        self.events.append(event.event)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.text += delta.value or ""

    async def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.tool_calls_created.append(tool_call.id)

    async def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.tool_calls_done.append(tool_call)

    async def on_message_done(self, message: Message) -> None:
        self.messages_done.append(message)

    async def on_run_step_done(self, run_step: RunStep) -> None:
        self.steps_done.append(run_step)


async def test_text_run_through_stream_helper(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario.text("Hello there! How can I help, today?"))
    thread = await openai_client.beta.threads.create(messages=[{"role": "user", "content": "Hi!"}])
    handler = Recorder()
    async with openai_client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert run.status == "completed"
    assert run.usage is not None
    assert run.expires_at is None
    assert handler.text == "Hello there! How can I help, today?"
    assert handler.events.count("thread.message.delta") == 10  # one per token
    assert handler.messages_done[0].content[0].text.value == handler.text  # type: ignore[union-attr]
    assert handler.steps_done[0].type == "message_creation"
    listed = await openai_client.beta.threads.messages.list(thread.id)
    assert [m.role for m in listed.data] == ["assistant", "user"]


async def test_tool_rounds_through_submit_stream(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(
        Scenario()
        .tool_round([("get_weather", {"city": "Paris"}), ("get_rain", {"city": "Paris"})])
        .tool_round([("slow_report", {})])
        .reply("Booked. It is sunny.")
    )
    thread = await openai_client.beta.threads.create()
    handler = Recorder()
    async with openai_client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert run.status == "requires_action"
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_rain"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert handler.tool_calls_created == [c.id for c in calls]
    assert [c.id for c in handler.tool_calls_done] == [c.id for c in calls]

    outputs: Any = [{"tool_call_id": c.id, "output": f"out-{c.function.name}"} for c in calls]
    second = Recorder()
    async with openai_client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id, run_id=run.id, tool_outputs=outputs, event_handler=second
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert second.events[:3] == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    assert run.status == "requires_action"
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    third = Recorder()
    async with openai_client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "ok"}],
        event_handler=third,
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert run.status == "completed"
    assert third.text == "Booked. It is sunny."

    stats = emulator.run_stats(run.id)
    assert (stats.submissions_received, stats.submissions_accepted, stats.rounds) == (2, 2, 2)
    assert stats.submissions_rejected == 0
    assert stats.tool_outputs[0] == {c.id: f"out-{c.function.name}" for c in calls}
    steps = await openai_client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id)
    assert [s.type for s in steps.data] == ["message_creation", "tool_calls", "tool_calls"]
    first_tool_step = steps.data[-1]
    assert first_tool_step.step_details.type == "tool_calls"
    assert first_tool_step.step_details.tool_calls[0].function.output == "out-get_weather"  # type: ignore[union-attr]
    one = await openai_client.beta.threads.runs.steps.retrieve(
        step_id=first_tool_step.id, run_id=run.id, thread_id=thread.id
    )
    assert one.status == "completed"


async def test_raw_create_stream_and_submit_stream(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().tool_round([("get_weather", {"city": "Oslo"})]).reply("Cold."))
    stream = await openai_client.beta.threads.create_and_run(
        assistant_id=assistant_id,
        thread={"messages": [{"role": "user", "content": "weather?"}]},
        stream=True,
    )
    names: list[str] = []
    run_id = thread_id = call_id = ""
    async with stream:
        async for event in stream:
            names.append(event.event)
            if event.event == "thread.run.requires_action":
                run_id, thread_id = event.data.id, event.data.thread_id
                assert event.data.required_action is not None
                call_id = event.data.required_action.submit_tool_outputs.tool_calls[0].id
    assert names[0] == "thread.created"
    assert names[-1] == "thread.run.requires_action"
    resumed = await openai_client.beta.threads.runs.submit_tool_outputs(
        run_id=run_id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": call_id, "output": "-3C"}],
        stream=True,
    )
    names = []
    async with resumed:
        async for event in resumed:
            names.append(event.event)
    assert names[0] == "thread.run.step.completed"
    assert names[-1] == "thread.run.completed"

    created = await openai_client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id, stream=True
    )
    async with created:
        last = [event async for event in created][-1]
    assert last.event == "thread.run.completed"


async def test_create_and_poll_with_toy_model(openai_client: openai.AsyncOpenAI) -> None:
    assistant_id = await make_assistant(openai_client)
    thread = await openai_client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "In Paris use get_weather and get_rain, then slow_report please",
            }
        ]
    )
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=20
    )
    assert run.status == "requires_action"
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_rain"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1].function.arguments) == {"city": "Paris", "days": 1}
    run = await openai_client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": c.id, "output": "fine"} for c in calls],
        poll_interval_ms=20,
    )
    assert run.status == "requires_action"
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "slow_report"
    assert json.loads(call.function.arguments) == {}
    run = await openai_client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "done"}],
        poll_interval_ms=20,
    )
    assert run.status == "completed"
    messages = await openai_client.beta.threads.messages.list(thread.id, run_id=run.id)
    answer = messages.data[0].content[0].text.value  # type: ignore[union-attr]
    assert answer == (
        'get_weather returned "fine". get_rain returned "fine". slow_report returned "done".'
    )


async def test_toy_model_text_and_sequential_calls(openai_client: openai.AsyncOpenAI) -> None:
    assistant_id = await make_assistant(openai_client)
    thread = await openai_client.beta.threads.create(
        messages=[{"role": "user", "content": "Good morning, how are you?"}]
    )
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=20
    )
    assert run.status == "completed"
    messages = await openai_client.beta.threads.messages.list(thread.id)
    assert messages.data[0].content[0].text.value == "You said: Good morning, how are you?"  # type: ignore[union-attr]

    await openai_client.beta.threads.messages.create(
        thread.id, role="user", content="get_weather and get_rain for Rome"
    )
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant_id,
        parallel_tool_calls=False,
        poll_interval_ms=20,
    )
    assert run.parallel_tool_calls is False
    assert run.required_action is not None
    assert [c.function.name for c in run.required_action.submit_tool_outputs.tool_calls] == [
        "get_weather"
    ]


async def test_poll_after_header(emulator: Emulator, openai_client: openai.AsyncOpenAI) -> None:
    emulator.poll_after_ms = 10
    assistant_id = await make_assistant(openai_client)
    thread = await openai_client.beta.threads.create()
    run = await openai_client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant_id
    )
    raw = await openai_client.beta.threads.runs.with_raw_response.retrieve(
        run.id, thread_id=thread.id
    )
    assert raw.headers["openai-poll-after-ms"] == "10"
    polled = await openai_client.beta.threads.runs.poll(run.id, thread_id=thread.id)
    assert polled.status == "completed"
