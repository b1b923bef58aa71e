"""Scripted scenarios: failure, incomplete, expiry, loops, hanging runs, cancellation, scripts."""

from __future__ import annotations

from typing import Any

import anyio
import openai
import pytest

from runmachine.testing import Emulator, Scenario

from .emu_support import make_assistant

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]


async def _stream(client: openai.AsyncOpenAI, thread_id: str, assistant_id: str) -> list[Any]:
    async with client.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id
    ) as stream:
        return [event async for event in stream]


async def _submit_all(client: openai.AsyncOpenAI, run: Any, output: str = "x") -> list[Any]:
    outputs: Any = [
        {"tool_call_id": c.id, "output": output}
        for c in run.required_action.submit_tool_outputs.tool_calls
    ]
    async with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=outputs
    ) as stream:
        return [event async for event in stream]


async def _wait_status(emulator: Emulator, run_id: str, status: str) -> None:
    with anyio.fail_after(30):
        while emulator.run_stats(run_id).status != status:
            await anyio.sleep(0.02)


async def test_fail(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().fail(code="rate_limit_exceeded", message="Slow down."))
    thread = await openai_client.beta.threads.create()
    events = await _stream(openai_client, thread.id, assistant_id)
    assert [e.event for e in events] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.failed",
    ]
    run = events[-1].data
    assert run.last_error.code == "rate_limit_exceeded"
    assert run.last_error.message == "Slow down."
    assert run.failed_at is not None


async def test_incomplete(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().reply("Partial answer").incomplete("max_completion_tokens"))
    thread = await openai_client.beta.threads.create()
    events = await _stream(openai_client, thread.id, assistant_id)
    names = [e.event for e in events]
    assert names[-3:] == [
        "thread.message.incomplete",
        "thread.run.step.completed",
        "thread.run.incomplete",
    ]
    assert events[-3].data.incomplete_details.reason == "max_tokens"
    assert events[-1].data.incomplete_details.reason == "max_completion_tokens"


async def test_expire_after_tool_round(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().tool_round([("get_weather", {})]).expire())
    thread = await openai_client.beta.threads.create()
    events = await _stream(openai_client, thread.id, assistant_id)
    assert events[-1].event == "thread.run.requires_action"
    run = await openai_client.beta.threads.runs.retrieve(events[-1].data.id, thread_id=thread.id)
    assert run.status == "expired"
    with pytest.raises(openai.BadRequestError, match='Runs in status "expired"'):
        await _submit_all(openai_client, events[-1].data)
    steps = await openai_client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert steps.data[0].status == "expired"


async def test_ttl_expires_requires_action(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario(ttl=0.3).tool_round([("get_weather", {})]))
    thread = await openai_client.beta.threads.create()
    events = await _stream(openai_client, thread.id, assistant_id)
    run = events[-1].data
    assert run.status == "requires_action"
    assert run.expires_at - run.created_at in (0, 1)
    await _wait_status(emulator, run.id, "expired")
    with pytest.raises(openai.BadRequestError, match='Runs in status "expired"'):
        await _submit_all(openai_client, run)


@pytest.mark.emulator(run_ttl=0.3)
async def test_hang_until_expired_on_open_stream(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().hang())
    thread = await openai_client.beta.threads.create()
    events = await _stream(openai_client, thread.id, assistant_id)
    assert [e.event for e in events][-2:] == ["thread.run.in_progress", "thread.run.expired"]


@pytest.mark.parametrize("pushed", [True, False])
async def test_cancel_hanging_run(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, pushed: bool
) -> None:
    emulator.stream_cancelling = pushed
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().reply("Thinking").hang())
    thread = await openai_client.beta.threads.create()
    names: list[str] = []
    async with openai_client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant_id
    ) as stream:
        async for event in stream:
            names.append(event.event)
            if event.event == "thread.run.step.completed":
                run_id = event.data.run_id
                cancelled = await openai_client.beta.threads.runs.cancel(
                    run_id, thread_id=thread.id
                )
                assert cancelled.status == "cancelling"
        final = await stream.get_final_run()
    assert final.status == "cancelled"
    assert ("thread.run.cancelling" in names) is pushed
    assert names[-1] == "thread.run.cancelled"
    assert emulator.run_stats(final.id).cancel_requests == 1


async def test_cancel_in_requires_action(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().tool_round([("get_weather", {})]))
    thread = await openai_client.beta.threads.create()
    run = (await _stream(openai_client, thread.id, assistant_id))[-1].data
    cancelling = await openai_client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    await _wait_status(emulator, run.id, "cancelled")
    steps = await openai_client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert steps.data[0].status == "cancelled"


async def test_loop_new_ids_and_same_ids(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    for same in (False, True):
        emulator.enqueue(Scenario().loop([("get_weather", {"city": "X"})], same_ids=same))
        thread = await openai_client.beta.threads.create()
        run = (await _stream(openai_client, thread.id, assistant_id))[-1].data
        ids = [run.required_action.submit_tool_outputs.tool_calls[0].id]
        for _ in range(3):
            run = (await _submit_all(openai_client, run))[-1].data
            assert run.status == "requires_action"
            ids.append(run.required_action.submit_tool_outputs.tool_calls[0].id)
        assert (len(set(ids)) == 1) is same
        assert len(set(ids)) in (1, 4)
        stats = emulator.run_stats(run.id)
        assert (stats.rounds, stats.submissions_accepted) == (4, 3)
        await openai_client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


async def test_bounded_loop_then_reply(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(Scenario().loop([("get_rain", {})], times=2).reply("ok"))
    thread = await openai_client.beta.threads.create()
    run = (await _stream(openai_client, thread.id, assistant_id))[-1].data
    run = (await _submit_all(openai_client, run))[-1].data
    assert run.status == "requires_action"
    events = await _submit_all(openai_client, run)
    assert events[-1].event == "thread.run.completed"
    assert emulator.run_stats(run.id).rounds == 2


async def test_script_and_queue_precedence(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.script(assistant_id, Scenario.text("scripted"))
    emulator.enqueue(Scenario.text("queued"))
    texts = []
    for _ in range(3):
        thread = await openai_client.beta.threads.create()
        run = await openai_client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=10
        )
        assert run.status == "completed"
        messages = await openai_client.beta.threads.messages.list(thread.id)
        texts.append(messages.data[0].content[0].text.value)  # type: ignore[union-attr]
    assert texts == ["queued", "scripted", "scripted"]
    snapshot = emulator.runs_snapshot(run.id)
    assert snapshot["status"] == "completed"
    emulator.reset()
    with pytest.raises(KeyError):
        emulator.run_stats(run.id)


async def test_list_paging(openai_client: openai.AsyncOpenAI) -> None:
    thread = await openai_client.beta.threads.create()
    for n in range(5):
        await openai_client.beta.threads.messages.create(thread.id, role="user", content=f"m{n}")
    page = await openai_client.beta.threads.messages.list(thread.id, limit=2, order="asc")
    assert page.has_more
    seen = [m.content[0].text.value async for m in page]  # type: ignore[union-attr]
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    desc = await openai_client.beta.threads.messages.list(thread.id, limit=10)
    assert desc.data[0].content[0].text.value == "m4"  # type: ignore[union-attr]
    assert desc.first_id == desc.data[0].id and not desc.has_more
