"""Every 400 and 404 the emulator answers, seen through the SDK's exception types."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from runmachine.testing import Emulator, Scenario

from .emu_support import make_assistant

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]


def _message(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> str:
    body: Any = exc.value.body
    assert set(body) == {"message", "type", "param", "code"}
    return str(body["message"])


async def test_not_found(openai_client: openai.AsyncOpenAI) -> None:
    client = openai_client
    assistant_id = await make_assistant(client)
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=10
    )
    cases: list[tuple[Any, str]] = [
        (client.beta.assistants.retrieve("asst_nope"), "No assistant found with id 'asst_nope'."),
        (
            client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope"),
            "No assistant found with id 'asst_nope'.",
        ),
        (
            client.beta.threads.create_and_run(assistant_id="asst_nope"),
            "No assistant found with id 'asst_nope'.",
        ),
        (
            client.beta.threads.runs.create(thread_id="thread_nope", assistant_id=assistant_id),
            "No thread found with id 'thread_nope'.",
        ),
        (
            client.beta.threads.messages.create("thread_nope", role="user", content="x"),
            "No thread found with id 'thread_nope'.",
        ),
        (
            client.beta.threads.messages.list("thread_nope"),
            "No thread found with id 'thread_nope'.",
        ),
        (client.beta.threads.runs.list("thread_nope"), "No thread found with id 'thread_nope'."),
        (
            client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id),
            "No run found with id 'run_nope'.",
        ),
        (
            client.beta.threads.runs.cancel("run_nope", thread_id=thread.id),
            "No run found with id 'run_nope'.",
        ),
        (
            client.beta.threads.runs.submit_tool_outputs(
                "run_nope", thread_id=thread.id, tool_outputs=[]
            ),
            "No run found with id 'run_nope'.",
        ),
        (
            client.beta.threads.runs.steps.list("run_nope", thread_id=thread.id),
            "No run found with id 'run_nope'.",
        ),
        (
            client.beta.threads.runs.steps.retrieve(
                "step_nope", thread_id=thread.id, run_id=run.id
            ),
            "No run step found with id 'step_nope'.",
        ),
    ]
    for call, text in cases:
        with pytest.raises(openai.NotFoundError) as info:
            await call
        assert info.value.status_code == 404
        assert _message(info) == text
        assert info.value.type == "invalid_request_error"


async def test_submit_rejections(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    client = openai_client
    assistant_id = await make_assistant(client)
    emulator.enqueue(Scenario().tool_round([("get_weather", {}), ("get_rain", {})]).reply("ok"))
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=10
    )
    assert run.required_action is not None
    a, b = (c.id for c in run.required_action.submit_tool_outputs.tool_calls)
    submit = client.beta.threads.runs.submit_tool_outputs
    with pytest.raises(openai.BadRequestError) as info:
        await submit(run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": a, "output": "1"}])
    assert _message(info) == f"Expected tool outputs for call_ids ['{a}', '{b}'], got ['{a}']"
    with pytest.raises(openai.BadRequestError) as info:
        await submit(
            run.id,
            thread_id=thread.id,
            tool_outputs=[
                {"tool_call_id": a, "output": "1"},
                {"tool_call_id": "call_bogus", "output": "2"},
            ],
        )
    assert _message(info) == (
        f"Expected tool outputs for call_ids ['{a}', '{b}'], got ['{a}', 'call_bogus']"
    )
    with pytest.raises(openai.BadRequestError) as info:
        await client.post(
            f"/threads/{thread.id}/runs/{run.id}/submit_tool_outputs",
            body={},
            cast_to=object,
        )
    assert _message(info) == "Missing required parameter: 'tool_outputs'."
    outputs: Any = [{"tool_call_id": a, "output": "1"}, {"tool_call_id": b, "output": "2"}]
    await submit(run.id, thread_id=thread.id, tool_outputs=outputs)
    done = await client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=10)
    assert done.status == "completed"
    with pytest.raises(openai.BadRequestError) as info:
        await submit(run.id, thread_id=thread.id, tool_outputs=outputs)
    assert _message(info) == 'Runs in status "completed" do not accept tool outputs.'
    stats = emulator.run_stats(run.id)
    assert (stats.submissions_received, stats.submissions_accepted) == (5, 1)
    assert stats.submissions_rejected == 4


@pytest.mark.emulator(queue_delay=30.0)
async def test_queued_run_rejects_outputs_and_locks_thread(
    openai_client: openai.AsyncOpenAI,
) -> None:
    client = openai_client
    assistant_id = await make_assistant(client)
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id)
    assert run.status == "queued"
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "1"}]
        )
    assert _message(info) == 'Runs in status "queued" do not accept tool outputs.'
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert _message(info) == f"Can't add messages to {thread.id} while a run {run.id} is active."
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id)
    assert _message(info) == f"Thread {thread.id} already has an active run {run.id}."
    cancelled = await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelling"
    final = await client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=10)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert _message(info) == "Cannot cancel run with status 'cancelled'."
    # The lock is gone with the run.
    await client.beta.threads.messages.create(thread.id, role="user", content="more")


async def test_bad_requests(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    client = openai_client
    thread = await client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as info:
        await client.post(f"/threads/{thread.id}/runs", body={}, cast_to=object)
    assert _message(info) == "Missing required parameter: 'assistant_id'."
    assert info.value.param == "assistant_id"
    with pytest.raises(openai.BadRequestError) as info:
        await client.post("/assistants", body={}, cast_to=object)
    assert _message(info) == "Missing required parameter: 'model'."
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.messages.create(thread.id, role="system", content="x")  # type: ignore[arg-type]
    assert (
        _message(info) == "Invalid value: 'system'. Supported values are: 'user' and 'assistant'."
    )
    async with httpx2.AsyncClient() as http:
        response = await http.post(emulator.base_url + "/threads", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "We could not parse the JSON body of your request."
    )
