"""Driving runs end to end: the real SDK over real HTTP to the emulator, on asyncio and trio."""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar, Literal

import anyio
import openai
import pytest

from runmachine import (
    HookError,
    RequiresActionLoop,
    RunMachine,
    ToolFailed,
    TooManyRounds,
    tool,
)
from runmachine.testing import Emulator, Faults, HTTPFault, Scenario

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.02, "max_poll_interval": 0.05}


class Weather(RunMachine):
    @tool
    async def get_weather(self, city: str, unit: Literal["c", "f"] = "c") -> str:
        """Current weather in a city."""
        return f"sunny in {city} ({unit})"

    @tool(name="get_rain", timeout=5.0)
    def rain(self, city: str) -> float:
        """Probability of rain (a plain function: runs in a worker thread)."""
        return 0.25

    @tool
    def explode(self) -> str:
        raise ValueError("kaboom")

    @tool(timeout=0.05)
    async def slow(self) -> str:
        await anyio.sleep_forever()
        return "never"

    @tool
    async def stuck(self) -> str:
        await anyio.sleep_forever()
        return "never"


def outputs_of(result: Any) -> dict[str, str]:
    return {c.name: c.output for c in result.tool_calls}


def assert_one_submission_per_round(emulator: Emulator, result: Any) -> None:
    stats = emulator.run_stats(result.run.id)
    assert stats.submissions_rejected == 0
    assert stats.submissions_accepted == result.rounds
    # Every required call got exactly one output, in the round it belonged to.
    submitted = [cid for outputs in stats.tool_outputs for cid in outputs]
    assert sorted(submitted) == sorted(c.id for c in result.tool_calls)
    assert len(set(submitted)) == len(submitted)


async def test_plain_text(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario.text("Hello there, friend."))
    thread_id, assistant_id = await thread_and_assistant()
    result = await Weather(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.text == "Hello there, friend."
    assert result.rounds == 0
    assert [t.dest for t in result.transitions] == ["queued", "in_progress", "completed"]
    assert result.usage is not None


async def test_one_tool_call(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny."))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    result = await Weather(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert outputs_of(result) == {"get_weather": "sunny in Paris (c)"}
    assert result.text == "Sunny."
    assert result.tool_calls[0].round == 1
    assert result.tool_calls[0].duration is not None
    assert_one_submission_per_round(emulator, result)
    path = [(t.source, t.dest) for t in result.transitions]
    assert ("requires_action", "submitting") in path
    assert ("submitting", "queued") in path


async def test_three_chained_rounds_sync_and_async_tools(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(
        Scenario()
        .tool_round([("get_weather", {"city": "Oslo"}), ("get_rain", {"city": "Oslo"})])
        .tool_round([("get_rain", {"city": "Rome"})])
        .tool_round([("get_weather", {"city": "Rome", "unit": "f"})])
        .reply("All done.")
    )
    thread_id, assistant_id = await thread_and_assistant(Weather)
    result = await Weather(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.rounds == 3
    assert [(c.round, c.name, c.output) for c in result.tool_calls] == [
        (1, "get_weather", "sunny in Oslo (c)"),
        (1, "get_rain", "0.25"),
        (2, "get_rain", "0.25"),
        (3, "get_weather", "sunny in Rome (f)"),
    ]
    assert_one_submission_per_round(emulator, result)
    assert sum(1 for t in result.transitions if t.dest == "submitting") == 3


class Barrier(RunMachine):
    """Eight tools that each wait until all eight have started: only concurrency finishes."""

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self.started = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.all_started = anyio.Event()

    @tool
    async def wait_for_all(self, n: int) -> str:
        self.started += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.started == 8:
            self.all_started.set()
        await self.all_started.wait()
        self.in_flight -= 1
        return f"done {n}"

    @tool
    async def hold(self, n: int) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        self.in_flight -= 1
        return f"held {n}"


async def test_parallel_calls_meet_at_a_barrier(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(
        Scenario().tool_round([("wait_for_all", {"n": i}) for i in range(8)]).reply("ok")
    )
    thread_id, assistant_id = await thread_and_assistant(Barrier)
    machine = Barrier(openai_client)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert machine.most_in_flight == 8
    assert sorted(outputs_of(result).values()) == [] or len(result.tool_calls) == 8


async def test_tool_concurrency_limit(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("hold", {"n": i}) for i in range(8)]).reply("ok"))
    thread_id, assistant_id = await thread_and_assistant(Barrier)
    machine = Barrier(openai_client, tool_concurrency=3)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert machine.most_in_flight == 3
    assert [c.output for c in result.tool_calls] == [f"held {i}" for i in range(8)]


async def test_bad_input_becomes_structured_error_outputs(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(
        Scenario()
        .tool_round(
            [
                ("get_weather", '{"city": "Par'),  # not JSON
                ("get_rain", {"city": 3}),  # does not match the schema
                ("get_weather", {"town": "Lyon"}),  # missing required, extra key
                ("no_such_tool", {}),
                ("explode", {}),
                ("slow", {}),
            ]
        )
        .reply("Coped.")
    )
    thread_id, assistant_id = await thread_and_assistant(Weather)
    result = await Weather(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    kinds = [json.loads(c.output)["error"]["type"] for c in result.tool_calls]
    assert kinds == [
        "invalid_json",
        "invalid_arguments",
        "invalid_arguments",
        "unknown_tool",
        "tool_raised",
        "timeout",
    ]
    assert all(c.error for c in result.tool_calls)
    assert "kaboom" in result.tool_calls[4].output
    assert "no_such_tool" in result.tool_calls[3].output
    assert_one_submission_per_round(emulator, result)


class Strict(Weather):
    def on_tool_error(self, tool_call: Any, error: BaseException) -> bool:
        return tool_call.name == "explode"


async def test_on_tool_error_may_fail_the_run(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("explode", {})]).reply("never"))
    thread_id, assistant_id = await thread_and_assistant(Strict)
    with pytest.raises(ToolFailed, match="explode") as info:
        await Strict(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    partial = info.value.result
    assert partial is not None
    stats = emulator.run_stats(partial.run_id)
    assert stats.cancel_requests == 1
    assert stats.submissions_received == 0


@pytest.mark.emulator(run_ttl=3.0)
async def test_slow_tool_near_expiry_does_not_expire_the_run(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(
        Scenario().tool_round([("stuck", {}), ("get_rain", {"city": "x"})]).reply("ok")
    )
    thread_id, assistant_id = await thread_and_assistant(Weather)
    machine = Weather(openai_client, deadline_margin=1.0)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    stuck = result.tool_calls[0]
    assert json.loads(stuck.output)["error"]["type"] == "deadline"
    # It did run, until the deadline cut it: its duration is known.
    assert stuck.duration is not None and stuck.duration > 0
    assert result.tool_calls[1].output == "0.25"
    assert_one_submission_per_round(emulator, result)


@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        (Scenario().fail(code="server_error", message="Sorry, something went wrong."), "failed"),
        (Scenario().reply("Partial").incomplete("max_completion_tokens"), "incomplete"),
        (Scenario().tool_round([("get_rain", {"city": "x"})]).expire(), "expired"),
    ],
)
async def test_terminal_outcomes_are_results(
    emulator: Emulator,
    openai_client: Any,
    thread_and_assistant: Any,
    scenario: Scenario,
    status: str,
) -> None:
    emulator.enqueue(scenario)
    thread_id, assistant_id = await thread_and_assistant(Weather)
    result = await Weather(openai_client, **FAST).run(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert result.status == status
    assert result.run.status == status
    if status == "failed":
        assert result.run.last_error.code == "server_error"
    if status == "incomplete":
        assert result.run.incomplete_details.reason == "max_completion_tokens"
    assert emulator.run_stats(result.run_id).submissions_rejected <= (
        1 if status == "expired" else 0
    )


async def test_identical_rounds_are_a_loop(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().loop([("get_rain", {"city": "Oslo"})]))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    with pytest.raises(RequiresActionLoop, match="max_identical_rounds=2") as info:
        await Weather(openai_client, max_identical_rounds=2).run(
            thread_id=thread_id, assistant_id=assistant_id
        )
    partial = info.value.result
    assert partial is not None
    assert partial.rounds == 2
    stats = emulator.run_stats(partial.run_id)
    assert stats.submissions_accepted == 2
    assert stats.cancel_requests == 1
    # The guard waited for its cancel to land, and reports the state the run reached.
    assert stats.status == "cancelled"
    assert partial.status == "cancelled"
    assert [t.dest for t in partial.transitions][-2:] == ["cancelling", "cancelled"]


async def test_same_call_ids_again_are_never_run_twice(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().loop([("get_rain", {"city": "Oslo"})], same_ids=True))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    with pytest.raises(RequiresActionLoop, match="again") as info:
        await Weather(openai_client, **FAST).run(thread_id=thread_id, assistant_id=assistant_id)
    partial = info.value.result
    assert partial is not None
    assert len(partial.tool_calls) == 1  # the tool ran once
    stats = emulator.run_stats(partial.run_id)
    assert stats.submissions_rejected == 0
    assert stats.submissions_accepted == 2  # the original and one confirmed resubmission
    assert stats.cancel_requests == 1


async def test_max_rounds(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    scenario = Scenario()
    for i in range(4):
        scenario = scenario.tool_round([("get_rain", {"city": f"c{i}"})])
    emulator.enqueue(scenario.reply("never"))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    with pytest.raises(TooManyRounds, match="max_rounds=3") as info:
        await Weather(openai_client, max_rounds=3).run(
            thread_id=thread_id, assistant_id=assistant_id
        )
    assert info.value.result is not None
    assert info.value.result.rounds == 3
    assert emulator.run_stats(info.value.result.run_id).cancel_requests == 1


class Blocking(Weather):
    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self.entered = anyio.Event()

    @tool
    async def wait_here(self) -> str:
        self.entered.set()
        await anyio.sleep_forever()
        return "never"

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.entered.set()


@pytest.mark.parametrize("where", ["mid_tool", "mid_stream"])
async def test_host_cancel_cancels_the_server_run(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, where: str
) -> None:
    if where == "mid_tool":
        emulator.enqueue(Scenario().tool_round([("wait_here", {})]).reply("never"))
    else:
        emulator.enqueue(Scenario().reply("word " * 50).hang())
    thread_id, assistant_id = await thread_and_assistant(Blocking)
    machine = Blocking(openai_client)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: machine.run(thread_id=thread_id, assistant_id=assistant_id))
        await machine.entered.wait()
        tg.cancel_scope.cancel()
    assert machine.run_id is not None
    stats = emulator.run_stats(machine.run_id)
    assert stats.cancel_requests == 1
    assert stats.status == "cancelled"
    assert machine.state == "cancelled"
    # The thread is not left locked: a new run can start on it.
    emulator.enqueue(Scenario.text("again"))
    for _ in range(100):
        if emulator.run_stats(machine.run_id).status == "cancelled":
            break
        await anyio.sleep(0.01)
    result = await Weather(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.text == "again"


TOOL_SCENARIO_EVENTS = 12  # events in the first stream of the one-round scenario, checked below


async def test_dropped_connection_at_every_event_index(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    thread_id, assistant_id = await thread_and_assistant(Weather)
    base = Scenario().tool_round(
        [("get_weather", {"city": "Nice"}), ("get_rain", {"city": "Nice"})]
    )
    for stream_index in (0, 1):
        for k in range(0, 16):
            emulator.enqueue(
                base.reply("Fine weather.").with_faults(Faults(drop_after={stream_index: k}))
            )
            machine = Weather(openai_client, **FAST)
            result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
            assert result.status == "completed", (stream_index, k)
            assert result.text == "Fine weather.", (stream_index, k)
            assert_one_submission_per_round(emulator, result)
            assert result.rounds == 1


@pytest.mark.parametrize(
    "faults",
    [
        Faults(http_errors=[HTTPFault(endpoint="submit_tool_outputs", nth=1, status=500)]),
        Faults(
            http_errors=[
                HTTPFault(endpoint="submit_tool_outputs", nth=1, status=503),
                HTTPFault(endpoint="submit_tool_outputs", nth=2, status=502),
            ]
        ),
        Faults(
            http_errors=[
                HTTPFault(endpoint="submit_tool_outputs", nth=1, status=429, retry_after=0.05)
            ]
        ),
        Faults(lose_submit_response={1}),
    ],
    ids=["500", "503-then-502", "429", "lost-response"],
)
async def test_submit_faults_submit_exactly_once(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, faults: Faults
) -> None:
    emulator.enqueue(
        Scenario().tool_round([("get_rain", {"city": "Bern"})]).reply("Dry.").with_faults(faults)
    )
    thread_id, assistant_id = await thread_and_assistant(Weather)
    result = await Weather(openai_client, **FAST).run(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert result.status == "completed"
    assert result.text == "Dry."
    assert_one_submission_per_round(emulator, result)


@pytest.mark.parametrize(
    "status", ["queued", "in_progress", "requires_action", "completed", "cancelling", "expired"]
)
async def test_resume_from_each_server_status(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, status: str
) -> None:
    thread_id, assistant_id = await thread_and_assistant(Weather)
    if status == "completed":
        emulator.enqueue(Scenario.text("Done already."))
    elif status == "cancelling":
        emulator.enqueue(Scenario().hang())
    elif status == "expired":
        emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "x"})]).expire())
    else:
        emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "x"})]).reply("Resumed."))
    with_warnings = openai_client.beta.threads.runs
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run = await with_warnings.create(thread_id=thread_id, assistant_id=assistant_id)
    # Let the server move the run along without anyone driving it.
    for _ in range(200):
        current = emulator.run_stats(run.id).status
        if current == status or (status in ("queued", "in_progress") and current != "queued"):
            break
        if status == "cancelling" and current == "in_progress":
            await with_warnings.cancel(run_id=run.id, thread_id=thread_id)
        await anyio.sleep(0.01)
    result = await Weather(openai_client, **FAST).resume(thread_id=thread_id, run_id=run.id)
    assert result.transitions[0].trigger == "adopt"
    expected = {
        "completed": "completed",
        "cancelling": "cancelled",
        "expired": "expired",
    }.get(status, "completed")
    assert result.status == expected
    if expected == "completed" and status != "completed":
        assert result.text == "Resumed."
        assert_one_submission_per_round(emulator, result)


async def test_polling_mode(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(
        Scenario().tool_round([("get_weather", {"city": "Riga"})]).reply("Polled answer.")
    )
    thread_id, assistant_id = await thread_and_assistant(Weather)

    class Counting(Weather):
        deltas = 0
        entered: ClassVar[list[str]] = []

        def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            Counting.deltas += 1

        def on_enter_requires_action(self, run: Any) -> None:
            Counting.entered.append("requires_action")

    result = await Counting(openai_client, stream=False, **FAST).run(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert result.status == "completed"
    assert result.text == "Polled answer."
    assert Counting.deltas == 0
    assert Counting.entered == ["requires_action"]
    assert_one_submission_per_round(emulator, result)
    assert [t.dest for t in result.transitions][:3] == ["queued", "in_progress", "requires_action"]


async def test_stream_yields_sdk_events_across_handoffs(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "x"})]).reply("Streamed."))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    names = []
    async with Weather(openai_client).stream(
        thread_id=thread_id, assistant_id=assistant_id
    ) as events:
        async for event in events:
            names.append(event.event)
    assert events.result is not None
    assert events.result.status == "completed"
    assert names.count("thread.run.requires_action") == 1
    assert names[-1] == "thread.run.completed"
    assert "thread.run.step.completed" in names[names.index("thread.run.requires_action") :]


async def test_stream_raises_a_guard_error_as_itself(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().loop([("get_rain", {"city": "x"})]))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    with pytest.raises(RequiresActionLoop) as info:
        async with Weather(openai_client, max_identical_rounds=2).stream(
            thread_id=thread_id, assistant_id=assistant_id
        ) as events:
            async for _ in events:
                pass
    assert info.value.result is not None
    assert emulator.run_stats(info.value.result.run.id).status == "cancelled"


async def test_stream_lets_the_callers_own_exception_through(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "x"})]).reply("never read"))
    thread_id, assistant_id = await thread_and_assistant(Weather)
    with pytest.raises(KeyError, match="stop here"):
        async with Weather(openai_client).stream(
            thread_id=thread_id, assistant_id=assistant_id
        ) as events:
            async for event in events:
                if event.event == "thread.run.requires_action":
                    raise KeyError("stop here")


async def test_transition_and_tool_hooks(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    seen: list[tuple[str, str]] = []

    class Watched(Weather):
        async def on_transition(self, record: Any) -> None:
            seen.append(("transition", record.dest))

        def on_tool_started(self, tool_call: Any) -> None:
            seen.append(("started", tool_call.id))

        async def on_tool_finished(self, record: Any) -> None:
            seen.append(("finished", record.id))

    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "x"}), ("get_weather", {"city": "y"}), ("nope", {})])
        .reply("ok")
    )
    thread_id, assistant_id = await thread_and_assistant(Watched)
    result = await Watched(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert [d for kind, d in seen if kind == "transition"] == [t.dest for t in result.transitions]
    ran = [c.id for c in result.tool_calls if c.name != "nope"]
    for call_id in ran:
        assert seen.index(("started", call_id)) < seen.index(("finished", call_id))
    # Every call is reported finished, the unknown tool too (it never started), all of them
    # while the run is in requires_action, before the submission.
    finished = [d for kind, d in seen if kind == "finished"]
    assert sorted(finished) == sorted(c.id for c in result.tool_calls)
    assert [d for kind, d in seen if kind == "started"] == [
        d for kind, d in seen if kind == "started" and d in ran
    ]
    submitting = seen.index(("transition", "submitting"))
    assert all(seen.index(("finished", c)) < submitting for c in finished)


async def test_a_failing_tool_hook_is_a_hook_error_and_cancels_the_run(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    class Broken(Weather):
        def on_tool_finished(self, record: Any) -> None:
            raise LookupError("no display")

    emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "x"})]).reply("never"))
    thread_id, assistant_id = await thread_and_assistant(Broken)
    machine = Broken(openai_client)
    with pytest.raises(HookError, match="hook on_tool_finished raised LookupError: no display"):
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert machine.run_id is not None
    stats = emulator.run_stats(machine.run_id)
    assert stats.status == "cancelled" and stats.submissions_received == 0


async def test_tools_without_subclassing(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    seen = []

    def lookup(term: str) -> dict[str, Any]:
        """Look a term up."""
        seen.append(threading.current_thread() is not threading.main_thread())
        return {"term": term, "hits": 2}

    emulator.enqueue(Scenario().tool_round([("lookup", {"term": "fsm"})]).reply("ok"))
    thread_id, assistant_id = await thread_and_assistant()
    result = await RunMachine(openai_client, tools=[lookup]).run(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert result.tool_calls[0].output == '{"term": "fsm", "hits": 2}'
    assert seen == [True]  # plain functions run in a worker thread


async def test_client_options_are_respected(
    emulator: Emulator, thread_and_assistant: Any, emulator_url: str
) -> None:
    emulator.enqueue(Scenario.text("hi"))
    async with openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k") as wrong:
        client = wrong.with_options(base_url=emulator_url, timeout=5.0)
        thread = await client.beta.threads.create()
        assistant = await client.beta.assistants.create(model="gpt-4o")
        result = await RunMachine(client).run(thread_id=thread.id, assistant_id=assistant.id)
    assert result.text == "hi"


async def test_azure_client_and_its_options_reach_every_request(
    emulator: Emulator, anyio_backend: Any
) -> None:
    sent: list[Any] = []

    async def log(request: Any) -> None:
        sent.append(request)

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [log]})
    azure = openai.AsyncAzureOpenAI(
        base_url=emulator.base_url,
        api_key="azure-key",
        api_version="2024-05-01-preview",
        http_client=http,
    ).with_options(default_headers={"x-app": "runmachine-test"}, timeout=30.0)
    async with azure:
        emulator.enqueue(
            Scenario().tool_round([("get_rain", {"city": "x"})]).reply("Azure says hi.")
        )
        thread = await azure.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        assistant = await azure.beta.assistants.create(
            model="my-deployment",
            tools=Weather.tool_definitions(),  # type: ignore[arg-type]
        )
        sent.clear()
        result = await Weather(azure).run(thread_id=thread.id, assistant_id=assistant.id)
    assert result.status == "completed" and result.text == "Azure says hi."
    paths = [r.url.path for r in sent]
    assert any(p.endswith("/runs") for p in paths)
    assert any(p.endswith("/submit_tool_outputs") for p in paths)
    for request in sent:
        assert request.headers["api-key"] == "azure-key", request.url
        assert request.headers["x-app"] == "runmachine-test", request.url
        assert request.url.params["api-version"] == "2024-05-01-preview", request.url
