"""Each injected fault surfaces through the real SDK the way the real API's would."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest

from runmachine.testing import Emulator, Faults, HTTPFault, Scenario

from .emu_support import make_assistant, parse_sse, raw_post

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

TOOL_THEN_TEXT = Scenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny.")


async def _thread(client: openai.AsyncOpenAI) -> str:
    thread = await client.beta.threads.create()
    return thread.id


async def _helper_events(
    client: openai.AsyncOpenAI, thread_id: str, assistant_id: str
) -> list[Any]:
    seen: list[Any] = []
    async with client.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id
    ) as stream:
        async for event in stream:
            seen.append(event)
    return seen


async def _raw_events(client: openai.AsyncOpenAI, thread_id: str, assistant_id: str) -> list[Any]:
    seen: list[Any] = []
    stream = await client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id, stream=True
    )
    async with stream:
        async for event in stream:
            seen.append(event)
    return seen


async def _only_run(client: openai.AsyncOpenAI, thread_id: str) -> Any:
    runs = await client.beta.threads.runs.list(thread_id)
    (run,) = runs.data
    return run


async def test_drop_after_k_events(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(drop_after={0: 4})))
    thread_id = await _thread(openai_client)
    seen: list[Any] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        async with openai_client.beta.threads.runs.stream(
            thread_id=thread_id, assistant_id=assistant_id
        ) as stream:
            async for event in stream:
                seen.append(event.event)
    assert len(seen) == 4
    # The run lives on server-side: polling recovers it.
    run = await openai_client.beta.threads.runs.poll(
        (await _only_run(openai_client, thread_id)).id, thread_id=thread_id, poll_interval_ms=10
    )
    assert run.status == "requires_action"

    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(drop_after={0: 2})))
    with pytest.raises(openai.APIConnectionError):
        await _raw_events(openai_client, await _thread(openai_client), assistant_id)


async def test_drop_on_submit_stream(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(drop_after={1: 3})))
    thread_id = await _thread(openai_client)
    events = await _helper_events(openai_client, thread_id, assistant_id)
    run = events[-1].data
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    names: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        async with openai_client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread_id,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
        ) as stream:
            async for event in stream:
                names.append(event.event)
    assert names == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    stats = emulator.run_stats(run.id)
    assert (stats.submissions_received, stats.submissions_accepted) == (1, 1)


async def test_error_event_bare_and_wrapped(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    # Bare (the spec's shape): the raw stream yields a typed error event and goes on.
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(error_event={0: 3})))
    events = await _raw_events(openai_client, await _thread(openai_client), assistant_id)
    assert [e.event for e in events][-1] == "error"
    assert events[-1].data.message.startswith("The server had an error")
    # ... and the helper passes it on untyped (event None) without raising.
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(error_event={0: 3})))
    events = await _helper_events(openai_client, await _thread(openai_client), assistant_id)
    assert len(events) == 4
    assert events[-1].event is None
    # Wrapped: both paths raise APIError mid-stream.
    for read in (_raw_events, _helper_events):
        emulator.enqueue(
            TOOL_THEN_TEXT.with_faults(Faults(error_event={0: 3}, error_shape="wrapped"))
        )
        with pytest.raises(openai.APIError) as info:
            await read(openai_client, await _thread(openai_client), assistant_id)
        assert not isinstance(info.value, openai.APIStatusError)
        assert info.value.body == {
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
            "param": None,
            "type": "server_error",
        }


@pytest.mark.emulator(error_shape="wrapped")
async def test_error_shape_is_an_emulator_option(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(error_event={0: 0})))
    with pytest.raises(openai.APIError):
        await _helper_events(openai_client, await _thread(openai_client), assistant_id)


async def test_unknown_event_never_raises(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(unknown_event={0: 2})))
    events = await _raw_events(openai_client, await _thread(openai_client), assistant_id)
    assert events[2].event == "thread.run.step.frobnicated"
    assert events[-1].event == "thread.run.requires_action"
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(unknown_event={0: 5})))
    events = await _helper_events(openai_client, await _thread(openai_client), assistant_id)
    assert events[-1].event == "thread.run.requires_action"


async def test_malformed_data_raises_json_error(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    for read in (_raw_events, _helper_events):
        emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(malformed_data={0: 4})))
        with pytest.raises(json.JSONDecodeError):
            await read(openai_client, await _thread(openai_client), assistant_id)


async def test_http_fault_is_retried_then_succeeds(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    faults = Faults(
        http_errors=[
            HTTPFault("create_run", nth=1, status=429, retry_after=0.01),
            HTTPFault("submit_tool_outputs", nth=1, status=503, retry_after=0.01),
        ]
    )
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(faults))
    thread_id = await _thread(openai_client)
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=10
    )
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    run = await openai_client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread_id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
        poll_interval_ms=10,
    )
    assert run.status == "completed"
    stats = emulator.run_stats(run.id)
    assert stats.submissions_received == 2
    assert (stats.submissions_accepted, stats.submissions_rejected) == (1, 0)
    assert stats.submissions_faulted == 1
    assert stats.requests["create_run"] == 2


async def test_http_fault_exhausts_retries(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    faults = Faults(
        http_errors=[
            HTTPFault("create_run", nth=n, status=500, retry_after=0.01) for n in (1, 2, 3)
        ]
    )
    emulator.enqueue(Scenario.text("never").with_faults(faults))
    thread_id = await _thread(openai_client)
    with pytest.raises(openai.InternalServerError) as info:
        await openai_client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    # The scenario was not consumed: the next create takes it (its 4th request passes).
    run = await openai_client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert emulator.run_stats(run.id).status in {"queued", "in_progress", "completed"}


async def test_rate_limit_envelope_and_retry_after(emulator: Emulator) -> None:
    emulator.inject(HTTPFault("create_thread", nth=1, status=429, retry_after=7))
    response = await raw_post(emulator.base_url, "/threads", {})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    second = await raw_post(emulator.base_url, "/threads", {})
    assert second.status_code == 200


async def test_emulator_wide_fault_surfaces_as_rate_limit(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    for nth in (1, 2, 3):
        emulator.inject(HTTPFault("create_thread", nth=nth, status=429, retry_after=0.01))
    with pytest.raises(openai.RateLimitError):
        await openai_client.beta.threads.create()


async def test_lost_submit_response_non_streamed(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(
        Scenario().tool_round([("f", {})]).hang().with_faults(Faults(lose_submit_response={1}))
    )
    thread_id = await _thread(openai_client)
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=10
    )
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    # The first POST is accepted but its response is cut; the SDK retries it and the retry
    # finds the run no longer waiting for outputs.
    with pytest.raises(openai.BadRequestError) as info:
        await openai_client.beta.threads.runs.submit_tool_outputs(
            thread_id=thread_id,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
        )
    assert info.value.message in {
        'Error code: 400 - Runs in status "queued" do not accept tool outputs.',
        'Error code: 400 - Runs in status "in_progress" do not accept tool outputs.',
    }
    stats = emulator.run_stats(run.id)
    assert (stats.submissions_received, stats.submissions_accepted) == (2, 1)
    assert stats.tool_outputs == ({call.id: "x"},)
    await openai_client.beta.threads.runs.cancel(run.id, thread_id=thread_id)


async def test_lost_submit_response_without_retries(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(lose_submit_response={1})))
    thread_id = await _thread(openai_client)
    run = await openai_client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=10
    )
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    with pytest.raises(openai.APIConnectionError):
        await openai_client.with_options(max_retries=0).beta.threads.runs.submit_tool_outputs(
            thread_id=thread_id,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
        )
    done = await openai_client.beta.threads.runs.poll(
        run.id, thread_id=thread_id, poll_interval_ms=10
    )
    assert done.status == "completed"
    assert emulator.run_stats(run.id).submissions_accepted == 1


async def test_lost_submit_response_streamed(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(TOOL_THEN_TEXT.with_faults(Faults(lose_submit_response={1})))
    thread_id = await _thread(openai_client)
    events = await _helper_events(openai_client, thread_id, assistant_id)
    run = events[-1].data
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    with pytest.raises(httpx2.RemoteProtocolError):
        async with openai_client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread_id,
            run_id=run.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
        ) as stream:
            async for _ in stream:
                pass
    done = await openai_client.beta.threads.runs.poll(
        run.id, thread_id=thread_id, poll_interval_ms=10
    )
    assert done.status == "completed"


async def test_delta_delay_fault_and_hang_keepalive(emulator: Emulator) -> None:
    emulator.keepalive_interval = 0.05
    response = await raw_post(emulator.base_url, "/assistants", {"model": "gpt-4o"})
    assistant_id = response.json()["id"]
    emulator.enqueue(Scenario().reply("a b c").hang().with_faults(Faults(delta_delay=0.01)))
    async with httpx2.AsyncClient(timeout=30) as http:
        thread = (await http.post(emulator.base_url + "/threads", json={})).json()
        body = ""
        async with http.stream(
            "POST",
            f"{emulator.base_url}/threads/{thread['id']}/runs",
            json={"assistant_id": assistant_id, "stream": True},
        ) as stream:
            run_id = None
            chunks = stream.aiter_text()
            async for chunk in chunks:
                body += chunk
                if run_id is None and "thread.run.created" in body:
                    run_id = json.loads(parse_sse(body)[0][1])["id"]
                if ": keep-alive" in body and run_id is not None:
                    break
            assert run_id is not None
            cancel = await http.post(
                f"{emulator.base_url}/threads/{thread['id']}/runs/{run_id}/cancel"
            )
            assert cancel.json()["status"] == "cancelling"
            async for chunk in chunks:
                body += chunk
    names = [name for name, _ in parse_sse(body)]
    assert names.count("thread.message.delta") == 3
    assert names[-3:] == ["thread.run.cancelling", "thread.run.cancelled", "done"]
